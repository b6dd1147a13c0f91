//! A small QMP (QEMU Machine Protocol) client.
//!
//! Written by hand: QMP is newline-delimited JSON with a greeting, a
//! capabilities handshake, id-tagged replies and asynchronous events. The
//! existing crates generate bindings for one QEMU version's full schema;
//! warren needs a dozen commands, version tolerance, per-command timeouts
//! and event fan-out, which this does in ~200 lines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, broadcast, oneshot};

/// Longest QMP line accepted; replies are small except for a few queries.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Default bound on any command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// What went wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to the QMP socket {}; is the VMM running?", .path.display())]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connected socket failed.
    #[error("the QMP socket failed")]
    Io(#[source] std::io::Error),
    /// A reply was not valid JSON.
    #[error("the VMM sent invalid JSON on its QMP socket")]
    InvalidJson(#[source] serde_json::Error),
    /// The connection closed (the VMM exited).
    #[error("QMP connection closed (the VMM exited?)")]
    Closed,
    /// No reply in time: the VMM is hung or overloaded.
    #[error("QMP command {command} got no reply within {after:?}; the VMM may be hung")]
    Timeout {
        /// The command.
        command: String,
        /// How long we waited.
        after: Duration,
    },
    /// QEMU answered with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// Something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    /// Event name, e.g. "STOP", "SHUTDOWN", "MIGRATION".
    pub name: String,
    /// Its data object.
    pub data: Value,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>;

struct Inner {
    writer: Mutex<OwnedWriteHalf>,
    pending: Arc<Pending>,
    events: broadcast::Sender<QmpEvent>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A connected, negotiated QMP session. Cheap to clone.
#[derive(Clone)]
pub struct QmpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient").finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to a QMP socket, reads the greeting and enters command mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half);

        let greeting = tokio::time::timeout(timeout, read_line(&mut reader))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                after: timeout,
            })??;
        let greeting = greeting.ok_or(QmpError::Closed)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting: {greeting}"
            )));
        }

        let pending: Arc<Pending> = Arc::new(Mutex::new(HashMap::new()));
        let (events, _) = broadcast::channel(256);
        let reader_pending = pending.clone();
        let reader_events = events.clone();
        let reader_task = tokio::spawn(async move {
            while let Ok(Some(message)) = read_line(&mut reader).await {
                dispatch(message, &reader_pending, &reader_events).await;
            }
            for (_, waiter) in reader_pending.lock().await.drain() {
                let _ = waiter.send(Err(QmpError::Closed));
            }
        });
        let client = Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(write_half),
                pending,
                events,
                next_id: AtomicU64::new(1),
                reader: reader_task,
            }),
        };
        client
            .execute_with_timeout("qmp_capabilities", None, timeout)
            .await?;
        Ok(client)
    }

    /// Runs a command with the default timeout; returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, DEFAULT_COMMAND_TIMEOUT)
            .await
    }

    /// Runs a command, failing with [`QmpError::Timeout`] after `timeout`.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().await.insert(id, tx);
        let mut line = serde_json::to_vec(&request).expect("a JSON value always serializes");
        line.push(b'\n');
        let write = async {
            let mut writer = self.inner.writer.lock().await;
            writer.write_all(&line).await?;
            writer.flush().await
        };
        if let Err(e) = write.await {
            self.inner.pending.lock().await.remove(&id);
            return Err(QmpError::Io(e));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result.map_err(|e| match e {
                QmpError::Command { class, desc, .. } => QmpError::Command {
                    command: command.to_string(),
                    class,
                    desc,
                },
                other => other,
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => {
                self.inner.pending.lock().await.remove(&id);
                Err(QmpError::Timeout {
                    command: command.to_string(),
                    after: timeout,
                })
            }
        }
    }

    /// Subscribes to events emitted from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.events.subscribe()
    }

    /// Hands QEMU a file descriptor under `name` (QMP `getfd`), for
    /// `fd:` migration URIs: QEMU then reads or writes our file without
    /// forking a shell for `exec:` URIs (a fork of a QEMU with gigabytes
    /// mapped is not free).
    pub async fn send_fd(
        &self,
        name: &str,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), QmpError> {
        use std::os::fd::AsRawFd;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let request = json!({ "execute": "getfd", "arguments": { "fdname": name }, "id": id });
        let mut line = serde_json::to_vec(&request).expect("a JSON value always serializes");
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().await.insert(id, tx);
        {
            let writer = self.inner.writer.lock().await;
            let socket: &UnixStream = writer.as_ref();
            let raw = fd.as_raw_fd();
            let sent = loop {
                socket.writable().await.map_err(QmpError::Io)?;
                let result = socket.try_io(tokio::io::Interest::WRITABLE, || {
                    let fds = [raw];
                    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                    let iov = [std::io::IoSlice::new(&line)];
                    nix::sys::socket::sendmsg::<()>(
                        socket.as_raw_fd(),
                        &iov,
                        &cmsg,
                        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(std::io::Error::from)
                });
                match result {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        self.inner.pending.lock().await.remove(&id);
                        return Err(QmpError::Io(e));
                    }
                }
            };
            if sent < line.len() {
                // The fd went with the first bytes; send the rest plainly.
                let mut rest = &line[sent..];
                while !rest.is_empty() {
                    socket.writable().await.map_err(QmpError::Io)?;
                    match socket.try_write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(QmpError::Io(e)),
                    }
                }
            }
        }
        match tokio::time::timeout(DEFAULT_COMMAND_TIMEOUT, rx).await {
            Ok(Ok(result)) => result.map(|_| ()).map_err(|e| match e {
                QmpError::Command { class, desc, .. } => QmpError::Command {
                    command: "getfd".into(),
                    class,
                    desc,
                },
                other => other,
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => Err(QmpError::Timeout {
                command: "getfd".into(),
                after: DEFAULT_COMMAND_TIMEOUT,
            }),
        }
    }

    /// Polls `query-migrate` until the migration completes or fails.
    pub async fn wait_for_migration(&self, timeout: Duration) -> Result<Value, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.execute("query-migrate", None).await?;
            match status.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(status),
                Some("failed") | Some("cancelled") => {
                    let desc = status
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_string();
                    return Err(QmpError::Command {
                        command: "migrate".into(),
                        class: "MigrationFailed".into(),
                        desc,
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    command: "migrate".into(),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The VM's run state as QEMU reports it ("running", "paused", ...).
    pub async fn run_state(&self) -> Result<String, QmpError> {
        let status = self.execute("query-status", None).await?;
        status
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without status: {status}")))
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Value>, QmpError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await.map_err(QmpError::Io)?;
        if available.is_empty() {
            return Ok(None);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if line.len() > MAX_LINE_BYTES {
            return Err(QmpError::Protocol("QMP line over 16 MiB".into()));
        }
        if done {
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                line.clear();
                continue;
            }
            return serde_json::from_slice(trimmed)
                .map(Some)
                .map_err(QmpError::InvalidJson);
        }
    }
}

async fn dispatch(message: Value, pending: &Pending, events: &broadcast::Sender<QmpEvent>) {
    if let Some(name) = message.get("event").and_then(Value::as_str) {
        let _ = events.send(QmpEvent {
            name: name.to_string(),
            data: message.get("data").cloned().unwrap_or(Value::Null),
        });
        return;
    }
    let Some(id) = message.get("id").and_then(Value::as_u64) else {
        return;
    };
    let Some(waiter) = pending.lock().await.remove(&id) else {
        return;
    };
    let result = if let Some(ret) = message.get("return") {
        Ok(ret.clone())
    } else if let Some(error) = message.get("error") {
        Err(QmpError::Command {
            command: String::new(),
            class: error
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("GenericError")
                .to_string(),
            desc: error
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        })
    } else {
        Err(QmpError::Protocol(format!(
            "reply without return or error: {message}"
        )))
    };
    let _ = waiter.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: enough to check framing, ids, errors, events
    /// and timeouts. Real QEMU is exercised by the integration tests.
    async fn fake_qemu(listener: UnixListener, hang_on: &'static str) {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let request: Value = serde_json::from_slice(&line).unwrap();
                let id = request["id"].clone();
                let command = request["execute"].as_str().unwrap().to_string();
                if command == hang_on {
                    continue;
                }
                let reply = match command.as_str() {
                    "query-status" => json!({"return": {"status": "running"}, "id": id}),
                    "stop" => {
                        stream
                            .write_all(b"{\"event\": \"STOP\", \"data\": {}}\r\n")
                            .await
                            .unwrap();
                        json!({"return": {}, "id": id})
                    }
                    "qmp_capabilities" => json!({"return": {}, "id": id}),
                    _ => {
                        json!({"error": {"class": "CommandNotFound", "desc": "no such command"}, "id": id})
                    }
                };
                let mut out = serde_json::to_vec(&reply).unwrap();
                out.extend_from_slice(b"\r\n");
                stream.write_all(&out).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn commands_errors_events_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_qemu(listener, "hang"));
        let client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(client.run_state().await.unwrap(), "running");

        let mut events = client.events();
        client.execute("stop", None).await.unwrap();
        assert_eq!(events.recv().await.unwrap().name, "STOP");

        let err = client.execute("bogus", None).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        assert!(err.to_string().contains("bogus"));

        let err = client
            .execute_with_timeout("hang", None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        // The session is still usable after a timed-out command.
        assert_eq!(client.run_state().await.unwrap(), "running");
    }
}
