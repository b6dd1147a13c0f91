//! Taking over a VM (and memory daemon) that a previous warren left
//! running.

use std::path::Path;
use std::time::Duration;

use warren_snapshot::SnapshotHeader;

use crate::dir::SandboxDir;
use crate::error::{CreateError, ExecError};
use crate::manager::{Manager, SandboxMeta, connect_agent};
use crate::memfs::MemFs;
use crate::sandbox::Sandbox;

/// How long an attached VM's agent may take to answer after a restart.
const REATTACH_AGENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a VM from before a restart cannot be taken over (it is then ended).
#[derive(Debug, thiserror::Error)]
pub(super) enum ReattachError {
    /// A resumed VM's RAM is served by a daemon that no longer runs.
    #[error("its memory daemon is gone, so its RAM is unreachable")]
    MemoryDaemonGone,
    /// The backend could not take charge of the process.
    #[error("taking charge of its VM process failed")]
    Attach(#[source] warren_vmm::LaunchError),
    /// Its run state could not be read, or it could not be continued.
    #[error("its VM does not answer as it should")]
    Control(#[source] warren_vmm::SnapshotError),
    /// It was caught in the middle of a resume.
    #[error("its VM is in state {0:?} (an interrupted resume)")]
    InterruptedResume(String),
    /// Its agent did not answer.
    #[error("its guest agent did not answer")]
    Agent(#[source] CreateError),
    /// Its agent did not say what it is.
    #[error("its guest agent did not describe itself")]
    Info(#[source] ExecError),
    /// Its agent speaks another protocol.
    #[error("its guest agent speaks protocol {guest} and this warren {host}")]
    Protocol {
        /// The guest's protocol version.
        guest: u32,
        /// This warren's.
        host: u32,
    },
}

/// What to do with a VM found in QEMU run state `state` after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FoundVm {
    /// It runs: take it over as it is.
    Running,
    /// A pause or snapshot was cut off after stopping the vCPUs but before
    /// releasing the VM: nothing was committed, so it runs on (`cont`).
    StoppedByPause,
    /// A resume never finished (`inmigrate`, `prelaunch`, ...): end it.
    InterruptedResume,
}

impl FoundVm {
    /// The decision for run state `state`.
    pub(super) fn from_run_state(state: &str) -> Self {
        match state {
            "running" => Self::Running,
            "paused" | "postmigrate" | "finish-migrate" => Self::StoppedByPause,
            _ => Self::InterruptedResume,
        }
    }
}

impl Manager {
    /// Takes over the VM (and memory daemon) a previous warren left running.
    pub(super) async fn reattach(
        &self,
        id: &str,
        dir: &Path,
        meta: &SandboxMeta,
        header: Option<&SnapshotHeader>,
    ) -> Result<Sandbox, ReattachError> {
        let sandbox_dir = SandboxDir::new(dir);
        let image = meta.image();
        let disk = sandbox_dir.disk();
        let mut config = self.vm_config(id, dir, &meta.spec, &image, &disk);
        let memfs = match header {
            Some(header) => {
                let work = sandbox_dir.memory_work(header.next_generation_id());
                let memfs = MemFs::adopt(&sandbox_dir.memfs_mount(), &work)
                    .ok_or(ReattachError::MemoryDaemonGone)?;
                config.memory_file = Some(memfs.memory_file());
                Some(memfs)
            }
            None => None,
        };
        let vm = self
            .vmm()
            .attach(config)
            .await
            .map_err(ReattachError::Attach)?;
        let state = vm.run_state().await.map_err(ReattachError::Control)?;
        match FoundVm::from_run_state(&state) {
            FoundVm::Running => {}
            FoundVm::StoppedByPause => {
                vm.cont().await.map_err(ReattachError::Control)?;
                tracing::info!(%id, %state, "continued a VM stopped by an interrupted pause");
            }
            FoundVm::InterruptedResume => return Err(ReattachError::InterruptedResume(state)),
        }
        let agent = connect_agent(id, vm.as_ref(), REATTACH_AGENT_TIMEOUT)
            .await
            .map_err(ReattachError::Agent)?;
        let sandbox = Sandbox::from_meta(id, dir, meta, vm, agent);
        if let Some(memfs) = memfs {
            sandbox.set_memfs(memfs);
        }
        if let Some(policy) = &meta.spec.network {
            // Its namespace outlived the old warren; the resolver and proxy
            // did not, and are served again from this process.
            match self.networking().readopt(id, policy) {
                Ok(Some(network)) => sandbox.set_network(Some(network)),
                Ok(None) => {
                    tracing::warn!(%id, "the sandbox's network namespace is gone; it runs without a network")
                }
                Err(error) => {
                    tracing::warn!(%id, "re-adopting the sandbox's network failed: {}", crate::error::with_causes(&error))
                }
            }
        }
        let info = sandbox.info().await.map_err(ReattachError::Info)?;
        if info.protocol_version != warren_proto::PROTOCOL_VERSION {
            // Dropping the handle would end it; it is unusable anyway.
            return Err(ReattachError::Protocol {
                guest: info.protocol_version,
                host: warren_proto::PROTOCOL_VERSION,
            });
        }
        Ok(sandbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_found_after_a_restart_runs_on_unless_a_resume_was_cut_off() {
        assert_eq!(FoundVm::from_run_state("running"), FoundVm::Running);
        for stopped in ["paused", "postmigrate", "finish-migrate"] {
            assert_eq!(FoundVm::from_run_state(stopped), FoundVm::StoppedByPause);
        }
        for resuming in ["inmigrate", "prelaunch", "internal-error"] {
            assert_eq!(
                FoundVm::from_run_state(resuming),
                FoundVm::InterruptedResume
            );
        }
    }
}
