//! The VM backend of warren.
//!
//! The sandbox manager launches, re-attaches, observes and ends VMs only
//! through [`Vmm`] and [`Vm`], so another hypervisor (Firecracker, Cloud
//! Hypervisor) can be added by implementing those two traits. The one
//! implementation today is [`QemuVmm`], which runs Debian's
//! `qemu-system-x86_64` with KVM where the host can do hardware
//! virtualisation and TCG (software emulation) elsewhere. Its internals
//! (`qemu::*`: command line, QMP, RAM placement) are not for other crates;
//! what crash recovery needs of them (finding a VM from its pid file,
//! listing the VMs that run, ending one, freeing leftover RAM, the stub
//! kernel of a restore) is a method of [`Vmm`].
//!
//! Two backend-neutral modules are public because the layers above need
//! them for things that are not VMs:
//!
//! - [`process`]: process groups, pid files, liveness, kill, atomic writes
//!   and log tails, shared by QEMU and the snapshot memory daemon
//!   (`warren-memfs`), which the sandbox manager starts and ends itself;
//! - [`disk`]: every `qemu-img` / qcow2 operation on the layers of a
//!   sandbox's root disk (create, flatten, backing file).
//!
//! Every VM lives in one directory that holds its sockets, its pid file,
//! its console log and QEMU's own log (and its RAM, unless that is in host
//! memory). Killing a VM removes the process (its whole process group) and
//! the runtime files; the caller owns the directory itself and whatever
//! disks it put there.

pub mod accel;
pub mod config;
pub mod disk;
pub mod error;
pub mod host;
pub mod process;
pub mod qemu;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::watch;

pub use accel::{Accel, AccelChoice, UnknownAccel};
pub use config::{DiskConfig, DiskFormat, NicConfig, VmConfig};
pub use error::{KillError, LaunchError, SnapshotError};
pub use qemu::QemuVmm;

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

    /// The pid of the VM process of sandbox `id` whose runtime files are in
    /// `dir`, if it still runs: crash recovery's test of whether a VM from
    /// before a restart is there to re-attach (or to end). The pid file is
    /// checked against the process's command line (pids are reused) and a
    /// zombie counts as gone.
    fn running_pid(&self, dir: &Path, id: &str) -> Option<u32>;

    /// Every VM process of this backend running on this host, of any data
    /// directory: the reconciler's view of what really runs, whatever the
    /// records say.
    fn live_vms(&self) -> Vec<VmProcess>;

    /// Ends a VM process found on the host without a [`Vm`] handle (its
    /// whole process group, and whatever host memory only it held) and
    /// waits a few seconds for it to go. Returns whether it is gone.
    fn kill_process(&self, pid: u32) -> bool;

    /// Frees the RAM files in `dir` (a host-memory RAM directory) that no
    /// running VM uses any more, left by VMs that ended while warren was
    /// not there. Returns the files removed.
    fn sweep_memory(&self, dir: &Path) -> Vec<PathBuf>;

    /// The kernel to launch a VM with that restores a snapshot
    /// ([`VmConfig::incoming`]) rather than boots `kernel`: the backend may
    /// write a cheaper stand-in into the VM directory `dir`
    /// ([`config::files::RESTORE_KERNEL`]) or return `kernel` itself.
    fn restore_kernel(&self, kernel: &Path, dir: &Path) -> std::io::Result<PathBuf>;
}

/// A VM process found on the host ([`Vmm::live_vms`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmProcess {
    /// Its pid.
    pub pid: u32,
    /// The sandbox id it runs (from its [`process::vm_marker`]).
    pub id: String,
    /// Its full command line (joined by spaces), to tell which data
    /// directory it belongs to.
    pub cmdline: String,
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
