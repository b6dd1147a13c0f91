//! Resuming a paused sandbox (and restoring a clone): memory daemon, disk
//! layer, VM with incoming device state, agent, clock. Also what the
//! manager knows about the paused sandboxes of this host.

use std::path::Path;
use std::time::Instant;

use warren_vmm::disk::{create_overlay, qcow2_backing_file};

use crate::chain::{blocking, dir_allocated_bytes};
use crate::dir::SandboxDir;
use crate::error::{AgentProblem, CreateError, ExecError, SnapshotOpError};
use crate::manager::{Manager, SandboxMeta, connect_agent};
use crate::memfs::{MemFs, find_memfs_binary};
use crate::sandbox::Sandbox;

/// What a resume did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResumeReport {
    /// Time from the call to the agent answering.
    pub duration_ms: u64,
    /// Generations the memory is read from.
    pub chain_length: usize,
}

impl Manager {
    /// Resumes a paused sandbox: its memory is served lazily from the
    /// snapshot chain, a new disk layer goes on top of the frozen one, QEMU
    /// loads the device state, the guest runs on from where it stopped, and
    /// its clock is set. On error the snapshot is left as it was.
    pub async fn resume(&self, id: &str) -> Result<(Sandbox, ResumeReport), SnapshotOpError> {
        let started = Instant::now();
        let dir = self.sandboxes_dir().join(id);
        if !crate::id::is_valid_sandbox_id(id) || !SandboxDir::new(&dir).has_snapshot() {
            return Err(SnapshotOpError::NotPaused(id.to_string()));
        }
        let _busy = self.mark_busy(id);
        let meta =
            SandboxMeta::read(&dir).map_err(|detail| SnapshotOpError::corrupt(id, detail))?;
        let sandbox = self.restore(id, &dir, meta, false).await?;
        let chain_length = sandbox.chain_length;
        Ok((
            sandbox.sandbox,
            ResumeReport {
                duration_ms: started.elapsed().as_millis() as u64,
                chain_length,
            },
        ))
    }

    /// Sandboxes paused on this host (ids), from their directories.
    pub fn paused_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.sandboxes_dir()) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join(SandboxDir::HEADER).exists())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| crate::id::is_valid_sandbox_id(id))
            .collect();
        ids.sort();
        ids
    }

    /// Whether a sandbox is paused on this host.
    pub fn is_paused(&self, id: &str) -> bool {
        crate::id::is_valid_sandbox_id(id)
            && self
                .sandboxes_dir()
                .join(id)
                .join(SandboxDir::HEADER)
                .exists()
    }

    /// Disk used by a paused sandbox (allocated bytes of every file in its
    /// directory, never apparent sizes).
    pub fn paused_disk_usage(&self, id: &str) -> u64 {
        dir_allocated_bytes(&self.sandboxes_dir().join(id))
    }

    /// Deletes a paused sandbox (its snapshot and disk layers).
    pub fn remove_paused(&self, id: &str) -> Result<(), SnapshotOpError> {
        if !self.is_paused(id) {
            return Err(SnapshotOpError::NotPaused(id.to_string()));
        }
        let dir = self.sandboxes_dir().join(id);
        self.trash(&dir)
            .map_err(|e| SnapshotOpError::io(format!("removing {}", dir.display()), e))
    }

    pub(crate) async fn restore(
        &self,
        id: &str,
        dir: &Path,
        meta: SandboxMeta,
        new_identity: bool,
    ) -> Result<Restored, SnapshotOpError> {
        let started = std::time::Instant::now();
        let phase = |name: &str| tracing::debug!(%id, phase = name, ms = started.elapsed().as_secs_f64() * 1e3, "restore");
        let header = {
            let dir = dir.to_path_buf();
            blocking(move || warren_snapshot::read_header(&dir)).await
        }
        .map_err(|e| SnapshotOpError::corrupt(id, e))?;
        let chain_length = header.generations.len();
        let image = meta.image();
        let binary = find_memfs_binary()?;
        let generation = header.next_generation_id();
        let work = SandboxDir::new(dir).memory_work(generation);
        let mount = SandboxDir::new(dir).memfs_mount();
        let memory_bytes = header.memory_bytes;
        let die_with_parent = self.ephemeral();
        // The memory daemon and a fresh writable disk layer over the frozen
        // one, side by side. Unlink first: a leftover `disk.qcow2` may be a
        // second name of a frozen layer.
        let disk = SandboxDir::new(dir).disk();
        let _ = std::fs::remove_file(&disk);
        let frozen = header.resolve(dir, &header.disk);
        let start_memfs = {
            let (binary, mount, work, dir) = (
                binary.clone(),
                mount.clone(),
                work.clone(),
                dir.to_path_buf(),
            );
            blocking(move || {
                MemFs::start(
                    &binary,
                    &mount,
                    &work,
                    memory_bytes,
                    Some(&dir),
                    die_with_parent,
                )
            })
        };
        let overlay = async {
            if take_prepared_overlay(dir, &frozen, &disk) {
                Ok(())
            } else {
                create_overlay(&frozen, "qcow2", &disk)
                    .await
                    .map_err(CreateError::from)
            }
        };
        // The snapshot has a network card exactly when its spec has a
        // network; the card gets a new namespace (slot) of its own, made
        // beside the memory daemon and the disk layer.
        let network = self.attach_network(id, &meta.spec);
        let (memfs, overlay, network) = tokio::join!(start_memfs, overlay, network);
        let memfs = memfs?;
        phase("memory daemon, disk layer and network ready");
        if let Err(error) = overlay {
            return Err(error.into());
        }
        let network = match network {
            Ok(network) => network,
            Err(error) => {
                let _ = std::fs::remove_file(&disk);
                return Err(error.into());
            }
        };
        let mut config = self.vm_config(id, dir, &meta.spec, &image, &disk);
        config.memory_file = Some(memfs.memory_file());
        config.incoming = true;
        // The guest is restored, not booted: QEMU need not hold the kernel.
        config.kernel = match self.vmm().restore_kernel(&config.kernel, dir) {
            Ok(stub) => stub,
            Err(error) => {
                let _ = std::fs::remove_file(&disk);
                return Err(CreateError::Io {
                    path: config.kernel.clone(),
                    source: error,
                }
                .into());
            }
        };
        let network = network.map(|(network, nic)| {
            config.nic = Some(nic);
            network
        });
        let vm = match self.vmm().launch(config).await {
            Ok(vm) => vm,
            Err(error) => {
                let _ = std::fs::remove_file(&disk);
                return Err(CreateError::from(error).into());
            }
        };
        phase("QEMU launched");
        let state = header.resolve(dir, &header.device_state);
        let restored = async {
            vm.restore_device_state(&state, self.boot_timeout())
                .await
                .map_err(|e| CreateError::Agent {
                    id: id.to_string(),
                    source: Box::new(AgentProblem::Restore(e)),
                })?;
            phase("device state restored, vCPUs running");
            connect_agent(id, vm.as_ref(), self.boot_timeout()).await
        }
        .await;
        let agent = match restored {
            Ok(agent) => agent,
            Err(error) => {
                let _ = vm.kill().await;
                drop(vm);
                let _ = std::fs::remove_file(&disk);
                return Err(error.into());
            }
        };
        let sandbox = Sandbox::from_meta(id, dir, &meta, vm, agent);
        sandbox.set_memfs(memfs);
        sandbox.set_network(network);
        phase("agent connected");
        // The guest must not see the snapshot's time, nor (for a clone) the
        // template's identity. The agent in guest memory is the one that
        // answered before the pause: nothing else needs setting up.
        if let Err(error) = set_clock_and_identity(&sandbox, id, new_identity).await {
            // Keep the snapshot: only this attempt's files go.
            sandbox.abandon_resume().await;
            return Err(error.into());
        }
        phase("done");
        // The snapshot stays the fallback until the next pause commits a
        // newer one; the running sandbox is not "paused" any more.
        Ok(Restored {
            sandbox,
            chain_length,
        })
    }
}

/// A restored sandbox and the length of the chain it reads memory from.
pub(crate) struct Restored {
    pub(crate) sandbox: Sandbox,
    pub(crate) chain_length: usize,
}

/// Moves the layer a pause prepared into place as `disk`, if there is one
/// over `frozen`; a layer over anything else (an older snapshot's) goes.
fn take_prepared_overlay(dir: &Path, frozen: &Path, disk: &Path) -> bool {
    let prepared = SandboxDir::new(dir).resume_disk();
    if !prepared.exists() {
        return false;
    }
    let fits = qcow2_backing_file(&prepared).is_some_and(|backing| backing == frozen);
    if fits && std::fs::rename(&prepared, disk).is_ok() {
        return true;
    }
    let _ = std::fs::remove_file(&prepared);
    false
}

/// Sets a restored guest's clock (unless the link handshake did) and, for
/// a clone, its identity (host name, reseeded random generator): one call
/// to a current agent, a shell command for an agent from an older image.
async fn set_clock_and_identity(
    sandbox: &Sandbox,
    id: &str,
    new_identity: bool,
) -> Result<(), CreateError> {
    let failed = |what: &'static str, source: ExecError| CreateError::Agent {
        id: id.to_string(),
        source: Box::new(AgentProblem::Call { what, source }),
    };
    sandbox
        .ensure_clock()
        .await
        .map_err(|e| failed("setting the guest clock", e))?;
    if new_identity
        && !sandbox
            .set_identity(id)
            .await
            .map_err(|e| failed("giving the clone its identity", e))?
    {
        let set = crate::exec::Command::shell(format!(
            "hostname {id} 2>/dev/null || echo {id} > /proc/sys/kernel/hostname; head -c 64 /dev/urandom > /dev/null"
        ));
        if let Err(error) = sandbox.run(set).await {
            tracing::warn!(%id, %error, "setting the clone's hostname failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use warren_vmm::disk::create_overlay_durably;

    use super::*;

    #[tokio::test]
    async fn a_resume_takes_the_prepared_layer_only_over_its_own_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let frozen = |name: &str| {
            let path = dir.join(name);
            warren_vmm::disk::create_empty(&path, 1 << 20).unwrap();
            path
        };
        let (older, newer) = (frozen("disk.g1.qcow2"), frozen("disk.g2.qcow2"));
        let disk = SandboxDir::new(dir).disk();

        // A layer prepared over an older snapshot is dropped, not used.
        create_overlay_durably(&older, "qcow2", &SandboxDir::new(dir).resume_disk())
            .await
            .unwrap();
        assert!(!take_prepared_overlay(dir, &newer, &disk));
        assert!(!SandboxDir::new(dir).resume_disk().exists() && !disk.exists());

        create_overlay_durably(&newer, "qcow2", &SandboxDir::new(dir).resume_disk())
            .await
            .unwrap();
        assert!(take_prepared_overlay(dir, &newer, &disk));
        assert_eq!(qcow2_backing_file(&disk), Some(newer));
        assert!(!SandboxDir::new(dir).resume_disk().exists());
        assert!(!take_prepared_overlay(dir, &older, &disk), "used once");
    }
}
