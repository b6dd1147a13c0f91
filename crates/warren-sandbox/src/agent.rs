//! The connection to a sandbox's guest agent.
//!
//! A tonic [`Channel`] whose connector dials the VM's agent socket and
//! performs the link handshake. If the connection breaks while the VM still
//! runs, the next call dials again (a new link epoch), so a host-side
//! hiccup never needs a new sandbox.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use warren_proto::bulk::BulkSender;
#[cfg(feature = "bench")]
use warren_proto::link::RawThroughput;
use warren_proto::link::{HostLink, LinkError};
use warren_proto::pb::agent_client::AgentClient;
use warren_vmm::VmExit;

use crate::error::{GuestError, GuestErrorKind, Unavailable};

/// Handshake bound for reconnects to an already running agent.
const RECONNECT_HANDSHAKE: Duration = Duration::from_secs(10);
/// Window sizes tuned for bulk transfers over one local channel.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;

/// Facts every operation needs to turn a transport error into a useful one.
#[derive(Debug)]
pub(crate) struct SandboxShared {
    pub id: String,
    pub console_log: PathBuf,
    pub exit: watch::Receiver<Option<VmExit>>,
    pub destroyed: AtomicBool,
    /// Set when the sandbox was paused: this handle's VM is gone, the
    /// sandbox lives on as a snapshot.
    pub paused: AtomicBool,
    /// Transfers in flight hold it shared; a pause takes it exclusively
    /// (waiting a bounded time), so a download is not cut midway and no
    /// new one starts while the pause runs.
    pub transfers: Arc<tokio::sync::RwLock<()>>,
    /// Held for the whole of a pause. A VM that dies while its pause runs
    /// (its vCPUs stopped, its state being saved) is judged only after the
    /// pause: that pause may still commit a complete snapshot.
    pub pause_running: tokio::sync::Mutex<()>,
}

impl SandboxShared {
    /// What makes the sandbox unavailable, if anything does.
    pub fn unavailable(&self) -> Option<Unavailable> {
        if self.paused.load(Ordering::SeqCst) {
            return Some(Unavailable::Paused {
                id: self.id.clone(),
            });
        }
        if self.destroyed.load(Ordering::SeqCst) {
            return Some(Unavailable::Destroyed {
                id: self.id.clone(),
            });
        }
        self.exit
            .borrow()
            .clone()
            .map(|exit| Unavailable::VmExited {
                id: self.id.clone(),
                console_tail: warren_vmm::process::tail_of(&self.console_log, 1500),
                exit,
            })
    }

    /// Converts a gRPC status into either a guest error or "unavailable".
    pub async fn classify(&self, status: tonic::Status) -> Classified {
        use tonic::Code;
        let kind = match status.code() {
            Code::NotFound => Some(GuestErrorKind::NotFound),
            Code::InvalidArgument => Some(GuestErrorKind::InvalidArgument),
            Code::PermissionDenied => Some(GuestErrorKind::PermissionDenied),
            Code::AlreadyExists => Some(GuestErrorKind::AlreadyExists),
            Code::FailedPrecondition | Code::OutOfRange => Some(GuestErrorKind::FailedPrecondition),
            Code::ResourceExhausted => Some(GuestErrorKind::ResourceExhausted),
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => {
                Some(GuestErrorKind::Internal)
            }
            _ => None,
        };
        // A transport failure may be the VM dying; give its exit a moment
        // to be noticed so the caller gets "the VM was killed" rather than
        // "broken pipe".
        if kind.is_none() || status.code() == Code::Unknown {
            let mut exit = self.exit.clone();
            let _ =
                tokio::time::timeout(Duration::from_millis(300), exit.wait_for(Option::is_some))
                    .await;
            if let Some(unavailable) = self.unavailable() {
                return Classified::Unavailable(unavailable);
            }
        }
        match kind {
            Some(kind) => Classified::Guest(GuestError {
                kind,
                message: status.message().to_string(),
            }),
            None => Classified::Unavailable(Unavailable::Channel {
                id: self.id.clone(),
                detail: format!("{:?}: {}", status.code(), status.message()),
            }),
        }
    }
}

/// Result of [`SandboxShared::classify`].
pub(crate) enum Classified {
    Guest(GuestError),
    Unavailable(Unavailable),
}

/// An open gRPC channel to the agent plus the link it currently runs on.
#[derive(Clone)]
pub(crate) struct AgentConnection {
    client: AgentClient<Channel>,
    link: Arc<Mutex<Option<Arc<HostLink>>>>,
}

impl AgentConnection {
    /// Dials the agent socket and waits up to `first_timeout` for the
    /// handshake (the guest may still be booting).
    pub async fn connect(socket: PathBuf, first_timeout: Duration) -> Result<Self, ConnectError> {
        let link_slot: Arc<Mutex<Option<Arc<HostLink>>>> = Arc::new(Mutex::new(None));
        let connected_once = Arc::new(AtomicBool::new(false));
        // Set when a handshake timed out: the one failure callers tell
        // apart (the guest is still booting, or its agent is broken).
        let timed_out: Arc<Mutex<Option<Duration>>> = Arc::default();
        let slot = link_slot.clone();
        let timed_out_in = timed_out.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            let slot = slot.clone();
            let connected_once = connected_once.clone();
            let timed_out = timed_out_in.clone();
            async move {
                let timeout = if connected_once.load(Ordering::SeqCst) {
                    RECONNECT_HANDSHAKE
                } else {
                    first_timeout
                };
                let stream = UnixStream::connect(&socket).await?;
                let mut link = HostLink::establish(stream, timeout)
                    .await
                    .map_err(|error| {
                        if let LinkError::HandshakeTimeout(after) = error {
                            *timed_out.lock().expect("timeout slot") = Some(after);
                        }
                        std::io::Error::other(error)
                    })?;
                let stream = link.take_stream().expect("fresh link has its stream");
                *slot.lock().expect("link slot") = Some(Arc::new(link));
                connected_once.store(true, Ordering::SeqCst);
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = Endpoint::from_static("http://warren-agent")
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_adaptive_window(false)
            // Fewer, larger HTTP/2 frames: each one costs guest CPU, which
            // is scarce under software emulation.
            .max_frame_size(MAX_FRAME)
            .connect_with_connector(connector)
            .await
            .map_err(|error| match *timed_out.lock().expect("timeout slot") {
                Some(after) => ConnectError::HandshakeTimeout(after),
                None => ConnectError::Transport(error),
            })?;
        let client = AgentClient::new(channel)
            .max_decoding_message_size(warren_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(warren_proto::MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            link: link_slot,
        })
    }

    /// A client handle for one call (clones are cheap).
    pub fn client(&self) -> AgentClient<Channel> {
        self.client.clone()
    }

    /// Whether the current connection's handshake also set the guest clock
    /// (guests of link version 2 and later).
    pub fn clock_set_by_link(&self) -> bool {
        self.current_link()
            .is_ok_and(|link| link.clock_set_by_link())
    }

    fn current_link(&self) -> Result<Arc<HostLink>, LinkError> {
        self.link
            .lock()
            .expect("link slot")
            .clone()
            .ok_or(LinkError::Closed)
    }

    /// Raw guest → host throughput of the channel (no HTTP/2, no protobuf).
    #[cfg(feature = "bench")]
    pub async fn raw_download(&self, bytes: u64) -> Result<RawThroughput, LinkError> {
        self.current_link()?
            .bench_pull(bytes, Duration::from_secs(600))
            .await
    }

    /// A bulk upload on the current connection, if its guest takes them
    /// (link version 3); `None` means "send the bytes in the call".
    pub fn open_bulk(&self) -> Option<BulkSender> {
        self.current_link().ok()?.open_bulk()?.ok()
    }

    /// Raw host → guest throughput of the channel.
    #[cfg(feature = "bench")]
    pub async fn raw_upload(&self, bytes: u64) -> Result<RawThroughput, LinkError> {
        self.current_link()?
            .bench_push(bytes, Duration::from_secs(600))
            .await
    }

    /// Link-level round trip.
    #[cfg(feature = "bench")]
    pub async fn ping(&self) -> Result<Duration, LinkError> {
        self.current_link()?.ping(Duration::from_secs(10)).await
    }
}

/// The agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The guest agent did not answer the link handshake in time.
    #[error("the guest agent did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The channel could not be set up.
    #[error("the agent channel could not be set up")]
    Transport(#[source] tonic::transport::Error),
}
