//! The host sandbox manager: the library API of warren.
//!
//! [`Manager::create`] turns a [`SandboxSpec`] into a running [`Sandbox`]:
//! it makes sure the image exists (building it on first use), creates a
//! copy-on-write overlay of the shared root disk, launches the VM through
//! the [`warren_vmm::Vmm`] backend, and waits for the guest agent's
//! handshake. A [`Sandbox`] then runs processes ([`Sandbox::exec`],
//! [`Sandbox::run`]), terminals ([`Command::pty`]) and file operations
//! ([`Sandbox::write_file_from`], [`Sandbox::read_file_to`], ...), and is
//! destroyed with [`Sandbox::destroy`] (or by dropping it).
//!
//! The service layer (REST API, persistence) builds on this crate and keeps
//! no VM logic of its own.

// Every module is private; what other crates use is re-exported below.
// The modules form layers, each using only the ones before it (no module
// names its importer):
//   dir, busy, id, spec, memfs, network   files, processes and host
//                                  networks, no sandbox state
//   error -> agent -> exec -> sandbox -> files
//   manager (create, the Manager itself) -> chain (the committed snapshot)
//   -> commit -> pause; resume -> template
//   recovery: classify -> reattach, reconcile (over manager, commit, chain)
mod agent;
mod busy;
mod chain;
mod commit;
mod dir;
mod error;
mod exec;
#[cfg(test)]
mod fake_vmm;
mod files;
pub mod id;
mod manager;
mod memfs;
mod network;
mod pause;
// Public only for the path `recovery::Fix` that warren-host names; its
// submodules are private and its items are also at the crate root.
pub mod recovery;
mod resume;
mod sandbox;
pub mod spec;
mod template;

pub use busy::BusyGuard;
pub use chain::dir_allocated_bytes;
pub use dir::{DataDir, SandboxDir, TemplateEntry};
pub use error::{
    AgentProblem, CreateError, DestroyError, ExecError, FileError, GuestError, GuestErrorKind,
    ManagerError, PauseError, SnapshotOpError, StepCause, StepError, Unavailable,
};
pub use exec::{
    Command, ExitStatus, Output, Process, ProcessEvent, ProcessInfo, ProcessInput, PtySize,
};
pub use files::{FileInfo, FileType, TransferProgress, WriteOptions};
pub use manager::{
    EnvConfigError, Manager, ManagerConfig, SandboxMeta, parse_upstream, volatile_ram_dir_for,
};
pub use memfs::{MEMFS_ENV, MemFs, MemFsError, daemons_under};
pub use network::{NetworkConfig, NetworkError, Networking, SandboxNetwork, host_resolver};
pub use pause::{DEFAULT_MERGE_CAP, PauseOptions, PauseReport};
pub use recovery::{Fix, Recovery};
pub use resume::ResumeReport;
pub use sandbox::{GuestInfo, PauseHold, Sandbox};
pub use spec::{SandboxSpec, SpecError};
pub use template::{TemplateMeta, validate_template_name};
pub use warren_image::{NoProgress, Progress};
pub use warren_net::layout::HostRange;
pub use warren_net::{NetworkPolicy, PolicyError};
pub use warren_vmm::{Accel, AccelChoice};

/// The snapshot names other crates spell `warren_sandbox::snapshot::...`
/// (also at the crate root, where new code should name them).
pub mod snapshot {
    pub use crate::pause::DEFAULT_MERGE_CAP;
    pub use crate::template::validate_template_name;
}
