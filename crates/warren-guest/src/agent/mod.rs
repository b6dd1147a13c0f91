//! The guest agent: a gRPC server (tonic) over the framed link, on the
//! virtio-serial port in a VM or on a Unix socket for development.

pub mod exec;
pub mod fdio;
pub mod files;
pub mod process;
pub mod pty;
pub mod ring;
pub mod service;
pub mod system;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use warren_proto::MAX_MESSAGE_BYTES;
use warren_proto::link::LinkStream;
use warren_proto::pb::agent_server::AgentServer;

use service::AgentService;
pub use system::ShutdownMode;

/// The agent's OOM score adjustment in a VM: a process that eats the
/// sandbox's memory should be killed, not the agent that reports it.
const AGENT_OOM_SCORE_ADJ: &str = "-900";

static OOM_PROTECTED: AtomicBool = AtomicBool::new(false);

/// Whether the agent lowered its OOM score (then its children reset it).
pub fn oom_protected() -> bool {
    OOM_PROTECTED.load(Ordering::Relaxed)
}

fn protect_from_oom() {
    match std::fs::write("/proc/self/oom_score_adj", AGENT_OOM_SCORE_ADJ) {
        Ok(()) => OOM_PROTECTED.store(true, Ordering::Relaxed),
        Err(error) => tracing::warn!(%error, "could not protect the agent from the OOM killer"),
    }
}

/// How long to wait for the agent's virtio-serial port to appear.
const PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The virtio-serial port never appeared.
    #[error(
        "no virtio-serial port named {name:?} appeared within {timeout:?} (is the virtio_console module loaded and the port configured in QEMU?)"
    )]
    PortMissing {
        /// The port name looked for.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Opening or serving the transport failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Server(#[from] tonic::transport::Error),
}

fn runtime() -> Result<tokio::runtime::Runtime, AgentError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren-agent")
        .build()
        .map_err(|source| AgentError::Io {
            what: "starting the async runtime".into(),
            source,
        })
}

/// Serves gRPC on every connection that arrives on `incoming`.
async fn serve(
    incoming: mpsc::Receiver<LinkStream>,
    shutdown: ShutdownMode,
) -> Result<(), AgentError> {
    let service = AgentServer::new(AgentService::new(shutdown))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let connections = ReceiverStream::new(incoming).map(Ok::<_, io::Error>);
    Server::builder()
        .max_concurrent_streams(Some(1024))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .max_frame_size(Some(1 << 20))
        .add_service(service)
        .serve_with_incoming(connections)
        .await?;
    Ok(())
}

/// Applies the clock the host sends with every handshake (link frames are
/// handled in order, so calls made after the handshake see it).
fn set_clock_from_link(unix_time_ns: i64) {
    if let Err(status) = system::set_clock(unix_time_ns) {
        tracing::warn!(error = %status.message(), "setting the clock from the host failed");
    }
}

/// Finds `/dev/vportNpM` of the port called `name`, waiting for the driver
/// and devtmpfs to create it.
fn find_port(name: &str, timeout: Duration) -> Result<PathBuf, AgentError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let port_name =
                    std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(AgentError::PortMissing {
                name: name.to_string(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the agent on the virtio-serial port `port_name` (in the VM).
pub fn run_port(port_name: &str, shutdown: ShutdownMode) -> Result<(), AgentError> {
    protect_from_oom();
    let path = find_port(port_name, PORT_TIMEOUT)?;
    // One open file, duplicated: the port admits a single open at a time
    // (a second open(2) fails with EBUSY).
    let port: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::Io {
            what: format!("opening {}", path.display()),
            source,
        })?;
    let writer = port.try_clone().map_err(|source| AgentError::Io {
        what: format!("duplicating {}", path.display()),
        source,
    })?;
    tracing::info!(port = %path.display(), "agent serving");
    runtime()?.block_on(async move {
        let (tx, rx) = mpsc::channel(4);
        warren_proto::link::serve_guest_port(port, writer, tx, Some(set_clock_from_link));
        serve(rx, shutdown).await
    })
}

/// Runs the agent on a Unix socket at `path` (development and tests on a
/// normal host): every accepted connection is served like the port.
pub fn run_unix(path: &Path) -> Result<(), AgentError> {
    let io_error = |what: String| move |source| AgentError::Io { what, source };
    // A stale socket from an earlier run would make bind fail.
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(io_error(format!("listening on {}", path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(io_error("configuring the listener".into()))?;
    runtime()?.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(io_error("registering the listener".into()))?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let prepared = stream.into_std().and_then(|stream| {
                    stream.set_nonblocking(false)?;
                    let writer = stream.try_clone()?;
                    Ok((stream, writer))
                });
                match prepared {
                    Ok((reader, writer)) => {
                        // On a development host the "guest" clock is the
                        // host's own: never set it.
                        warren_proto::link::serve_guest_stream(reader, writer, tx.clone(), None);
                    }
                    Err(error) => tracing::warn!(%error, "setting up a connection failed"),
                }
            }
        });
        serve(rx, ShutdownMode::ExitProcess).await
    })
}
