//! Errors of VM operations, one enum per operation.

use std::path::PathBuf;
use std::time::Duration;

use crate::accel::KvmUnavailable;

/// Why a VM could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The VMM binary is missing.
    #[error(
        "{binary} was not found; install it with `apt-get install qemu-system-x86 qemu-utils` (or run ./dev.sh up)"
    )]
    VmmMissing {
        /// The binary looked for.
        binary: String,
    },
    /// A file the VM needs does not exist.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A socket path would exceed the kernel's limit.
    #[error(
        "socket path {path} is {len} bytes, over the 107-byte limit of unix sockets; use a shorter data directory (WARREN_HOME)"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Invalid size parameters.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    /// KVM was required but is not usable.
    #[error(transparent)]
    Kvm(#[from] KvmUnavailable),
    /// Spawning the process failed.
    #[error("could not start {binary}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process started and exited before it was ready.
    #[error("the VMM exited during start-up: {0}")]
    ExitedEarly(crate::VmExit),
    /// The control socket never answered.
    #[error("the VMM's control socket did not come up within {0:?}")]
    ControlTimeout(Duration),
    /// The control protocol failed.
    #[error("the VMM's control socket failed")]
    Qmp(#[from] crate::qmp::QmpError),
    /// A VM to re-attach to is not running (or its pid now belongs to
    /// another process).
    #[error("the VM of {id} is not running: {detail}")]
    NotRunning {
        /// VM id.
        id: String,
        /// What was found instead.
        detail: String,
    },
    /// Local file system error while preparing the VM.
    #[error("preparing the VM directory failed at {path}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a VM could not be killed.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// The process did not go away after SIGKILL.
    #[error("the VM process {pid} did not exit within {timeout:?} of SIGKILL")]
    StillRunning {
        /// Its pid.
        pid: u32,
        /// How long we waited.
        timeout: Duration,
    },
    /// Sending the signal failed for a reason other than "already gone".
    #[error("could not signal the VM process {pid}")]
    Signal {
        /// Its pid.
        pid: u32,
        /// The OS error.
        source: nix::Error,
    },
}

/// Why saving or restoring a VM's device state failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM has no control connection (it never finished starting).
    #[error("the VM has no control connection")]
    NoControl,
    /// QEMU refused or failed.
    #[error(transparent)]
    Qmp(#[from] crate::qmp::QmpError),
    /// The state file could not be written or read.
    #[error("reading or writing the device state file {path} failed")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}
