//! Errors of sandbox operations, one enum per operation.

use std::path::PathBuf;
use std::time::Duration;

use warren_proto::paths::PathError;

use crate::memfs::MemFsError;
use warren_vmm::VmExit;

/// Why a sandbox could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request itself is wrong (sizes, names, env vars).
    #[error("invalid sandbox request")]
    InvalidSpec(#[source] crate::spec::SpecError),
    /// The id the caller chose for the sandbox is not one.
    #[error("{0:?} is not a sandbox id")]
    InvalidId(String),
    /// The image could not be found or built.
    #[error(transparent)]
    Image(#[from] warren_image::ImageError),
    /// The image could not be prepared (its build task died).
    #[error("preparing the image failed")]
    ImageTask(#[source] tokio::task::JoinError),
    /// A layer of the root disk could not be made (`qemu-img`).
    #[error("creating the sandbox disk failed")]
    Disk(#[from] warren_vmm::disk::DiskError),
    /// The VM did not start.
    #[error(transparent)]
    Launch(#[from] warren_vmm::LaunchError),
    /// The sandbox's network could not be made.
    #[error("giving the sandbox its network failed")]
    Network(#[source] crate::network::NetworkError),
    /// The VM exited while booting.
    #[error(
        "sandbox {id} stopped while booting: the VM {exit}{}",
        console_hint(console_tail)
    )]
    BootFailed {
        /// Sandbox id.
        id: String,
        /// How the VM ended.
        exit: VmExit,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The agent did not come up in time.
    #[error(
        "sandbox {id}: the guest agent did not answer within {after:?}{}",
        console_hint(console_tail)
    )]
    BootTimeout {
        /// Sandbox id.
        id: String,
        /// How long we waited.
        after: Duration,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The agent answered but is not usable (version mismatch, broken).
    #[error("sandbox {id}: the guest agent is not usable")]
    Agent {
        /// Sandbox id.
        id: String,
        /// What is wrong.
        #[source]
        source: Box<AgentProblem>,
    },
    /// Local file system failure.
    #[error("sandbox storage failed at {path}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with a guest agent that answered ([`CreateError::Agent`]).
#[derive(Debug, thiserror::Error)]
pub enum AgentProblem {
    /// The agent channel could not be set up.
    #[error("the agent channel could not be set up")]
    Channel(#[source] tonic::transport::Error),
    /// The VM exited before its agent answered.
    #[error("the VM exited while booting")]
    VmExited,
    /// A call the boot needs failed.
    #[error("{what} failed")]
    Call {
        /// What was asked (as in "setting the guest clock").
        what: &'static str,
        /// Why.
        #[source]
        source: ExecError,
    },
    /// The agent speaks another protocol.
    #[error(
        "guest agent protocol {guest} but host speaks {host}; rebuild the image (the guest agent changed)"
    )]
    Protocol {
        /// The guest's protocol version.
        guest: u32,
        /// This warren's.
        host: u32,
    },
    /// The restored VM did not load its device state.
    #[error("restoring the device state failed")]
    Restore(#[source] warren_vmm::SnapshotError),
}

fn console_hint(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- end of the guest console ---\n{tail}")
    }
}

/// The sandbox cannot serve requests any more.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// Its VM exited (crashed, was killed from outside, or powered off).
    #[error("sandbox {id} is gone: its VM {exit}{}", console_hint(console_tail))]
    VmExited {
        /// Sandbox id.
        id: String,
        /// How the VM ended.
        exit: VmExit,
        /// The end of the guest console.
        console_tail: String,
    },
    /// It was paused: resume it for a new handle.
    #[error("sandbox {id} is paused; resume it first")]
    Paused {
        /// Sandbox id.
        id: String,
    },
    /// A pause is under way: it will be paused in a moment.
    #[error("sandbox {id} is being paused")]
    Pausing {
        /// Sandbox id.
        id: String,
    },
    /// It was destroyed through this handle.
    #[error("sandbox {id} was destroyed")]
    Destroyed {
        /// Sandbox id.
        id: String,
    },
    /// The agent channel failed while the VM still runs.
    #[error("sandbox {id}: the agent channel failed: {detail}")]
    Channel {
        /// Sandbox id.
        id: String,
        /// Transport detail.
        detail: String,
    },
}

/// Classes of errors the guest agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// No such file, process, or command.
    NotFound,
    /// The request was malformed (bad path, unknown user, ...).
    InvalidArgument,
    /// The guest refused for permissions.
    PermissionDenied,
    /// The target exists already.
    AlreadyExists,
    /// The target is in the wrong state (not a directory, exited, ...).
    FailedPrecondition,
    /// The guest ran out of something (disk space).
    ResourceExhausted,
    /// Anything else.
    Internal,
}

/// An error the guest agent reported, with its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GuestError {
    /// Its class.
    pub kind: GuestErrorKind,
    /// The agent's message (names the path or command).
    pub message: String,
}

/// Why running a process failed (not: the process failed; that is an exit
/// status).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `argv[0]` is not an executable in the sandbox.
    #[error("{0}")]
    CommandNotFound(String),
    /// The command was malformed before it reached the guest.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The guest refused or failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The sandbox is gone.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The sandbox path is not acceptable.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The guest refused or failed (not found, disk full, ...).
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// Reading or writing the host side of a transfer failed.
    #[error("host file {path} failed")]
    Local {
        /// Host path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The guest sent something that is not a valid reply.
    #[error("the guest agent sent an invalid reply: {0}")]
    Protocol(String),
    /// The sandbox is gone.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl FileError {
    /// The guest error class, if this is a guest error.
    pub fn guest_kind(&self) -> Option<GuestErrorKind> {
        match self {
            FileError::Guest(error) => Some(error.kind),
            _ => None,
        }
    }
}

/// Why destroying a sandbox did not fully succeed. The sandbox is unusable
/// either way.
#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    /// The VM process would not die.
    #[error(transparent)]
    Kill(#[from] warren_vmm::KillError),
    /// Its directory could not be removed.
    #[error("removing sandbox directory {path} failed")]
    Cleanup {
        /// The directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a manager could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The data directory is unusable.
    #[error("data directory {path} is unusable")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image store could not be opened.
    #[error(transparent)]
    Image(#[from] warren_image::ImageError),
    /// The VM backend is unusable.
    #[error(transparent)]
    Vmm(#[from] warren_vmm::LaunchError),
}

/// An error and its sources as one line (`what: why: root cause`), for the
/// places that keep an error as text (logs, string details), since a
/// `Display` never repeats its source.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
/// Why a pause failed, and what state the sandbox is left in. The step
/// that failed, and its cause, are the [`std::error::Error::source`] chain.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The sandbox cannot be paused (already paused, destroyed, VM gone).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The pause failed while the VM still existed: it runs on, unchanged.
    #[error("pausing sandbox {id} failed, it keeps running{}", space_hint(*no_space))]
    StillRunning {
        /// Sandbox id.
        id: String,
        /// The step that failed.
        #[source]
        source: StepError,
        /// The disk holding the data directory is full.
        no_space: bool,
    },
    /// The VM ended on its own (killed, crashed) before the pause had
    /// everything it needed: the sandbox falls back to its previous
    /// snapshot if it has one, else it is lost.
    #[error("pausing sandbox {id} failed because its VM ended during the pause; {}", if *previous_kept { "it falls back to its previous snapshot" } else { "it had no earlier snapshot and is lost" })]
    VmEnded {
        /// Sandbox id.
        id: String,
        /// The step that failed when the VM went away.
        #[source]
        source: StepError,
        /// Whether an earlier snapshot remains resumable.
        previous_kept: bool,
    },
    /// The VM was released but the new snapshot could not be committed: the
    /// sandbox is paused at its previous snapshot (what ran since the last
    /// resume is lost), or lost if it had none.
    #[error("pausing sandbox {id} failed after its VM stopped; {}{}", if *previous_kept { "the previous snapshot is kept and can be resumed" } else { "the sandbox had no earlier snapshot and is lost" }, space_hint(*no_space))]
    Committed {
        /// Sandbox id.
        id: String,
        /// The step of the commit that failed.
        #[source]
        source: StepError,
        /// Whether an earlier snapshot remains resumable.
        previous_kept: bool,
        /// The disk holding the data directory is full.
        no_space: bool,
    },
}

impl PauseError {
    /// The sandbox still runs after this error.
    pub fn still_running(&self) -> bool {
        matches!(self, PauseError::StillRunning { .. })
    }

    /// The failure was a full disk.
    pub fn no_space(&self) -> bool {
        match self {
            PauseError::StillRunning { no_space, .. } | PauseError::Committed { no_space, .. } => {
                *no_space
            }
            PauseError::Unavailable(_) | PauseError::VmEnded { .. } => false,
        }
    }
}

fn space_hint(no_space: bool) -> &'static str {
    if no_space {
        " (the disk holding warren's data directory is full: free space and try again)"
    } else {
        ""
    }
}

/// Why a resume, clone or template operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotOpError {
    /// No paused sandbox with this id.
    #[error("no paused sandbox {0} on this host")]
    NotPaused(String),
    /// No template with this name.
    #[error("no snapshot template named {0:?}")]
    NoTemplate(String),
    /// A template with this name exists.
    #[error("a snapshot template named {0:?} already exists; pick another name or delete it first")]
    TemplateExists(String),
    /// The template still has clones.
    #[error("snapshot template {name:?} is used by {} sandbox(es) ({}); delete them first", users.len(), users.join(", "))]
    TemplateInUse {
        /// Template name.
        name: String,
        /// Sandboxes created from it.
        users: Vec<String>,
    },
    /// A bad template name.
    #[error(
        "invalid template name {0:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidName(String),
    /// The on-disk snapshot is unreadable.
    #[error("the snapshot of {id} is unreadable")]
    Corrupt {
        /// Sandbox id or template name.
        id: String,
        /// What is wrong.
        #[source]
        source: Box<StepCause>,
    },
    /// The memory daemon failed.
    #[error(transparent)]
    MemFs(#[from] MemFsError),
    /// Booting the restored VM failed (the snapshot is left as it was).
    #[error(transparent)]
    Create(#[from] CreateError),
    /// A file operation failed.
    #[error("{what} failed{}", space_hint(*no_space))]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: Box<StepCause>,
        /// The disk is full (decided from `source`).
        no_space: bool,
    },
}

impl SnapshotOpError {
    /// A failed file operation (`what`, as in "copying the device state").
    pub(crate) fn io(what: impl Into<String>, cause: impl Into<StepCause>) -> Self {
        let source: StepCause = cause.into();
        SnapshotOpError::Io {
            what: what.into(),
            no_space: source.no_space(),
            source: Box::new(source),
        }
    }

    /// The snapshot of `id` cannot be read.
    pub(crate) fn corrupt(id: &str, cause: impl Into<StepCause>) -> Self {
        SnapshotOpError::Corrupt {
            id: id.to_string(),
            source: Box::new(cause.into()),
        }
    }
}

/// A step of a pause or of its commit that failed: what was being done,
/// with its typed cause as the source.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StepError {
    what: String,
    #[source]
    cause: Box<StepCause>,
}

impl StepError {
    /// `what` (as in "saving the device state") failed because of `cause`.
    pub fn new(what: impl Into<String>, cause: impl Into<StepCause>) -> Self {
        Self {
            what: what.into(),
            cause: Box::new(cause.into()),
        }
    }

    /// What failed.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Why.
    pub fn cause(&self) -> &StepCause {
        &self.cause
    }

    /// Whether the cause is a full disk (or an exhausted quota).
    pub fn no_space(&self) -> bool {
        self.cause.no_space()
    }
}

/// The cause of a failed snapshot step, as a type (never as text), so
/// that a full disk is told apart from a broken snapshot by what failed.
#[derive(Debug, thiserror::Error)]
pub enum StepCause {
    /// A file operation of warren's own.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A snapshot operation (generation, pack, flatten, copy of RAM).
    #[error(transparent)]
    Snapshot(#[from] warren_snapshot::OpError),
    /// Reading or writing a snapshot header.
    #[error(transparent)]
    Format(#[from] warren_snapshot::FormatError),
    /// A disk layer (`qemu-img`).
    #[error(transparent)]
    Disk(#[from] warren_vmm::disk::DiskError),
    /// The memory daemon.
    #[error(transparent)]
    MemFs(#[from] MemFsError),
    /// QEMU's part of a pause (stop, device state, cont).
    #[error(transparent)]
    Vm(#[from] warren_vmm::SnapshotError),
    /// The guest agent (flushing the guest's filesystems).
    #[error(transparent)]
    Guest(#[from] ExecError),
    /// Reading or writing metadata.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A step that did not finish in time.
    #[error("it did not finish within {0:?}")]
    Timeout(Duration),
    /// The memory daemon could not store some blocks the guest wrote: the
    /// disk under the work file is full (a write error of the daemon is
    /// ENOSPC or EIO on a full file system; it reports no errno).
    #[error("{blocks} block(s) of guest memory could not be written: {first_error}")]
    LostWrites {
        /// How many.
        blocks: u64,
        /// The daemon's first error message.
        first_error: String,
    },
    /// The files on disk do not add up to what the step needs.
    #[error("{0}")]
    Inconsistent(String),
    /// The template a clone was made from cannot be read.
    #[error("the template it was cloned from is unreadable")]
    ParentTemplate(#[source] Box<SnapshotOpError>),
    /// A blocking task of the step panicked.
    #[error("the task panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

impl StepCause {
    /// Whether the cause is a full disk (or an exhausted quota), from its
    /// type: an OS error ENOSPC/EDQUOT anywhere in the chain, the typed
    /// no-space variants of the snapshot and disk layers, or blocks the
    /// memory daemon could not store.
    pub fn no_space(&self) -> bool {
        match self {
            StepCause::LostWrites { .. } => true,
            StepCause::Snapshot(warren_snapshot::OpError::NoSpace { .. }) => true,
            StepCause::Disk(warren_vmm::disk::DiskError::NoSpace { .. }) => true,
            StepCause::Io(e) => chain_has_no_space(e),
            StepCause::Snapshot(e) => chain_has_no_space(e),
            StepCause::Format(e) => chain_has_no_space(e),
            StepCause::Disk(e) => chain_has_no_space(e),
            StepCause::MemFs(e) => chain_has_no_space(e),
            StepCause::Vm(e) => chain_has_no_space(e),
            StepCause::Guest(_)
            | StepCause::Json(_)
            | StepCause::Timeout(_)
            | StepCause::Inconsistent(_)
            | StepCause::ParentTemplate(_)
            | StepCause::Panicked(_) => false,
        }
    }
}

/// Whether an OS error of the chain from `error` is ENOSPC or EDQUOT.
fn chain_has_no_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io_is_no_space(io) {
                return true;
            }
            // An error wrapped in an `io::Error` is its `get_ref`, not its
            // source.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = error.source();
    }
    false
}

/// Whether `error` is a full disk or an exhausted quota.
pub(crate) fn io_is_no_space(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
