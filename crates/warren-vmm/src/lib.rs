//! The VM backend of warren.
//!
//! The sandbox manager talks to VMs only through [`Vmm`] (launch) and [`Vm`]
//! (observe, kill), so another hypervisor (Firecracker, Cloud Hypervisor)
//! can be added without touching the layers above. The one implementation
//! today is [`qemu::QemuVmm`], which runs Debian's `qemu-system-x86_64` with
//! KVM where the host can do hardware virtualisation and TCG (software
//! emulation) elsewhere.
//!
//! Every VM lives in one directory that holds its sockets, its file-backed
//! RAM, its console log and QEMU's own log. Killing a VM removes the
//! process (its whole process group) and the runtime files; the caller owns
//! the directory itself and whatever disks it put there.

pub mod accel;
pub mod config;
pub mod error;
pub mod host;
pub mod qemu;
pub mod qmp;

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::watch;

pub use accel::{Accel, AccelChoice};
pub use config::{DiskConfig, DiskFormat, VmConfig};
pub use error::{KillError, LaunchError, SnapshotError};

/// Starts VMs. One per hypervisor backend.
#[async_trait]
pub trait Vmm: Send + Sync {
    /// Short backend name for logs and reports ("qemu").
    fn name(&self) -> &'static str;

    /// The accelerator VMs of this backend run with.
    fn accel(&self) -> Accel;

    /// Starts a VM. Returns once the VM process runs and its control socket
    /// answers; the guest may still be booting. On error nothing is left
    /// running and the runtime files are removed.
    async fn launch(&self, config: VmConfig) -> Result<Box<dyn Vm>, LaunchError>;

    /// Takes charge of a VM that an earlier warren process launched with
    /// `config` and that outlived it (its pid file, sockets and console log
    /// are in `config.dir`). The VM keeps running untouched; the returned
    /// handle supervises and controls it like a launched one.
    async fn attach(&self, config: VmConfig) -> Result<Box<dyn Vm>, LaunchError>;
}

/// A running (or exited) VM.
#[async_trait]
pub trait Vm: Send + Sync {
    /// Host process id of the VM process.
    fn pid(&self) -> u32;

    /// The configuration it was launched with.
    fn config(&self) -> &VmConfig;

    /// Unix socket of the agent channel (a byte stream to the guest port).
    fn agent_socket(&self) -> &Path;

    /// File the guest's serial console is written to.
    fn console_log(&self) -> &Path;

    /// `None` while the VM runs; its exit once it has ended.
    fn exit(&self) -> Option<VmExit>;

    /// Watch that turns `Some` when the VM process ends, for whatever reason.
    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>>;

    /// QEMU's run state (`running`, `paused`, `postmigrate`, `inmigrate`,
    /// ...): after a restart of warren it tells a VM that runs apart from
    /// one caught in the middle of a pause or resume.
    async fn run_state(&self) -> Result<String, SnapshotError>;

    /// Ends the VM now (SIGKILL to its process group), waits for the process
    /// to be gone, and removes its runtime files (sockets, RAM file, pid
    /// file). Idempotent.
    async fn kill(&self) -> Result<VmExit, KillError>;

    /// Lets the VM outlive this handle (and this process): dropping the
    /// handle will no longer kill it.
    fn detach(&self);

    /// The RAM file must survive the VM's end (a pause keeps it as the
    /// snapshot's memory); by default it is removed with the VM.
    fn keep_memory_file(&self);

    /// Where the VM's RAM lives when it is not the `memory` file of its
    /// directory nor a `memory_file` the caller gave (a cold-booted VM's RAM
    /// in host memory): a pause must copy it into the directory.
    fn volatile_memory(&self) -> Option<&Path>;

    /// Stops the vCPUs and writes the device state (CPU registers, device
    /// models; not RAM, which is the shared memory file) to `state`. The VM
    /// stays stopped: the caller then either kills it (a pause) or calls
    /// [`Vm::cont`] (an abandoned pause, or a snapshot of a running VM).
    async fn save_device_state(
        &self,
        state: &Path,
        timeout: std::time::Duration,
    ) -> Result<SavedState, SnapshotError>;

    /// Runs the vCPUs again.
    async fn cont(&self) -> Result<(), SnapshotError>;

    /// For a VM launched with `incoming`: loads the device state from
    /// `state` and runs the guest from where it was saved.
    async fn restore_device_state(
        &self,
        state: &Path,
        timeout: std::time::Duration,
    ) -> Result<(), SnapshotError>;
}

/// What a device-state save produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedState {
    /// Size of the state file.
    pub bytes: u64,
    /// Time the vCPUs were stopped before the save started (ms).
    pub stop_ms: u64,
    /// Time the save itself took (ms).
    pub save_ms: u64,
}

/// How and when a VM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// Exit code if the process exited by itself.
    pub code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// When the exit was noticed.
    pub at: SystemTime,
    /// We asked for it (kill or shutdown), as opposed to a crash or an
    /// outside kill.
    pub requested: bool,
    /// Last lines of the VMM's own log (its error messages), if any.
    pub vmm_log_tail: String,
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(signal)) => write!(f, "killed by signal {signal}")?,
            (Some(code), None) => write!(f, "exited with status {code}")?,
            (None, None) => write!(f, "ended")?,
        }
        if !self.requested {
            write!(f, " (not requested by warren)")?;
        }
        let tail = self.vmm_log_tail.trim();
        if !tail.is_empty() {
            write!(f, "; VMM log: {tail}")?;
        }
        Ok(())
    }
}
