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

mod agent;
pub mod error;
pub mod exec;
#[cfg(test)]
mod fake_vmm;
pub mod files;
pub mod id;
pub mod manager;
pub mod memfs;
pub mod recovery;
pub mod sandbox;
pub mod snapshot;
pub mod spec;

pub use error::{
    CreateError, DestroyError, ExecError, FileError, GuestError, GuestErrorKind, ManagerError,
    Unavailable,
};
pub use exec::{
    Command, ExitStatus, Output, Process, ProcessEvent, ProcessInfo, ProcessInput, PtySize,
};
pub use files::{FileInfo, FileType, TransferProgress, WriteOptions};
pub use manager::{Manager, ManagerConfig, SandboxMeta, volatile_ram_dir_for};
pub use sandbox::{GuestInfo, PauseHold, Sandbox};
pub use snapshot::{
    PauseError, PauseOptions, PauseReport, ResumeReport, SnapshotOpError, TemplateMeta,
};
pub use spec::SandboxSpec;
pub use warren_image::{NoProgress, Progress};
pub use warren_vmm::{Accel, AccelChoice};
