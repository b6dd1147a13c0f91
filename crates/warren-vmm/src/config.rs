//! What a VM is launched with.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use crate::accel::Accel;

/// Everything needed to launch one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Identifier used in process names, logs and the guest hostname.
    pub id: String,
    /// Directory of this VM's runtime files (sockets, RAM file, logs). Must
    /// exist. Unix socket paths inside it must stay under 108 bytes.
    pub dir: PathBuf,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Kernel image (bzImage).
    pub kernel: PathBuf,
    /// Initramfs (cpio).
    pub initramfs: PathBuf,
    /// Extra kernel command line parameters, appended to the backend's own.
    pub kernel_args: Vec<String>,
    /// The root disk (virtio-blk, /dev/vda in the guest).
    pub root_disk: DiskConfig,
    /// File that holds guest RAM (mapped shared). `None` means
    /// `<dir>/memory`, created by QEMU. A resumed VM uses a file served by
    /// the snapshot memory daemon instead.
    pub memory_file: Option<PathBuf>,
    /// Start paused, waiting for device state to restore (a resume or a
    /// clone) instead of booting.
    pub incoming: bool,
    /// Accelerator to run with.
    pub accel: Accel,
    /// Kill the VM if this process dies (ephemeral sandboxes, tests). A
    /// service that must let VMs outlive a restart sets this to false.
    pub die_with_parent: bool,
    /// The guest's network card, when the sandbox has a network. A VM
    /// restored from a snapshot must have one exactly when the VM that was
    /// paused had one (the device state holds it).
    pub nic: Option<NicConfig>,
}

/// A virtio-net card on a TAP device that warren opened (inside the
/// sandbox's network namespace): QEMU gets the descriptor, so it needs no
/// privileges and stays in the host's namespace.
#[derive(Debug, Clone)]
pub struct NicConfig {
    /// The open TAP device (with a virtio-net header), inherited by QEMU.
    pub tap: Arc<OwnedFd>,
    /// The guest MAC address, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
}

impl NicConfig {
    /// The descriptor number QEMU finds the TAP at (the same in the child,
    /// which inherits it).
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }
}

/// A disk attached to the VM.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
}

/// Disk image formats the backend understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw image.
    Raw,
    /// QEMU copy-on-write image (used for per-sandbox overlays).
    Qcow2,
}

impl DiskFormat {
    /// Name as QEMU spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Names of the runtime files inside [`VmConfig::dir`].
pub mod files {
    /// QMP control socket.
    pub const QMP_SOCKET: &str = "qmp.sock";
    /// Agent channel socket.
    pub const AGENT_SOCKET: &str = "agent.sock";
    /// Guest serial console output.
    pub const CONSOLE_LOG: &str = "console.log";
    /// The VMM's own stdout/stderr.
    pub const VMM_LOG: &str = "vmm.log";
    /// File-backed guest RAM.
    pub const MEMORY: &str = "memory";
    /// Pid of the VMM process.
    pub const PID: &str = "vmm.pid";
    /// The stub kernel of a VM that restores a snapshot
    /// ([`Vmm::restore_kernel`](crate::Vmm::restore_kernel)); rewritten at
    /// every restore, so a paused sandbox's directory need not keep it.
    pub const RESTORE_KERNEL: &str = "kernel.restore";
}
