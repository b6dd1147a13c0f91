//! The WebSocket endpoints: streaming exec and attach (JSON messages) and
//! terminals (binary frames).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::Client;
use crate::error::{ApiError, Error, api_error_from_body, status_of_code};
use crate::types::{ExitStatus, PtySize, StreamExec};
use warren_api::ws::{
    ProcessClientMessage as ClientMessage, ProcessServerMessage as ServerMessage,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = Arc<Mutex<SplitSink<Socket, Message>>>;

/// An open WebSocket and its URL (for messages).
pub(crate) struct Connected {
    socket: Socket,
    url: String,
}

/// Opens a WebSocket to `segments` under the client's base, with the key
/// in the `Authorization` header (never in the URL, where logs keep it).
pub(crate) async fn connect(
    client: &Client,
    segments: &[&str],
    query: &[(&str, String)],
) -> Result<Connected, Error> {
    let mut url = client.url(segments);
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    }
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .expect("http(s) URLs can become ws(s) URLs");
    let shown = url.to_string();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::WebSocket {
            url: shown.clone(),
            source: Box::new(e),
        })?;
    let auth = format!("Bearer {}", client.api_key())
        .parse()
        .map_err(|_| Error::NotConfigured("the API key contains characters that cannot be sent in a header; check WARREN_API_KEY".into()))?;
    request
        .headers_mut()
        .insert(tungstenite::http::header::AUTHORIZATION, auth);
    match tokio_tungstenite::connect_async_with_config(request, None, true).await {
        Ok((socket, _)) => Ok(Connected { socket, url: shown }),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            Err(Error::Api(client.enrich(api_error_from_body(status, body))))
        }
        Err(tungstenite::Error::Io(error))
            if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(Error::Unreachable {
                url: client.base_url().to_string(),
                source: Box::new(error),
            })
        }
        Err(error) => Err(Error::WebSocket {
            url: shown,
            source: Box::new(error),
        }),
    }
}

fn broken(url: &str, error: tungstenite::Error) -> Error {
    Error::WebSocket {
        url: url.to_string(),
        source: Box::new(error),
    }
}

fn ws_api_error(code: String, message: String, hint: Option<String>) -> Error {
    Error::Api(ApiError {
        status: status_of_code(&code),
        code,
        message,
        hint,
    })
}

/// `exit` and `error`, the messages that end an exchange, as what the
/// caller gets (`Ok` with the outcome); any other message back (`Err`).
fn ending(message: ServerMessage) -> Result<Result<ExitStatus, Error>, ServerMessage> {
    match message {
        ServerMessage::Exit {
            exit_code,
            signal,
            timed_out,
        } => Ok(Ok(ExitStatus {
            exit_code,
            signal,
            timed_out,
        })),
        ServerMessage::Error {
            code,
            message,
            hint,
        } => Ok(Err(ws_api_error(code, message, hint))),
        other => Err(other),
    }
}

async fn send_json(sink: &Sink, url: &str, message: &ClientMessage) -> Result<(), Error> {
    let text = serde_json::to_string(message).expect("client messages serialize");
    sink.lock()
        .await
        .send(Message::text(text))
        .await
        .map_err(|e| broken(url, e))
}

/// What a streamed process did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes on stdout (or the terminal, under a PTY).
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
    /// It ended; no events follow.
    Exit(ExitStatus),
}

/// Everything a streamed process printed, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

/// The input side of a streamed process: stdin, signals, terminal size.
/// Cheap to clone, so a task can feed stdin while another reads output.
#[derive(Clone)]
pub struct ExecInput {
    sink: Sink,
    url: Arc<str>,
}

impl std::fmt::Debug for ExecInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecInput").field("url", &self.url).finish()
    }
}

impl ExecInput {
    /// Writes bytes to the process's stdin.
    pub async fn write(&self, data: &[u8]) -> Result<(), Error> {
        send_json(
            &self.sink,
            &self.url,
            &ClientMessage::Stdin {
                data: BASE64.encode(data),
            },
        )
        .await
    }

    /// Closes the process's stdin (it reads end-of-file).
    pub async fn close_stdin(&self) -> Result<(), Error> {
        send_json(&self.sink, &self.url, &ClientMessage::CloseStdin).await
    }

    /// Sends a signal (2 = INT, 15 = TERM, 9 = KILL) to the process.
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        send_json(&self.sink, &self.url, &ClientMessage::Signal { signal }).await
    }

    /// Resizes the process's terminal (for processes started with `pty`).
    pub async fn resize(&self, size: PtySize) -> Result<(), Error> {
        send_json(
            &self.sink,
            &self.url,
            &ClientMessage::Resize {
                cols: size.cols.max(1),
                rows: size.rows.max(1),
            },
        )
        .await
    }
}

/// A process streamed over a WebSocket ([`Client::exec_stream`],
/// [`Client::attach`]). Read its events with [`ExecSession::next_event`]
/// (or collect them with [`ExecSession::wait_with_output`] /
/// [`ExecSession::run`]); drive its input through [`ExecSession::input`].
/// Dropping a session before the exit kills an exec'd process.
pub struct ExecSession {
    pid: u32,
    events: SplitStream<Socket>,
    input: ExecInput,
    finished: bool,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("pid", &self.pid)
            .field("url", &self.input.url)
            .finish_non_exhaustive()
    }
}

impl ExecSession {
    /// Sends the start message (for exec; attach has none) and waits for
    /// `started`, so errors that keep the process from starting surface
    /// here.
    pub(crate) async fn start(
        connected: Connected,
        request: Option<&StreamExec>,
    ) -> Result<Self, Error> {
        let (sink, events) = connected.socket.split();
        let input = ExecInput {
            sink: Arc::new(Mutex::new(sink)),
            url: connected.url.into(),
        };
        if let Some(request) = request {
            send_json(
                &input.sink,
                &input.url,
                &ClientMessage::Start(request.clone()),
            )
            .await?;
        }
        let mut session = Self {
            pid: 0,
            events,
            input,
            finished: false,
        };
        loop {
            match session.next_message().await? {
                Some(ServerMessage::Started { pid }) => {
                    session.pid = pid;
                    return Ok(session);
                }
                Some(ServerMessage::Error {
                    code,
                    message,
                    hint,
                }) => return Err(ws_api_error(code, message, hint)),
                Some(ServerMessage::Unknown) => continue,
                Some(other) => {
                    return Err(Error::Protocol {
                        url: session.input.url.to_string(),
                        message: format!("expected a `started` message first, got {other:?}"),
                    });
                }
                None => {
                    return Err(Error::Protocol {
                        url: session.input.url.to_string(),
                        message: "the WebSocket closed before the process started".into(),
                    });
                }
            }
        }
    }

    /// The process's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its input side (cloneable).
    pub fn input(&self) -> ExecInput {
        self.input.clone()
    }

    async fn next_message(&mut self) -> Result<Option<ServerMessage>, Error> {
        loop {
            match self.events.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message = serde_json::from_str::<ServerMessage>(&text).map_err(|e| {
                        Error::Protocol {
                            url: self.input.url.to_string(),
                            message: format!("unreadable message {text:?}: {e}"),
                        }
                    })?;
                    return Ok(Some(message));
                }
                Some(Ok(Message::Binary(data))) => {
                    // Not sent by the exec endpoints; treat as output
                    // rather than fail.
                    return Ok(Some(ServerMessage::Stdout {
                        data: BASE64.encode(&data),
                    }));
                }
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(broken(&self.input.url, error)),
            }
        }
    }

    /// The next event; `None` once the process exited and the socket
    /// closed.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, Error> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let decode = |data: String, url: &str| {
                BASE64
                    .decode(data.as_bytes())
                    .map(Bytes::from)
                    .map_err(|e| Error::Protocol {
                        url: url.to_string(),
                        message: format!("output that is not base64: {e}"),
                    })
            };
            match self.next_message().await?.map(ending) {
                Some(Err(ServerMessage::Stdout { data })) => {
                    return Ok(Some(ExecEvent::Stdout(decode(data, &self.input.url)?)));
                }
                Some(Err(ServerMessage::Stderr { data })) => {
                    return Ok(Some(ExecEvent::Stderr(decode(data, &self.input.url)?)));
                }
                Some(Ok(end)) => {
                    self.finished = true;
                    return end.map(|status| Some(ExecEvent::Exit(status)));
                }
                Some(Err(_)) => continue,
                None => {
                    self.finished = true;
                    return Err(Error::ClosedEarly {
                        url: self.input.url.to_string(),
                        what: "the process exited",
                    });
                }
            }
        }
    }

    /// Runs to the end, handing output to callbacks as it arrives.
    pub async fn run(
        mut self,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
    ) -> Result<ExitStatus, Error> {
        while let Some(event) = self.next_event().await? {
            match event {
                ExecEvent::Stdout(data) => on_stdout(&data),
                ExecEvent::Stderr(data) => on_stderr(&data),
                ExecEvent::Exit(status) => return Ok(status),
            }
        }
        Err(Error::Protocol {
            url: self.input.url.to_string(),
            message: "no exit status: the session had already ended".into(),
        })
    }

    /// Runs to the end and collects the output.
    pub async fn wait_with_output(self) -> Result<ExecOutput, Error> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let status = self
            .run(
                |data| stdout.extend_from_slice(data),
                |data| stderr.extend_from_slice(data),
            )
            .await?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Closes the socket politely (an exec'd process that still runs is
    /// killed; a background process keeps running).
    pub async fn close(self) {
        let _ = self.input.sink.lock().await.close().await;
    }
}

/// What a terminal session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// Terminal output (raw bytes, escape sequences included).
    Output(Bytes),
    /// The shell ended; no events follow.
    Exit(ExitStatus),
}

/// Keystrokes and resizes for a terminal. Cheap to clone.
#[derive(Clone)]
pub struct PtyInput {
    sink: Sink,
    url: Arc<str>,
}

impl std::fmt::Debug for PtyInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtyInput").field("url", &self.url).finish()
    }
}

impl PtyInput {
    /// Types bytes into the terminal.
    pub async fn write(&self, data: &[u8]) -> Result<(), Error> {
        self.sink
            .lock()
            .await
            .send(Message::Binary(Bytes::copy_from_slice(data)))
            .await
            .map_err(|e| broken(&self.url, e))
    }

    /// Resizes the terminal.
    pub async fn resize(&self, size: PtySize) -> Result<(), Error> {
        let text = serde_json::json!({
            "type": "resize",
            "cols": size.cols.max(1),
            "rows": size.rows.max(1),
        })
        .to_string();
        self.sink
            .lock()
            .await
            .send(Message::text(text))
            .await
            .map_err(|e| broken(&self.url, e))
    }
}

/// An interactive terminal in a sandbox ([`Client::pty`]). Dropping it
/// hangs up the shell.
pub struct PtySession {
    events: SplitStream<Socket>,
    input: PtyInput,
    finished: bool,
}

impl std::fmt::Debug for PtySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtySession")
            .field("url", &self.input.url)
            .finish_non_exhaustive()
    }
}

impl PtySession {
    pub(crate) fn new(connected: Connected) -> Self {
        let (sink, events) = connected.socket.split();
        Self {
            events,
            input: PtyInput {
                sink: Arc::new(Mutex::new(sink)),
                url: connected.url.into(),
            },
            finished: false,
        }
    }

    /// Its input side (cloneable).
    pub fn input(&self) -> PtyInput {
        self.input.clone()
    }

    /// The next output or the exit; `None` after the exit.
    pub async fn next_event(&mut self) -> Result<Option<PtyEvent>, Error> {
        if self.finished {
            return Ok(None);
        }
        loop {
            match self.events.next().await {
                Some(Ok(Message::Binary(data))) => return Ok(Some(PtyEvent::Output(data))),
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<ServerMessage>(&text).map(ending) {
                        Ok(Ok(end)) => {
                            self.finished = true;
                            return end.map(|status| Some(PtyEvent::Exit(status)));
                        }
                        Ok(Err(
                            ServerMessage::Stdout { data } | ServerMessage::Stderr { data },
                        )) => {
                            if let Ok(bytes) = BASE64.decode(data.as_bytes()) {
                                return Ok(Some(PtyEvent::Output(bytes.into())));
                            }
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            return Err(Error::Protocol {
                                url: self.input.url.to_string(),
                                message: format!("unreadable message {text:?}: {e}"),
                            });
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    self.finished = true;
                    return Err(Error::ClosedEarly {
                        url: self.input.url.to_string(),
                        what: "the shell exited",
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    self.finished = true;
                    return Err(broken(&self.input.url, error));
                }
            }
        }
    }

    /// Hangs up.
    pub async fn close(self) {
        let _ = self.input.sink.lock().await.close().await;
    }
}

/// A raw TCP connection to a port of a sandbox, carried over a WebSocket
/// (binary messages each way).
pub struct Tunnel {
    socket: Socket,
    url: String,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    pub(crate) fn new(connected: Connected) -> Self {
        Self {
            socket: connected.socket,
            url: connected.url,
        }
    }

    /// Copies bytes between the tunnel and `local` until both directions
    /// end: EOF from `local` ends the tunnel's sending half, and the
    /// sandbox's side closing ends `local`'s. Returns the bytes sent each
    /// way (to the sandbox, from it).
    pub async fn join<S>(self, local: S) -> Result<(u64, u64), Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = self.url;
        let (mut sink, mut source) = self.socket.split();
        let (mut local_rx, mut local_tx) = tokio::io::split(local);
        let upstream = async {
            let mut sent = 0u64;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = local_rx.read(&mut buffer).await.map_err(|e| Error::Io {
                    what: "reading the local connection".into(),
                    source: e,
                })?;
                if n == 0 {
                    break;
                }
                sink.send(Message::Binary(Bytes::copy_from_slice(&buffer[..n])))
                    .await
                    .map_err(|e| broken(&url, e))?;
                sent += n as u64;
            }
            let _ = sink.send(Message::Close(None)).await;
            Ok::<u64, Error>(sent)
        };
        let downstream = async {
            let mut received = 0u64;
            while let Some(message) = source.next().await {
                match message {
                    Ok(Message::Binary(bytes)) => {
                        local_tx.write_all(&bytes).await.map_err(|e| Error::Io {
                            what: "writing the local connection".into(),
                            source: e,
                        })?;
                        received += bytes.len() as u64;
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(error) => return Err(broken(&url, error)),
                }
            }
            let _ = local_tx.shutdown().await;
            Ok::<u64, Error>(received)
        };
        let (sent, received) = tokio::join!(upstream, downstream);
        Ok((sent?, received?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_match_the_protocol() {
        let start = StreamExec {
            argv: Some(vec!["sh".into()]),
            pty: Some(PtySize {
                cols: 100,
                rows: 30,
            }),
            ..StreamExec::default()
        };
        assert_eq!(
            serde_json::to_value(ClientMessage::Start(start)).unwrap(),
            serde_json::json!({"type": "start", "argv": ["sh"], "pty": {"cols": 100, "rows": 30}})
        );
        assert_eq!(
            serde_json::to_value(ClientMessage::Stdin {
                data: "aGk=".into()
            })
            .unwrap(),
            serde_json::json!({"type": "stdin", "data": "aGk="})
        );
        assert_eq!(
            serde_json::to_value(ClientMessage::CloseStdin).unwrap(),
            serde_json::json!({"type": "close_stdin"})
        );
        assert_eq!(
            serde_json::to_value(ClientMessage::Signal { signal: 2 }).unwrap(),
            serde_json::json!({"type": "signal", "signal": 2})
        );
        assert_eq!(
            serde_json::to_value(ClientMessage::Resize { cols: 1, rows: 2 }).unwrap(),
            serde_json::json!({"type": "resize", "cols": 1, "rows": 2})
        );
    }

    #[test]
    fn server_messages_parse() {
        let parse = |text: &str| serde_json::from_str::<ServerMessage>(text).unwrap();
        assert!(matches!(
            parse(r#"{"type":"started","pid":7}"#),
            ServerMessage::Started { pid: 7 }
        ));
        assert!(matches!(
            parse(r#"{"type":"exit","exit_code":null,"signal":9,"timed_out":true}"#),
            ServerMessage::Exit {
                exit_code: None,
                signal: Some(9),
                timed_out: true
            }
        ));
        assert!(matches!(
            parse(r#"{"type":"error","code":"command_not_found","message":"m"}"#),
            ServerMessage::Error { .. }
        ));
        assert!(matches!(
            parse(r#"{"type":"progress","x":1}"#),
            ServerMessage::Unknown
        ));
    }
}
