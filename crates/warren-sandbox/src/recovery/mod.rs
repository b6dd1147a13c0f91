//! Coming back after a restart, and keeping disk and processes honest.
//!
//! Durable sandboxes (the ones `warren up` runs) outlive the warren process:
//! QEMU and the memory daemon run in their own process groups with their
//! sockets and pid files in the sandbox directory. [`Manager::recover`]
//! looks at every directory once at start-up, before anything is served:
//! running VMs are re-attached, paused sandboxes re-registered, VMs that
//! died meanwhile fall back to their last snapshot (or are reported lost),
//! and directories that cannot be understood are moved to
//! `quarantine/` (logged, never deleted). [`Manager::reconcile`] then runs
//! periodically and ends what nothing owns any more: VM and memory-daemon
//! processes, directories of sandboxes that are neither live nor paused,
//! stray runtime files of paused sandboxes, half-built templates.
//!
//! Everything here works from what is on disk and in `/proc`, never from
//! memory of a previous process, so it is as right after a `kill -9` as
//! after a clean stop.
//!
//! The decisions are split by what they look at: `classify` reads a
//! directory and holds the corrections both passes make, `reattach`
//! takes over a VM that outlived its warren, `reconcile` ends what
//! nothing owns; this module runs start-up recovery over them.

mod classify;
mod reattach;
mod reconcile;

use std::path::PathBuf;

use classify::DirState;
pub use classify::Fix;

use crate::dir::{DataDir, SandboxDir};
use crate::manager::Manager;
use crate::sandbox::Sandbox;

/// What start-up recovery found and did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Running VMs taken over from the previous process.
    pub attached: Vec<Sandbox>,
    /// Sandboxes paused on disk (including ones whose VM died while warren
    /// was down and that fell back to their last snapshot).
    pub paused: Vec<String>,
    /// Sandboxes whose VM died while warren was down and that had no
    /// snapshot to fall back to: gone (their console log is kept).
    pub lost: Vec<String>,
    /// Directories moved aside, with the reason.
    pub quarantined: Vec<Fix>,
    /// Leftovers of interrupted operations removed (trash, staging dirs).
    pub swept: usize,
}

impl Manager {
    /// Brings this host back after a restart; see the module docs. Never
    /// fails: whatever cannot be understood is quarantined and logged.
    pub async fn recover(&self) -> Recovery {
        let mut recovery = Recovery {
            swept: DataDir::new(self.data_dir()).sweep_trash(),
            ..Recovery::default()
        };
        recovery.swept += self.sweep_template_leftovers().len();
        let Ok(entries) = std::fs::read_dir(self.sandboxes_dir()) else {
            return recovery;
        };
        let mut dirs: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        dirs.sort();
        for (name, dir) in dirs {
            let (meta, header) = match self.read_dir_state(&name, &dir) {
                DirState::Foreign => continue,
                DirState::Corrupt(reason) => {
                    // A VM may still run from it: it cannot be managed.
                    if let Some(pid) = self.vmm().running_pid(&dir, &name) {
                        self.vmm().kill_process(pid);
                    }
                    self.clear_runtime_files(&dir);
                    recovery
                        .quarantined
                        .push(self.quarantine(&name, &dir, &reason));
                    continue;
                }
                DirState::Ours { meta, header } => (meta, header),
            };
            let header = match header {
                Ok(header) => header,
                Err(error) => {
                    if let Some(pid) = self.vmm().running_pid(&dir, &name) {
                        self.vmm().kill_process(pid);
                    }
                    self.clear_runtime_files(&dir);
                    let reason = format!(
                        "its snapshot header is unreadable: {}",
                        crate::error::with_causes(&error)
                    );
                    recovery
                        .quarantined
                        .push(self.quarantine(&name, &dir, &reason));
                    continue;
                }
            };
            let mut header = header;
            if SandboxDir::new(&dir).pending_pause().exists() {
                // A pause was cut off after its device state and RAM were
                // durable: finish it (the VM, if it still runs, is stopped
                // and its state already saved).
                if let Some(pid) = self.vmm().running_pid(&dir, &name) {
                    self.vmm().kill_process(pid);
                }
                let (dir2, meta2, previous) = (dir.clone(), (*meta).clone(), header.clone());
                let finished = tokio::task::spawn_blocking(move || {
                    crate::commit::finish_interrupted_pause(&dir2, &meta2, previous)
                })
                .await
                .unwrap_or_else(|e| {
                    Err(crate::error::StepError::new(
                        "finishing the pause",
                        crate::error::StepCause::Panicked(e),
                    ))
                });
                match finished {
                    Ok(committed) => {
                        tracing::info!(id = %name, "completed a pause that the restart cut off");
                        header = Some(committed);
                    }
                    Err(error) => {
                        let error = crate::error::with_causes(&error);
                        tracing::warn!(id = %name, %error, "a pause cut off by the restart cannot be completed; the sandbox keeps its previous snapshot, if any");
                    }
                }
            }
            if self.vmm().running_pid(&dir, &name).is_some() {
                match self.reattach(&name, &dir, &meta, header.as_ref()).await {
                    Ok(sandbox) => {
                        tracing::info!(id = %name, "re-attached a running sandbox");
                        recovery.attached.push(sandbox);
                        continue;
                    }
                    Err(error) => {
                        let error = crate::error::with_causes(&error);
                        tracing::warn!(id = %name, %error, "a VM from before the restart cannot be taken over; ending it");
                        if let Some(pid) = self.vmm().running_pid(&dir, &name) {
                            self.vmm().kill_process(pid);
                        }
                    }
                }
            }
            // No usable VM.
            self.clear_runtime_files(&dir);
            match header {
                Some(header) => {
                    // It falls back to its last snapshot; the writable layer
                    // of the lost run goes (resume makes a fresh one).
                    crate::chain::tidy_paused_dir(&dir, &header);
                    recovery.paused.push(name);
                }
                None => {
                    tracing::warn!(id = %name, "sandbox VM died while warren was down and it has no snapshot; it is lost");
                    self.keep_console_log(&name, &dir);
                    self.keep_lost_disk(&name, &dir, &meta.spec);
                    if let Err(error) = self.trash(&dir) {
                        tracing::warn!(id = %name, %error, "removing the lost sandbox's directory failed");
                    }
                    recovery.lost.push(name);
                }
            }
        }
        recovery
    }
}

#[cfg(test)]
mod tests {
    //! Recovery's and the reconciler's decisions, against the fake backend
    //! ([`crate::fake_vmm`]): no VM runs, so a VM "found" in a directory
    //! can never be re-attached, which is the case these decisions are for.

    use std::sync::Arc;

    use warren_snapshot::{BlockMap, Generation};

    use super::*;
    use crate::fake_vmm::FakeVmm;
    use crate::manager::SandboxMeta;
    use std::path::Path;
    use warren_snapshot::SnapshotHeader;

    const ID: &str = "sb-test2";

    fn setup() -> (tempfile::TempDir, Arc<FakeVmm>, Manager) {
        let home = tempfile::tempdir().unwrap();
        let vmm = Arc::new(FakeVmm::default());
        let manager = Manager::with_vmm(home.path(), vmm.clone());
        (home, vmm, manager)
    }

    /// A durable sandbox's directory with its metadata (of an owner that
    /// is `owner_pid`) and the files a running VM leaves.
    fn sandbox_dir(manager: &Manager, id: &str, ephemeral: bool, owner_pid: u32) -> PathBuf {
        let dir = manager.sandboxes_dir().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SandboxMeta::for_test(id, ephemeral, owner_pid);
        std::fs::write(
            dir.join(SandboxDir::META),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(warren_vmm::config::files::PID), "4242\n").unwrap();
        std::fs::write(dir.join(warren_vmm::config::files::AGENT_SOCKET), "").unwrap();
        std::fs::write(dir.join(warren_vmm::config::files::CONSOLE_LOG), "booted\n").unwrap();
        std::fs::write(dir.join(SandboxDir::DISK), "layer of the run").unwrap();
        dir
    }

    /// Gives `dir` a committed snapshot (one all-zero generation).
    fn snapshot(dir: &Path) {
        let memory_bytes = 4 << 20;
        let header = SnapshotHeader {
            memory_bytes,
            generations: vec![Generation::sparse(0, "mem.0")],
            map: BlockMap::new_zero(memory_bytes / warren_snapshot::BLOCK_SIZE),
            device_state: "state.0".into(),
            disk: "disk.g0.qcow2".into(),
            created_unix_ms: 0,
            meta: serde_json::json!({}),
        };
        std::fs::write(dir.join("mem.0"), "").unwrap();
        std::fs::write(dir.join("state.0"), "device state").unwrap();
        std::fs::write(dir.join("disk.g0.qcow2"), "frozen layer").unwrap();
        warren_snapshot::write_header_atomic(dir, &header).unwrap();
    }

    #[tokio::test]
    async fn a_directory_without_metadata_is_quarantined_and_its_vm_ended() {
        let (home, vmm, manager) = setup();
        let dir = manager.sandboxes_dir().join(ID);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(warren_vmm::config::files::PID), "4242\n").unwrap();
        vmm.run(&dir, ID, 4242);

        let recovery = manager.recover().await;

        assert_eq!(vmm.killed(), vec![4242], "a VM nobody can manage is ended");
        assert_eq!(recovery.quarantined.len(), 1, "{recovery:?}");
        assert_eq!(recovery.quarantined[0].kind, "quarantined");
        assert!(!dir.exists());
        let kept: Vec<_> = std::fs::read_dir(home.path().join(DataDir::QUARANTINE))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(kept.len(), 1, "moved aside, never deleted");
        assert!(!kept[0].path().join(warren_vmm::config::files::PID).exists());
    }

    #[tokio::test]
    async fn a_vm_that_cannot_be_taken_over_is_ended_and_falls_back_to_its_snapshot() {
        let (_home, vmm, manager) = setup();
        let dir = sandbox_dir(&manager, ID, false, std::process::id());
        snapshot(&dir);
        vmm.run(&dir, ID, 4242);

        let recovery = manager.recover().await;

        assert_eq!(vmm.killed(), vec![4242]);
        assert!(recovery.attached.is_empty());
        assert_eq!(recovery.paused, vec![ID.to_string()], "{recovery:?}");
        assert!(recovery.lost.is_empty());
        for gone in [
            warren_vmm::config::files::PID,
            warren_vmm::config::files::AGENT_SOCKET,
            SandboxDir::DISK,
        ] {
            assert!(
                !dir.join(gone).exists(),
                "{gone} of the lost run is removed"
            );
        }
        for kept in [
            SandboxDir::HEADER,
            "mem.0",
            "state.0",
            "disk.g0.qcow2",
            SandboxDir::META,
        ] {
            assert!(dir.join(kept).exists(), "{kept} of the snapshot is kept");
        }
    }

    #[tokio::test]
    async fn a_sandbox_whose_vm_died_without_a_snapshot_is_lost_with_its_console_log_kept() {
        let (home, vmm, manager) = setup();
        let dir = sandbox_dir(&manager, ID, false, std::process::id());

        let recovery = manager.recover().await;

        assert!(vmm.killed().is_empty(), "nothing ran");
        assert_eq!(recovery.lost, vec![ID.to_string()], "{recovery:?}");
        assert!(recovery.paused.is_empty());
        assert!(!dir.exists());
        let log = home.path().join("logs").join(format!("{ID}.log"));
        assert_eq!(std::fs::read_to_string(log).unwrap(), "booted");
    }

    #[tokio::test]
    async fn an_ephemeral_sandbox_of_another_live_process_is_left_alone() {
        let (_home, vmm, manager) = setup();
        // Pid 1 runs and is not this process.
        let dir = sandbox_dir(&manager, ID, true, 1);
        vmm.run(&dir, ID, 4242);

        let recovery = manager.recover().await;
        let fixes = manager.reconcile(&|_| false);

        assert!(vmm.killed().is_empty(), "{fixes:?}");
        assert!(fixes.is_empty(), "{fixes:?}");
        assert!(recovery.lost.is_empty() && recovery.paused.is_empty());
        assert!(recovery.quarantined.is_empty());
        assert!(dir.join(SandboxDir::DISK).exists());
    }

    #[tokio::test]
    async fn the_reconciler_ends_only_the_vms_that_nothing_owns() {
        let (_home, vmm, manager) = setup();
        let orphan = "sb-orphan";
        let live = "sb-live";
        let busy = "sb-busy";
        for id in [orphan, live, busy] {
            let dir = sandbox_dir(&manager, id, false, std::process::id());
            snapshot(&dir);
        }
        vmm.run(&manager.sandboxes_dir().join(orphan), orphan, 101);
        vmm.run(&manager.sandboxes_dir().join(live), live, 102);
        vmm.run(&manager.sandboxes_dir().join(busy), busy, 103);
        // A VM of another data directory on the same host.
        vmm.run(Path::new("/elsewhere/sandboxes/sb-other"), "sb-other", 104);

        let _working = manager.mark_busy(busy);
        let fixes = manager.reconcile(&|id| id == live);

        assert_eq!(vmm.killed(), vec![101], "{fixes:?}");
        let ended: Vec<_> = fixes.iter().filter(|f| f.kind == "orphan_vm").collect();
        assert_eq!(ended.len(), 1, "{fixes:?}");
        assert_eq!(ended[0].id, orphan);
        // The orphan is paused on disk: only its runtime files went.
        let dir = manager.sandboxes_dir().join(orphan);
        assert!(dir.join(SandboxDir::HEADER).exists());
        assert!(!dir.join(warren_vmm::config::files::PID).exists());
        assert!(
            manager
                .sandboxes_dir()
                .join(live)
                .join(warren_vmm::config::files::PID)
                .exists()
        );
    }
}
