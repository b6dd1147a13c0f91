//! Errors of sandbox operations, one enum per operation.

use std::path::PathBuf;
use std::time::Duration;

use warren_proto::paths::PathError;
use warren_vmm::VmExit;

/// Why a sandbox could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request itself is wrong (sizes, names, env vars).
    #[error("invalid sandbox request: {0}")]
    InvalidSpec(String),
    /// The image could not be found or built.
    #[error(transparent)]
    Image(#[from] warren_image::ImageError),
    /// The root disk overlay could not be created.
    #[error("creating the sandbox disk failed: {0}")]
    Disk(String),
    /// A layer of the root disk could not be made (`qemu-img`).
    #[error(transparent)]
    DiskLayer(#[from] warren_vmm::disk::DiskError),
    /// The VM did not start.
    #[error(transparent)]
    Launch(#[from] warren_vmm::LaunchError),
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
    #[error("sandbox {id}: the guest agent is not usable: {detail}")]
    Agent {
        /// Sandbox id.
        id: String,
        /// What is wrong.
        detail: String,
    },
    /// Local file system failure.
    #[error("sandbox storage failed at {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
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
    /// argv[0] is not an executable in the sandbox.
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
    #[error("host file {path}: {source}")]
    Local {
        /// Host path.
        path: PathBuf,
        /// OS error.
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
    #[error("removing sandbox directory {path} failed: {source}")]
    Cleanup {
        /// The directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Why a manager could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// OS error.
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
