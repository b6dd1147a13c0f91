//! The client: one method per REST endpoint.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::discover::{Discovery, Endpoint, Origin};
use crate::error::{ApiError, Error, api_error_from_body};
use crate::types::*;
use crate::ws::{self, ExecSession, PtySession, Tunnel};

/// Chunk size of uploads read from an `AsyncRead`.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// A client of one warren service with one API key. Cheap to clone (the
/// connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Options of a terminal session ([`Client::pty`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtyOptions {
    /// Initial size.
    pub size: PtySize,
    /// Command line to run (default: the user's login shell).
    pub cmd: Option<String>,
    /// User (default root).
    pub user: Option<String>,
}

/// A download in progress: the size (when the service knows it) and the
/// bytes as they arrive.
pub struct Download {
    /// Total bytes, from `Content-Length`.
    pub size: Option<u64>,
    /// The bytes.
    pub stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the service at `base_url` (e.g. `http://127.0.0.1:7700`)
    /// using `api_key`.
    pub fn new(base_url: impl AsRef<str>, api_key: impl Into<String>) -> Result<Self, Error> {
        Self::from_endpoint(Endpoint {
            url: base_url.as_ref().to_string(),
            api_key: api_key.into(),
            url_origin: Origin::Explicit,
            key_origin: Origin::Explicit,
        })
    }

    /// Finds the service the way the `warren` command line does:
    /// `WARREN_URL`/`WARREN_API_KEY`, else `~/.config/warren/config.toml`
    /// (`url`, `api_key`), else the local `warren up`'s
    /// `$WARREN_HOME/service.json` and `$WARREN_HOME/admin.key`.
    pub fn discover() -> Result<Self, Error> {
        Self::from_endpoint(Discovery::from_env().resolve()?)
    }

    /// [`Client::discover`] with the local service's data directory given
    /// (instead of `$WARREN_HOME` or its default).
    pub fn discover_in(data_dir: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::from_endpoint(Discovery::from_env_with_data_dir(data_dir.into()).resolve()?)
    }

    /// A client of a resolved endpoint.
    pub fn from_endpoint(endpoint: Endpoint) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: endpoint.url.clone(),
            reason,
        };
        let trimmed = endpoint.url.trim();
        if !trimmed.contains("://") {
            return Err(invalid(format!(
                "it has no scheme; did you mean http://{trimmed}?"
            )));
        }
        let mut base = Url::parse(trimmed)
            .map_err(|e| invalid(format!("{e}; expected e.g. http://127.0.0.1:7700")))?;
        match base.scheme() {
            "http" => {}
            "https" if cfg!(feature = "rustls") => {}
            "https" => {
                return Err(invalid(
                    "https needs warren-client built with its `rustls` feature; use http on a trusted network or a local tunnel".into(),
                ));
            }
            other => {
                return Err(invalid(format!(
                    "the scheme must be http or https, not {other}"
                )));
            }
        }
        if base.cannot_be_a_base() || base.host_str().is_none() {
            return Err(invalid("it has no host".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("it must not have a query or fragment".into()));
        }
        if endpoint.api_key.trim().is_empty() {
            return Err(Error::NotConfigured(format!(
                "the API key (from {}) is empty; set WARREN_API_KEY",
                endpoint.key_origin
            )));
        }
        // Path segments are appended to the base; drop a trailing slash so
        // `http://h/prefix/` and `http://h/prefix` behave alike.
        if base.path().ends_with('/') {
            let trimmed = base.path().trim_end_matches('/').to_string();
            base.set_path(&trimmed);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .user_agent(concat!("warren-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| Error::HttpClient {
                url: endpoint.url.clone(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            endpoint: Arc::new(endpoint),
        })
    }

    /// The service's base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The URL and key in use, and where they came from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    // ---- plumbing -------------------------------------------------------

    /// The URL of `segments` under the base, each segment percent-encoded
    /// (an id can never add path components).
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("checked in from_endpoint: the base can be a base");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    pub(crate) fn api_key(&self) -> &str {
        &self.endpoint.api_key
    }

    fn request(&self, method: Method, url: &Url) -> RequestBuilder {
        self.http
            .request(method, url.clone())
            .bearer_auth(&self.endpoint.api_key)
    }

    /// Adds what the client knows to an API error (where a refused key
    /// came from).
    pub(crate) fn enrich(&self, mut error: ApiError) -> ApiError {
        if error.status == 401 {
            error.hint = Some(format!(
                "the API key in use came from {}; set WARREN_API_KEY to a valid key (create one with `warren keys create NAME`)",
                self.endpoint.key_origin
            ));
        }
        error
    }

    pub(crate) fn transport_error(
        &self,
        method: &Method,
        url: &Url,
        error: reqwest::Error,
    ) -> Error {
        if error.is_connect() {
            Error::Unreachable {
                url: self.base.to_string(),
                source: Box::new(error),
            }
        } else {
            Error::Http {
                method: method.to_string(),
                url: url.to_string(),
                source: error,
            }
        }
    }

    /// Sends a request; non-2xx answers become [`Error::Api`].
    async fn send(
        &self,
        method: Method,
        url: &Url,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let request = build(self.request(method.clone(), url));
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&method, url, e))?;
        self.check(&method, url, response).await
    }

    async fn check(
        &self,
        method: &Method,
        url: &Url,
        response: Response,
    ) -> Result<Response, Error> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(method, url, e))?;
        Err(Error::Api(
            self.enrich(api_error_from_body(status.as_u16(), &body)),
        ))
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        method: &Method,
        url: &Url,
        response: Response,
    ) -> Result<T, Error> {
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(method, url, e))?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            url: url.to_string(),
            message: format!(
                "the JSON does not match what this client expects: {e} (body starts {:?})",
                String::from_utf8_lossy(&body[..body.len().min(120)])
            ),
        })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, Error> {
        let url = self.url(segments);
        let response = self
            .send(Method::GET, &url, |r| {
                if query.is_empty() { r } else { r.query(query) }
            })
            .await?;
        self.read_json(&Method::GET, &url, response).await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let url = self.url(segments);
        let response = self
            .send(method.clone(), &url, |r| match body {
                Some(body) => r.json(body),
                None => r,
            })
            .await?;
        self.read_json(&method, &url, response).await
    }

    async fn send_empty(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(), Error> {
        let url = self.url(segments);
        let response = self
            .send(method.clone(), &url, |r| {
                let r = if query.is_empty() { r } else { r.query(query) };
                match body {
                    Some(body) => r.json(body),
                    None => r,
                }
            })
            .await?;
        // Read the (empty) body so the connection goes back to the pool.
        let _ = response.bytes().await;
        Ok(())
    }

    // ---- service --------------------------------------------------------

    /// `GET /health` (needs no key): is the service up, and which
    /// accelerator does it use.
    pub async fn health(&self) -> Result<Health, Error> {
        self.get_json(&["health"], &[]).await
    }

    /// `GET /metrics`: the Prometheus text exposition (needs a key).
    pub async fn metrics(&self) -> Result<String, Error> {
        let url = self.url(&["metrics"]);
        let response = self.send(Method::GET, &url, |r| r).await?;
        response
            .text()
            .await
            .map_err(|e| self.transport_error(&Method::GET, &url, e))
    }

    // ---- sandboxes ------------------------------------------------------

    /// `POST /v1/sandboxes`: creates a sandbox and returns once its guest
    /// agent answers (seconds under software emulation).
    pub async fn create_sandbox(&self, request: &CreateSandbox) -> Result<Sandbox, Error> {
        self.send_json(Method::POST, &["v1", "sandboxes"], Some(request))
            .await
    }

    /// `GET /v1/sandboxes`: the team's sandboxes, newest first, stopped
    /// ones included unless filtered.
    pub async fn list_sandboxes(&self, filter: &ListSandboxes) -> Result<SandboxList, Error> {
        self.get_json(&["v1", "sandboxes"], &filter.query()).await
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, Error> {
        self.get_json(&["v1", "sandboxes", id], &[]).await
    }

    /// `DELETE /v1/sandboxes/{id}`: kills the VM; the record stays as
    /// `stopped`. Deleting a stopped sandbox succeeds.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), Error> {
        self.send_empty(Method::DELETE, &["v1", "sandboxes", id], &[], None::<&()>)
            .await
    }

    /// `POST /v1/sandboxes/{id}/timeout`: the sandbox now expires
    /// `timeout_secs` from now (0 = never).
    pub async fn set_timeout(&self, id: &str, timeout_secs: u64) -> Result<Sandbox, Error> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "timeout"],
            Some(&json!({ "timeout_secs": timeout_secs })),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/network`: the egress policy of a running
    /// sandbox.
    pub async fn network(&self, id: &str) -> Result<NetworkPolicy, Error> {
        self.get_json(&["v1", "sandboxes", id, "network"], &[])
            .await
    }

    /// `PUT /v1/sandboxes/{id}/network`: replaces the egress policy of a
    /// running sandbox (new connections follow it at once); returns the
    /// policy in force, rules in their normal form.
    pub async fn set_network(
        &self,
        id: &str,
        policy: &NetworkPolicy,
    ) -> Result<NetworkPolicy, Error> {
        self.send_json(
            Method::PUT,
            &["v1", "sandboxes", id, "network"],
            Some(policy),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/ports`: the TCP ports something in the
    /// running sandbox listens on.
    pub async fn listening_ports(&self, id: &str) -> Result<ListeningPortList, Error> {
        self.get_json(&["v1", "sandboxes", id, "ports"], &[]).await
    }

    /// `PUT /v1/sandboxes/{id}/public-ports`: replaces the ports anyone may
    /// open with no key or token; returns the sandbox.
    pub async fn set_public_ports(&self, id: &str, ports: &[u16]) -> Result<Sandbox, Error> {
        self.send_json(
            Method::PUT,
            &["v1", "sandboxes", id, "public-ports"],
            Some(&PublicPorts {
                ports: ports.to_vec(),
            }),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/tunnel/{port}`: a raw TCP connection to a
    /// port of the sandbox (what `warren port-forward` carries each local
    /// connection over).
    pub async fn tunnel(&self, id: &str, port: u16) -> Result<Tunnel, Error> {
        let port = port.to_string();
        let socket = ws::connect(self, &["v1", "sandboxes", id, "tunnel", &port], &[]).await?;
        Ok(Tunnel::new(socket))
    }

    /// The URL a browser opens port `port` of `sandbox` at: the host form
    /// `{port}-{id}.{domain}` with this client's scheme, and the
    /// sandbox's access token once in the query unless the port is public
    /// (the service then keeps it in a cookie of that host). `None` from a
    /// service that serves no host form.
    pub fn port_url(&self, sandbox: &Sandbox, port: u16) -> Option<String> {
        let domain = sandbox.domain.as_deref()?;
        let mut url = format!("{}://{port}-{}.{domain}/", self.base.scheme(), sandbox.id);
        if !sandbox.public_ports.contains(&port)
            && let Some(token) = &sandbox.access_token
        {
            url.push_str("?warren_token=");
            url.push_str(token);
        }
        Some(url)
    }

    /// `POST /v1/admin/reconcile` (admin keys): runs the reconciler now
    /// and says what it fixed, so tools can check a host is consistent
    /// without waiting for the periodic pass.
    pub async fn reconcile(&self) -> Result<ReconcileReport, Error> {
        self.send_json(Method::POST, &["v1", "admin", "reconcile"], None::<&()>)
            .await
    }

    /// `POST /v1/sandboxes/{id}/pause`: saves the sandbox to disk (memory
    /// and disk; its VM ends, using no RAM or CPU while paused) and says
    /// what was written. `409` unless it is running; `507 disk_full` when
    /// the host's disk is full (the sandbox then keeps running).
    pub async fn pause_sandbox(&self, id: &str) -> Result<PauseResult, Error> {
        self.send_json(Method::POST, &["v1", "sandboxes", id, "pause"], None::<&()>)
            .await
    }

    /// `POST /v1/sandboxes/{id}/resume`: continues a paused sandbox where
    /// it was paused. `409` unless it is paused; `503 capacity` when the
    /// host lacks the memory.
    pub async fn resume_sandbox(&self, id: &str) -> Result<Sandbox, Error> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "resume"],
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/logs`: the end of the guest's serial
    /// console (`tail_bytes`, the service's default 64 KiB).
    pub async fn logs(&self, id: &str, tail_bytes: Option<u64>) -> Result<Bytes, Error> {
        let url = self.url(&["v1", "sandboxes", id, "logs"]);
        let query: Vec<(&str, String)> = tail_bytes
            .map(|n| vec![("tail_bytes", n.to_string())])
            .unwrap_or_default();
        let response = self.send(Method::GET, &url, |r| r.query(&query)).await?;
        response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&Method::GET, &url, e))
    }

    /// `GET /v1/sandboxes/{id}/events`: the sandbox's lifecycle events.
    pub async fn sandbox_events(&self, id: &str) -> Result<EventList, Error> {
        self.get_json(&["v1", "sandboxes", id, "events"], &[]).await
    }

    // ---- processes ------------------------------------------------------

    /// `POST /v1/sandboxes/{id}/exec`: runs a command to completion and
    /// returns its output (at most 16 MiB per stream). A command that
    /// cannot start is an [`Error::Api`] with code `command_not_found`,
    /// `invalid` or `permission_denied`.
    pub async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, Error> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "exec"],
            Some(request),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/exec/ws`: runs a command with streamed
    /// stdin, stdout and stderr. Returns once the process started (or with
    /// the error that kept it from starting). Dropping the session kills
    /// the process.
    pub async fn exec_stream(&self, id: &str, request: &StreamExec) -> Result<ExecSession, Error> {
        let socket = ws::connect(self, &["v1", "sandboxes", id, "exec", "ws"], &[]).await?;
        ExecSession::start(socket, Some(request)).await
    }

    /// `POST /v1/sandboxes/{id}/processes`: starts a background process
    /// that outlives this request; see [`Client::attach`].
    pub async fn start_process(
        &self,
        id: &str,
        request: &StartProcess,
    ) -> Result<ProcessStarted, Error> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "processes"],
            Some(request),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/processes`.
    pub async fn list_processes(&self, id: &str) -> Result<ProcessList, Error> {
        self.get_json(&["v1", "sandboxes", id, "processes"], &[])
            .await
    }

    /// `POST /v1/sandboxes/{id}/processes/{pid}/stdin`: writes bytes to a
    /// background process started with `stdin: true`, and closes its stdin
    /// if `close`.
    pub async fn process_stdin(
        &self,
        id: &str,
        pid: u32,
        data: &[u8],
        close: bool,
    ) -> Result<(), Error> {
        let pid = pid.to_string();
        self.send_empty(
            Method::POST,
            &["v1", "sandboxes", id, "processes", &pid, "stdin"],
            &[],
            Some(&json!({ "data_base64": BASE64.encode(data), "close": close })),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/processes/{pid}/signal`: sends a signal
    /// (15 = TERM, 9 = KILL, 2 = INT) to a process and its group.
    pub async fn signal_process(&self, id: &str, pid: u32, signal: i32) -> Result<(), Error> {
        let pid = pid.to_string();
        self.send_empty(
            Method::POST,
            &["v1", "sandboxes", id, "processes", &pid, "signal"],
            &[],
            Some(&json!({ "signal": signal })),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/processes/{pid}/attach`: follows a
    /// background process's output (from the start of its buffer if
    /// `replay`). Dropping the session does not kill a background process.
    pub async fn attach(&self, id: &str, pid: u32, replay: bool) -> Result<ExecSession, Error> {
        let pid = pid.to_string();
        let socket = ws::connect(
            self,
            &["v1", "sandboxes", id, "processes", &pid, "attach"],
            &[("replay", replay.to_string())],
        )
        .await?;
        ExecSession::start(socket, None).await
    }

    /// `GET /v1/sandboxes/{id}/pty`: an interactive terminal (raw bytes
    /// both ways, resizes, the shell's exit).
    pub async fn pty(&self, id: &str, options: &PtyOptions) -> Result<PtySession, Error> {
        let mut query = vec![
            ("cols", options.size.cols.max(1).to_string()),
            ("rows", options.size.rows.max(1).to_string()),
        ];
        if let Some(cmd) = &options.cmd {
            query.push(("cmd", cmd.clone()));
        }
        if let Some(user) = &options.user {
            query.push(("user", user.clone()));
        }
        let socket = ws::connect(self, &["v1", "sandboxes", id, "pty"], &query).await?;
        Ok(PtySession::new(socket))
    }

    // ---- files ----------------------------------------------------------

    /// `GET /v1/sandboxes/{id}/files`: starts a download; the bytes come
    /// as a stream (memory stays bounded whatever the file's size).
    pub async fn download_stream(&self, id: &str, path: &str) -> Result<Download, Error> {
        let url = self.url(&["v1", "sandboxes", id, "files"]);
        let response = self
            .send(Method::GET, &url, |r| r.query(&[("path", path)]))
            .await?;
        let size = response.content_length();
        let client = self.clone();
        let stream = response
            .bytes_stream()
            .map_err(move |e| client.transport_error(&Method::GET, &url, e));
        Ok(Download {
            size,
            stream: Box::pin(stream),
        })
    }

    /// Downloads a file into `writer`, calling `progress(bytes_so_far,
    /// total)` as data arrives. Returns the bytes written. A transfer that
    /// ends early (the sandbox died midway) is an error, never a silently
    /// short file.
    pub async fn download<W: AsyncWrite + Unpin + ?Sized>(
        &self,
        id: &str,
        path: &str,
        writer: &mut W,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<u64, Error> {
        let mut download = self.download_stream(id, path).await?;
        let mut done = 0u64;
        progress(0, download.size);
        while let Some(chunk) = download.stream.next().await {
            let chunk = chunk?;
            writer.write_all(&chunk).await.map_err(|source| Error::Io {
                what: format!("writing the download of {path}"),
                source,
            })?;
            done += chunk.len() as u64;
            progress(done, download.size);
        }
        writer.flush().await.map_err(|source| Error::Io {
            what: format!("writing the download of {path}"),
            source,
        })?;
        if let Some(size) = download.size
            && size != done
        {
            return Err(Error::ShortDownload {
                path: path.to_string(),
                url: self.url(&["v1", "sandboxes", id, "files"]).to_string(),
                done,
                size,
            });
        }
        Ok(done)
    }

    /// Downloads a whole file into memory (for small files).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Bytes, Error> {
        let mut buffer = Vec::new();
        self.download(id, path, &mut buffer, |_, _| {}).await?;
        Ok(buffer.into())
    }

    /// `PUT /v1/sandboxes/{id}/files`: uploads `reader`'s bytes as the
    /// file at `path`, streamed (bounded memory), calling
    /// `progress(bytes_sent)` as they go. The file is replaced atomically
    /// once complete.
    pub async fn upload<R>(
        &self,
        id: &str,
        path: &str,
        reader: R,
        options: &UploadOptions,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<FileInfo, Error>
    where
        R: AsyncRead + Send + 'static,
    {
        let url = self.url(&["v1", "sandboxes", id, "files"]);
        let mut query = vec![("path", path.to_string())];
        if options.create_parents {
            query.push(("create_parents", "true".into()));
        }
        if let Some(user) = &options.user {
            query.push(("user", user.clone()));
        }
        if let Some(mode) = options.mode {
            query.push(("mode", format!("{mode:o}")));
        }
        let (body, read_error) = upload_body(reader, progress);
        let result = self
            .send(Method::PUT, &url, |r| {
                r.query(&query)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(body)
            })
            .await;
        let response = finish_upload(result, &read_error, path)?;
        self.read_json(&Method::PUT, &url, response).await
    }

    /// `POST /v1/sandboxes/{id}/files` (multipart/form-data): the same as
    /// [`Client::upload`] in the form browsers send; `size`, when known,
    /// is declared to the service.
    pub async fn upload_multipart<R>(
        &self,
        id: &str,
        path: &str,
        reader: R,
        size: Option<u64>,
        options: &UploadOptions,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<FileInfo, Error>
    where
        R: AsyncRead + Send + 'static,
    {
        let url = self.url(&["v1", "sandboxes", id, "files"]);
        let mut form = reqwest::multipart::Form::new().text("path", path.to_string());
        if options.create_parents {
            form = form.text("create_parents", "true");
        }
        if let Some(user) = &options.user {
            form = form.text("user", user.clone());
        }
        if let Some(mode) = options.mode {
            form = form.text("mode", format!("{mode:o}"));
        }
        let (body, read_error) = upload_body(reader, progress);
        let name = path.rsplit('/').next().unwrap_or("file").to_string();
        let part = match size {
            Some(size) => reqwest::multipart::Part::stream_with_length(body, size),
            None => reqwest::multipart::Part::stream(body),
        }
        .file_name(name)
        .mime_str("application/octet-stream")
        .expect("a valid mime type");
        let form = form.part("file", part);
        let result = self.send(Method::POST, &url, |r| r.multipart(form)).await;
        let response = finish_upload(result, &read_error, path)?;
        self.read_json(&Method::POST, &url, response).await
    }

    /// Uploads bytes held in memory.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: impl Into<Bytes>,
        options: &UploadOptions,
    ) -> Result<FileInfo, Error> {
        let data: Bytes = data.into();
        self.upload(id, path, std::io::Cursor::new(data), options, |_| {})
            .await
    }

    /// `GET /v1/sandboxes/{id}/files/list`: a directory's entries
    /// (`depth` levels of subdirectories included, at most 8).
    pub async fn list_files(&self, id: &str, path: &str, depth: u32) -> Result<FileList, Error> {
        self.get_json(
            &["v1", "sandboxes", id, "files", "list"],
            &[("path", path.to_string()), ("depth", depth.to_string())],
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/files/stat`.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo, Error> {
        self.get_json(
            &["v1", "sandboxes", id, "files", "stat"],
            &[("path", path.to_string())],
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/files/mkdir` (with `parents`, like
    /// `mkdir -p`: existing directories are fine).
    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<FileInfo, Error> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "files", "mkdir"],
            Some(&json!({ "path": path, "parents": parents })),
        )
        .await
    }

    /// `DELETE /v1/sandboxes/{id}/files`: removes a file, or a directory
    /// (with its contents if `recursive`).
    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), Error> {
        self.send_empty(
            Method::DELETE,
            &["v1", "sandboxes", id, "files"],
            &[
                ("path", path.to_string()),
                ("recursive", recursive.to_string()),
            ],
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/files/rename`.
    pub async fn rename(
        &self,
        id: &str,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<(), Error> {
        self.send_empty(
            Method::POST,
            &["v1", "sandboxes", id, "files", "rename"],
            &[],
            Some(&json!({ "from": from, "to": to, "overwrite": overwrite })),
        )
        .await
    }

    // ---- snapshots ------------------------------------------------------

    /// `POST /v1/sandboxes/{id}/snapshots`: turns a running or paused
    /// sandbox into a snapshot template named `name` (a running one is
    /// paused for the copy and resumed; a paused one stays paused).
    /// Sandboxes created with `template: name` are clones of it. `409` if
    /// the name is taken or the sandbox is stopped, `422` for an invalid
    /// name.
    pub async fn create_snapshot(&self, id: &str, name: &str) -> Result<Snapshot, Error> {
        self.send_json(
            Method::POST,
            &["v1", "sandboxes", id, "snapshots"],
            Some(&CreateSnapshot {
                name: name.to_string(),
            }),
        )
        .await
    }

    /// `GET /v1/snapshots`: the team's snapshot templates, oldest first.
    pub async fn list_snapshots(&self) -> Result<SnapshotList, Error> {
        self.get_json(&["v1", "snapshots"], &[]).await
    }

    /// `GET /v1/snapshots/{name}`.
    pub async fn get_snapshot(&self, name: &str) -> Result<Snapshot, Error> {
        self.get_json(&["v1", "snapshots", name], &[]).await
    }

    /// `DELETE /v1/snapshots/{name}`: `409` while sandboxes created from it
    /// exist (see [`Snapshot::used_by`]).
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), Error> {
        self.send_empty(Method::DELETE, &["v1", "snapshots", name], &[], None::<&()>)
            .await
    }

    // ---- templates, keys, events ----------------------------------------

    /// `GET /v1/templates`.
    pub async fn list_templates(&self) -> Result<TemplateList, Error> {
        self.get_json(&["v1", "templates"], &[]).await
    }

    /// `GET /v1/templates/{id}`.
    pub async fn get_template(&self, id: &str) -> Result<Template, Error> {
        self.get_json(&["v1", "templates", id], &[]).await
    }

    /// `POST /v1/keys`: a new key; its secret is in the answer only.
    pub async fn create_key(&self, request: &CreateKey) -> Result<CreatedKey, Error> {
        self.send_json(Method::POST, &["v1", "keys"], Some(request))
            .await
    }

    /// `GET /v1/keys`: the team's keys, without secrets.
    pub async fn list_keys(&self) -> Result<KeyList, Error> {
        self.get_json(&["v1", "keys"], &[]).await
    }

    /// `DELETE /v1/keys/{id}`: the key stops working at once.
    pub async fn revoke_key(&self, id: &str) -> Result<(), Error> {
        self.send_empty(Method::DELETE, &["v1", "keys", id], &[], None::<&()>)
            .await
    }

    /// `GET /v1/events`: the team's lifecycle events, newest first.
    pub async fn list_events(&self, filter: &ListEvents) -> Result<EventList, Error> {
        let mut query = Vec::new();
        if let Some(id) = &filter.sandbox_id {
            query.push(("sandbox_id", id.clone()));
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        self.get_json(&["v1", "events"], &query).await
    }
}

/// Slot for the error of the local reader of an upload, so a failed read
/// is reported as such rather than as a broken request.
type ReadError = Arc<Mutex<Option<std::io::Error>>>;

fn upload_body<R>(
    reader: R,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> (reqwest::Body, ReadError)
where
    R: AsyncRead + Send + 'static,
{
    let read_error: ReadError = Arc::default();
    let slot = read_error.clone();
    let mut sent = 0u64;
    progress(0);
    let stream = ReaderStream::with_capacity(reader, UPLOAD_CHUNK).map(move |chunk| match chunk {
        Ok(chunk) => {
            sent += chunk.len() as u64;
            progress(sent);
            Ok(chunk)
        }
        Err(error) => {
            let copy = std::io::Error::new(error.kind(), error.to_string());
            *slot.lock().expect("read error slot") = Some(error);
            Err(copy)
        }
    });
    (reqwest::Body::wrap_stream(stream), read_error)
}

fn finish_upload(
    result: Result<Response, Error>,
    read_error: &ReadError,
    path: &str,
) -> Result<Response, Error> {
    match result {
        Ok(response) => Ok(response),
        Err(error) => match read_error.lock().expect("read error slot").take() {
            // The request broke because our own source failed.
            Some(source) if !matches!(error, Error::Api(_)) => Err(Error::Io {
                what: format!("reading the data to upload to {path}"),
                source,
            }),
            _ => Err(error),
        },
    }
}

/// Whether a status is one of the service's "try again later" answers.
pub fn is_retryable(status: u16) -> bool {
    matches!(
        StatusCode::from_u16(status),
        Ok(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_keep_prefixes() {
        let client = Client::new("http://127.0.0.1:7700", "wrn_x").unwrap();
        assert_eq!(
            client.url(&["v1", "sandboxes", "sb-1"]).as_str(),
            "http://127.0.0.1:7700/v1/sandboxes/sb-1"
        );
        // An id cannot add path components or a query.
        assert_eq!(
            client.url(&["v1", "sandboxes", "../keys?x"]).as_str(),
            "http://127.0.0.1:7700/v1/sandboxes/..%2Fkeys%3Fx"
        );
        let prefixed = Client::new("http://proxy/warren/", "wrn_x").unwrap();
        assert_eq!(
            prefixed.url(&["health"]).as_str(),
            "http://proxy/warren/health"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, needle) in [
            ("127.0.0.1:7700", "did you mean http://127.0.0.1:7700"),
            ("ftp://h", "scheme"),
            ("http://", "expected e.g."),
            ("http://h/?q=1", "query"),
        ] {
            let error = Client::new(url, "wrn_x").unwrap_err().to_string();
            assert!(error.contains(needle), "{url}: {error}");
        }
        let error = Client::new("http://h", " ").unwrap_err().to_string();
        assert!(error.contains("WARREN_API_KEY"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_service_says_so() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(format!("http://127.0.0.1:{port}"), "wrn_x").unwrap();
        let error = client.health().await.unwrap_err();
        assert!(error.is_unreachable(), "{error:?}");
        assert!(error.to_string().contains("warren up"), "{error}");
        let error = client
            .exec_stream("sb-x", &StreamExec::argv(["true"]))
            .await
            .unwrap_err();
        assert!(error.is_unreachable(), "{error:?}");
    }

    #[test]
    fn retryable_statuses() {
        assert!(is_retryable(429));
        assert!(is_retryable(503));
        assert!(!is_retryable(500));
    }
}
