//! The host interface: everything the control plane asks of one host.
//!
//! [`Host`] is the seam between `warren-server` and a host. Its methods take
//! and return plain values (ids, specs, reports, summaries), never a
//! `Manager` or a borrowed internal, so the same surface can later be
//! served over the network by a host agent (many hosts on PostgreSQL).
//! Errors are a [`HostError`] whose [`HostError::kind`] is a serde-able
//! [`HostErrorKind`]: what the control plane decides on, and what a remote
//! host sends across the wire beside the message.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use warren_sandbox::{CreateError, DestroyError, PauseError, SnapshotOpError, Unavailable};

use crate::{
    Fix, HostEvent, PauseReport, RecoverySummary, ResumeReport, SandboxSpec, TemplateMeta,
};

/// A host's CPUs and memory: the bounds of a create request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Online CPUs.
    pub cpus: u32,
    /// Total RAM in MiB.
    pub memory_total_mib: u64,
    /// RAM available for new work in MiB.
    pub memory_available_mib: u64,
}

impl From<warren_vmm::host::HostCapacity> for Capacity {
    fn from(host: warren_vmm::host::HostCapacity) -> Self {
        Self {
            cpus: host.cpus,
            memory_total_mib: host.memory_total_mib,
            memory_available_mib: host.memory_available_mib,
        }
    }
}

impl From<Capacity> for warren_vmm::host::HostCapacity {
    fn from(capacity: Capacity) -> Self {
        Self {
            cpus: capacity.cpus,
            memory_total_mib: capacity.memory_total_mib,
            memory_available_mib: capacity.memory_available_mib,
        }
    }
}

/// The sandboxes of one host, as the control plane sees them.
///
/// Every method names sandboxes by id. The local implementation is
/// [`crate::HostAgent`]; the server holds an `Arc<dyn Host>` and unit tests
/// of its decisions use a fake. The one thing not yet behind plain values
/// is the data plane ([`Host::session`]): exec, file transfer and PTY
/// streams still go to the sandbox's agent connection through a handle.
#[async_trait::async_trait]
pub trait Host: Send + Sync + std::fmt::Debug + 'static {
    /// The accelerator this host's VMs use (reported by `/health`), e.g.
    /// `kvm` or `tcg`.
    fn accel(&self) -> String;

    /// This host's CPUs and memory.
    fn capacity(&self) -> Capacity;

    /// Checks a spec against this host's bounds (memory, vCPUs) before
    /// anything is booted; the error says what to ask for instead.
    fn check_spec(&self, spec: &SandboxSpec) -> Result<(), HostError>;

    /// Memory (MiB) still available to new sandboxes.
    fn available_memory_mib(&self) -> u64;

    /// Builds an image if it is not built yet (the service does the default
    /// one at start, so the first create does not wait for it).
    async fn prepare_image(&self, name: &str) -> Result<(), HostError>;

    /// Creates a sandbox and registers it; returns its id.
    async fn create(&self, spec: SandboxSpec) -> Result<String, HostError>;

    /// Creates a sandbox from the snapshot template `name` (a clone) and
    /// registers it; returns its id.
    async fn clone_template(
        &self,
        name: &str,
        spec: &SandboxSpec,
    ) -> Result<(String, ResumeReport), HostError>;

    /// Kills a sandbox, or deletes it if it is paused. `Ok(false)`: it was
    /// neither live nor paused here.
    async fn kill(&self, id: &str) -> Result<bool, HostError>;

    /// Pauses a live sandbox to disk, merging the chain past `merge_cap`
    /// generations. `Ok(None)`: it is not live here (its VM exited).
    async fn pause(&self, id: &str, merge_cap: usize) -> Result<Option<PauseReport>, HostError>;

    /// Resumes a paused sandbox (`memory_mib` is what it needs) and
    /// registers it. A live one is left as it is.
    async fn resume(&self, id: &str, memory_mib: u32) -> Result<ResumeReport, HostError>;

    /// Whether a sandbox is live (registered) on this host.
    fn is_live(&self, id: &str) -> bool;

    /// Ids of the live sandboxes.
    fn live_ids(&self) -> Vec<String>;

    /// Number of live sandboxes.
    fn live_count(&self) -> usize;

    /// Whether a sandbox is paused on this host's disk.
    fn is_paused(&self, id: &str) -> bool;

    /// Sandboxes paused on this host's disk.
    fn paused_ids(&self) -> Vec<String>;

    /// Whether an operation holds the sandbox (the reconciler leaves it be).
    fn is_busy(&self, id: &str) -> bool;

    /// Where the disk of a lost sandbox was kept, if it was.
    fn kept_disk(&self, id: &str) -> Option<PathBuf>;

    /// The end (at most `max_bytes`) of a sandbox's console log: a live
    /// one's, a paused one's (kept in its directory) or a stopped one's
    /// (kept when it stopped). `None` when the host has none.
    fn console_log(&self, id: &str, max_bytes: u64) -> Option<String>;

    /// Subscribes to what happens to sandboxes without being asked.
    fn subscribe(&self) -> broadcast::Receiver<HostEvent>;

    /// Start-up recovery: takes over the VMs that outlived the previous
    /// warren and reports the rest. Runs before the API serves anything.
    async fn recover(&self) -> RecoverySummary;

    /// One reconciler pass over the host itself (orphaned processes,
    /// directories, stray files).
    async fn reconcile(&self) -> Vec<Fix>;

    /// Turns a paused sandbox into the snapshot template `name`.
    async fn create_template(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<TemplateMeta, HostError>;

    /// One snapshot template held by this host.
    fn template(&self, name: &str) -> Result<TemplateMeta, HostError>;

    /// Every snapshot template held by this host.
    fn templates(&self) -> Vec<TemplateMeta>;

    /// Deletes a snapshot template's files.
    fn delete_template(&self, name: &str) -> Result<(), HostError>;

    /// Lets every live sandbox run on after this process ends (shutdown with
    /// `keep`); the next start re-attaches them.
    fn detach_all(&self);

    /// Kills every live sandbox (service shutdown).
    async fn kill_all(&self);

    /// The data plane of a live sandbox: the handle exec, files and PTY
    /// streams go through. The one part of the interface that is not plain
    /// values yet (a networked host needs typed streams here); `None` when
    /// the sandbox is not live, and always `None` for a host without VMs.
    fn session(&self, id: &str) -> Option<std::sync::Arc<crate::session::Sandbox>>;
}

/// Why a host operation failed. The variants keep the host's own error as
/// the source (the chain says what failed); [`HostError::kind`] is what the
/// control plane decides on.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Not enough memory left on this host to create a sandbox.
    #[error(
        "this host has {available_mib} MiB left for sandboxes and the request needs {requested_mib} MiB; delete or pause sandboxes, or ask for less memory"
    )]
    OutOfMemory {
        /// What was asked for.
        requested_mib: u64,
        /// What is left.
        available_mib: u64,
    },
    /// Not enough memory left on this host to resume or clone a sandbox.
    #[error(
        "this host has {available_mib} MiB left for sandboxes and resuming needs {requested_mib} MiB; delete or pause sandboxes first"
    )]
    OutOfMemoryToResume {
        /// What is needed.
        requested_mib: u64,
        /// What is left.
        available_mib: u64,
    },
    /// The spec does not fit this host's bounds.
    #[error(transparent)]
    InvalidSpec(warren_sandbox::SpecError),
    /// Creating the sandbox failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// A snapshot or template operation failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotOpError),
    /// Pausing failed.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// Killing or deleting failed.
    #[error(transparent)]
    Destroy(#[from] DestroyError),
    /// A failure reported by a host that is not in this process (a host
    /// agent across the network, or a unit-test fake): what arrives over a
    /// wire is its kind and its message, already with its causes.
    #[error("{message}")]
    Remote {
        /// What kind of failure it is.
        kind: HostErrorKind,
        /// What failed and what to do, as the host said it.
        message: String,
    },
}

/// What kind of failure a [`HostError`] is: the part of it the control
/// plane acts on (status codes, records), serde-able so a remote host can
/// send it beside the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostErrorKind {
    /// Not enough memory on the host.
    OutOfMemory {
        /// What was asked for.
        requested_mib: u64,
        /// What is left.
        available_mib: u64,
    },
    /// The request is invalid (spec out of bounds, bad template name).
    Invalid {
        /// What is wrong, as the user reads it.
        reason: String,
    },
    /// The requested image does not exist.
    UnknownImage {
        /// The name asked for.
        name: String,
        /// The images there are.
        available: Vec<String>,
    },
    /// The sandbox is not paused on this host (no snapshot).
    NotPaused,
    /// No snapshot template of that name.
    NoTemplate,
    /// The template name is taken, or the template is in use.
    TemplateConflict,
    /// The host's disk is full.
    DiskFull,
    /// The sandbox cannot take the operation right now.
    Unavailable {
        /// Why.
        reason: UnavailableReason,
    },
    /// A pause failed because the VM ended during it (the exit watcher
    /// reports the result).
    VmEndedDuringPause,
    /// A pause failed. `released`: the VM is gone (`Some(previous_kept)`:
    /// whether the previous snapshot is kept); `None`: it runs on.
    PauseFailed {
        /// `None` if the sandbox keeps running; else whether it is paused
        /// at its previous snapshot (`true`) or lost (`false`).
        released: Option<bool>,
    },
    /// Anything else.
    Internal,
}

/// Why a sandbox cannot take an operation right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailableReason {
    /// It is paused or being paused.
    Paused,
    /// Its VM exited; it falls back to its snapshot or is stopped.
    VmExited,
    /// It was destroyed or its agent channel failed.
    Gone,
}

impl From<&Unavailable> for UnavailableReason {
    fn from(unavailable: &Unavailable) -> Self {
        match unavailable {
            Unavailable::Paused { .. } | Unavailable::Pausing { .. } => Self::Paused,
            Unavailable::VmExited { .. } => Self::VmExited,
            Unavailable::Destroyed { .. } | Unavailable::Channel { .. } => Self::Gone,
        }
    }
}

impl HostError {
    /// What kind of failure this is.
    pub fn kind(&self) -> HostErrorKind {
        match self {
            HostError::OutOfMemory {
                requested_mib,
                available_mib,
            }
            | HostError::OutOfMemoryToResume {
                requested_mib,
                available_mib,
            } => HostErrorKind::OutOfMemory {
                requested_mib: *requested_mib,
                available_mib: *available_mib,
            },
            HostError::InvalidSpec(reason) => HostErrorKind::Invalid {
                reason: reason.to_string(),
            },
            HostError::Create(error) => create_kind(error),
            HostError::Snapshot(error) => match error {
                SnapshotOpError::NotPaused(_) => HostErrorKind::NotPaused,
                SnapshotOpError::NoTemplate(_) => HostErrorKind::NoTemplate,
                SnapshotOpError::TemplateExists(_) | SnapshotOpError::TemplateInUse { .. } => {
                    HostErrorKind::TemplateConflict
                }
                SnapshotOpError::InvalidName(_) => HostErrorKind::Invalid {
                    reason: error.to_string(),
                },
                SnapshotOpError::Io { no_space: true, .. } => HostErrorKind::DiskFull,
                SnapshotOpError::Create(create) => create_kind(create),
                _ => HostErrorKind::Internal,
            },
            HostError::Pause(error) if error.no_space() => HostErrorKind::DiskFull,
            HostError::Pause(error) => match error {
                PauseError::Unavailable(unavailable) => HostErrorKind::Unavailable {
                    reason: unavailable.into(),
                },
                PauseError::VmEnded { .. } => HostErrorKind::VmEndedDuringPause,
                PauseError::StillRunning { .. } => HostErrorKind::PauseFailed { released: None },
                PauseError::Committed { previous_kept, .. } => HostErrorKind::PauseFailed {
                    released: Some(*previous_kept),
                },
            },
            HostError::Destroy(_) => HostErrorKind::Internal,
            HostError::Remote { kind, .. } => kind.clone(),
        }
    }

    /// For a failed pause: `None` if the sandbox keeps running (or its VM
    /// ended on its own, which the exit watcher reports); else whether it
    /// is paused at its previous snapshot (`true`) or lost (`false`).
    /// Unlike [`HostError::kind`], a full disk does not hide this.
    pub fn pause_released(&self) -> Option<bool> {
        match self {
            HostError::Pause(PauseError::Committed { previous_kept, .. }) => Some(*previous_kept),
            HostError::Remote {
                kind: HostErrorKind::PauseFailed { released },
                ..
            } => *released,
            _ => None,
        }
    }
}

fn create_kind(error: &CreateError) -> HostErrorKind {
    match error {
        CreateError::InvalidSpec(reason) => HostErrorKind::Invalid {
            reason: reason.to_string(),
        },
        CreateError::InvalidId(_) => HostErrorKind::Invalid {
            reason: error.to_string(),
        },
        CreateError::Image(warren_image::ImageError::UnknownImage { name, available }) => {
            HostErrorKind::UnknownImage {
                name: name.clone(),
                available: available.clone(),
            }
        }
        _ => HostErrorKind::Internal,
    }
}

/// Checks a snapshot template name (what [`Host::create_template`] would
/// refuse), so the control plane can answer before taking locks.
pub fn validate_template_name(name: &str) -> Result<(), HostError> {
    warren_sandbox::snapshot::validate_template_name(name).map_err(HostError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a remote host sends is the kind and the message; the control
    /// plane must decide the same on the far side as on the local error.
    #[test]
    fn an_error_kind_crosses_a_wire_and_decides_the_same() {
        let local = HostError::OutOfMemoryToResume {
            requested_mib: 512,
            available_mib: 100,
        };
        let wire = serde_json::to_string(&local.kind()).expect("serializes");
        assert_eq!(
            wire,
            r#"{"kind":"out_of_memory","requested_mib":512,"available_mib":100}"#
        );
        let remote = HostError::Remote {
            kind: serde_json::from_str(&wire).expect("deserializes"),
            message: local.to_string(),
        };
        assert_eq!(remote.kind(), local.kind());
        assert_eq!(remote.to_string(), local.to_string());
    }

    #[test]
    fn a_remote_pause_failure_says_whether_the_vm_was_released() {
        let released = |kind| HostError::Remote {
            kind,
            message: "pausing failed".into(),
        };
        let kept = released(HostErrorKind::PauseFailed {
            released: Some(true),
        });
        assert_eq!(kept.pause_released(), Some(true));
        let running = released(HostErrorKind::PauseFailed { released: None });
        assert_eq!(running.pause_released(), None);
        assert_eq!(released(HostErrorKind::DiskFull).pause_released(), None);
    }

    #[test]
    fn an_invalid_template_name_is_invalid_with_the_reason() {
        let error = validate_template_name("../x").expect_err("invalid");
        assert!(
            matches!(error.kind(), HostErrorKind::Invalid { reason } if reason == error.to_string())
        );
        validate_template_name("python-ready").expect("valid");
    }
}
