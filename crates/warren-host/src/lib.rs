//! The host agent: which sandboxes run on this host.
//!
//! The control plane (`warren-server`) decides *what* should exist
//! (tenancy, persistence, timeouts); the host agent owns *what does*
//! exist here: the live [`Sandbox`] handles, their exits, and the host's
//! capacity. In `warren up` both run in one process and talk through this
//! Rust API; a multi-host deployment puts a network service in between
//! without changing either side's logic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast;
pub use warren_sandbox::recovery::Fix;
use warren_sandbox::{
    CreateError, DestroyError, Manager, PauseError, PauseOptions, PauseReport, Progress,
    ResumeReport, Sandbox, SandboxSpec, SnapshotOpError,
};
use warren_vmm::VmExit;

/// Something that happened to a sandbox on this host without being asked.
#[derive(Debug, Clone)]
pub enum HostEvent {
    /// The VM ended on its own (crash, power-off, killed from outside).
    VmExited {
        /// Sandbox id.
        id: String,
        /// How it ended.
        exit: VmExit,
        /// It had a snapshot and is now paused at it (what ran since its
        /// last resume is lost) rather than gone.
        reverted: bool,
        /// Where its disk was kept (it asked to, and is gone).
        kept_disk: Option<PathBuf>,
    },
}

/// What start-up recovery did on this host.
#[derive(Debug, Clone, Default)]
pub struct RecoverySummary {
    /// Sandboxes whose running VM was taken over.
    pub attached: Vec<String>,
    /// Sandboxes paused on disk.
    pub paused: Vec<String>,
    /// Sandboxes whose VM died while warren was down, with no snapshot.
    pub lost: Vec<String>,
    /// Directories moved to quarantine, and why.
    pub quarantined: Vec<Fix>,
    /// Leftovers of interrupted operations removed.
    pub swept: usize,
}

/// Why the host refused to create a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum HostCreateError {
    /// Not enough memory left on this host for the request.
    #[error(
        "this host has {available_mib} MiB left for sandboxes and the request needs {requested_mib} MiB; delete or pause sandboxes, or ask for less memory"
    )]
    OutOfMemory {
        /// What was asked for.
        requested_mib: u64,
        /// What is left.
        available_mib: u64,
    },
    /// Creating failed.
    #[error(transparent)]
    Create(#[from] CreateError),
}

/// Why the host could not resume or clone a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum HostResumeError {
    /// Not enough memory left on this host.
    #[error(
        "this host has {available_mib} MiB left for sandboxes and resuming needs {requested_mib} MiB; delete or pause sandboxes first"
    )]
    OutOfMemory {
        /// What is needed.
        requested_mib: u64,
        /// What is left.
        available_mib: u64,
    },
    /// The snapshot operation failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotOpError),
}

/// The sandboxes live on this host.
pub struct HostAgent {
    manager: Manager,
    live: RwLock<HashMap<String, Arc<Sandbox>>>,
    events: broadcast::Sender<HostEvent>,
    /// Host memory (MiB) kept out of reach of sandboxes, for the host itself.
    reserve_mib: u64,
    /// Console logs of sandboxes that are gone.
    logs_dir: PathBuf,
}

/// Console log kept per stopped sandbox.
const KEPT_LOG_BYTES: u64 = 1 << 20;
/// How long console logs of stopped sandboxes are kept.
const KEPT_LOG_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl std::fmt::Debug for HostAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAgent")
            .field("live", &self.live.read().map(|l| l.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl HostAgent {
    /// A host agent over a sandbox manager.
    pub fn new(manager: Manager) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        let logs_dir = manager.data_dir().join("logs");
        prune_old_logs(&logs_dir);
        Arc::new(Self {
            manager,
            live: RwLock::new(HashMap::new()),
            events,
            reserve_mib: 512,
            logs_dir,
        })
    }

    /// The end of a stopped sandbox's console log, if it was kept.
    pub fn kept_console_log(&self, id: &str, max_bytes: u64) -> Option<String> {
        if !warren_sandbox::id::is_valid_sandbox_id(id) {
            return None;
        }
        let path = self.logs_dir.join(format!("{id}.log"));
        path.exists()
            .then(|| warren_vmm::process::tail_of(&path, max_bytes))
    }

    fn keep_log(&self, sandbox: &Sandbox) {
        if let Err(error) = sandbox.preserve_console_log(&self.logs_dir, KEPT_LOG_BYTES) {
            tracing::warn!(id = %sandbox.id(), %error, "could not keep the console log");
        }
    }

    /// Subscribes to unrequested sandbox events.
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }

    /// Memory (MiB) promised to live sandboxes.
    pub fn committed_memory_mib(&self) -> u64 {
        self.live
            .read()
            .expect("registry lock")
            .values()
            .map(|s| u64::from(s.spec().memory_mib))
            .sum()
    }

    /// Memory (MiB) still available to new sandboxes: the smaller of what
    /// the host reports free and its total minus what live sandboxes were
    /// promised (guest RAM is allocated lazily, so both matter).
    pub fn available_memory_mib(&self) -> u64 {
        let host = warren_vmm::host::HostCapacity::probe();
        let by_promise = host
            .memory_total_mib
            .saturating_sub(self.reserve_mib)
            .saturating_sub(self.committed_memory_mib());
        by_promise.min(
            host.memory_available_mib
                .saturating_sub(self.reserve_mib / 2),
        )
    }

    /// Creates a sandbox and registers it.
    pub async fn create(
        self: &Arc<Self>,
        spec: SandboxSpec,
        progress: Arc<dyn Progress>,
    ) -> Result<Arc<Sandbox>, HostCreateError> {
        let requested = u64::from(spec.memory_mib);
        let available = self.available_memory_mib();
        if requested > available {
            return Err(HostCreateError::OutOfMemory {
                requested_mib: requested,
                available_mib: available,
            });
        }
        // The id stays busy until the sandbox is registered, so the
        // reconciler never mistakes it for an orphan in between.
        let id = warren_sandbox::id::new_sandbox_id();
        let _busy = self.manager.mark_busy(&id);
        let sandbox = self.manager.create_with_id(id, spec, progress).await?;
        Ok(self.register(sandbox))
    }

    fn watch_exit(self: &Arc<Self>, id: String, sandbox: Weak<Sandbox>) {
        let Some(strong) = sandbox.upgrade() else {
            return;
        };
        let mut exit = strong.vm_exit_watch();
        drop(strong);
        let host = Arc::downgrade(self);
        tokio::spawn(async move {
            let Ok(exit) = exit.wait_for(Option::is_some).await.map(|e| e.clone()) else {
                return;
            };
            let Some(exit) = exit else { return };
            let Some(host) = host.upgrade() else { return };
            // Busy until the records are told, so the reconciler does not
            // judge the sandbox halfway.
            let _busy = host.manager.mark_busy(&id);
            // Still registered means nobody asked for this exit.
            let removed = host.live.write().expect("registry lock").remove(&id);
            if let Some(sandbox) = &removed {
                host.keep_log(sandbox);
            }
            if let Some(sandbox) = removed
                && !exit.requested
            {
                tracing::warn!(%id, %exit, "sandbox VM exited unexpectedly");
                let reverted = sandbox.fall_back_to_snapshot().await;
                let kept_disk = if reverted {
                    None
                } else {
                    host.manager
                        .keep_lost_disk(&id, sandbox.dir(), sandbox.spec())
                };
                let _ = host.events.send(HostEvent::VmExited {
                    id,
                    exit,
                    reverted,
                    kept_disk,
                });
            }
        });
    }

    /// The live sandbox with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.live.read().expect("registry lock").get(id).cloned()
    }

    /// Ids of the live sandboxes.
    pub fn ids(&self) -> Vec<String> {
        self.live
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Number of live sandboxes.
    pub fn len(&self) -> usize {
        self.live.read().expect("registry lock").len()
    }

    /// Whether no sandbox is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kills a sandbox, or deletes it if it is paused. Returns false if it
    /// was neither live nor paused here.
    pub async fn kill(&self, id: &str) -> Result<bool, DestroyError> {
        let removed = self.live.write().expect("registry lock").remove(id);
        match removed {
            Some(sandbox) => {
                let killed = sandbox.kill().await;
                self.keep_log(&sandbox);
                killed?;
                Ok(true)
            }
            None if self.manager.is_paused(id) => match self.manager.remove_paused(id) {
                Ok(()) => Ok(true),
                Err(error) => Err(DestroyError::Cleanup {
                    path: self.manager.sandboxes_dir().join(id),
                    source: std::io::Error::other(error.to_string()),
                }),
            },
            None => Ok(false),
        }
    }

    /// Pauses a live sandbox to disk. Success, or a failure after the VM
    /// was released (paused at the previous snapshot, or lost), unregisters
    /// it; a failure that leaves it running keeps it registered, and one
    /// where the VM died on its own is left to the exit watcher.
    pub async fn pause(
        &self,
        id: &str,
        options: &PauseOptions,
    ) -> Result<Option<PauseReport>, PauseError> {
        let Some(sandbox) = self.get(id) else {
            return Ok(None);
        };
        // The VM ends midway (the exit watcher then unregisters it) while
        // the snapshot is still being committed: busy keeps the reconciler
        // from taking the directory for an orphan.
        let _busy = self.manager.mark_busy(id);
        let result = sandbox.pause(options).await;
        // A VM that ended by itself midway is left to the exit watcher,
        // which falls back to the last snapshot and reports the exit.
        let unregister = match &result {
            Ok(_) => true,
            Err(error) => matches!(error, PauseError::Committed { .. }),
        };
        if unregister {
            self.live.write().expect("registry lock").remove(id);
        }
        result.map(Some)
    }

    /// The console log of a paused sandbox (kept in its directory).
    pub fn paused_console_log(&self, id: &str, max_bytes: u64) -> Option<String> {
        self.manager.is_paused(id).then(|| {
            warren_vmm::process::tail_of(
                &self
                    .manager
                    .sandboxes_dir()
                    .join(id)
                    .join(warren_vmm::config::files::CONSOLE_LOG),
                max_bytes,
            )
        })
    }

    /// Whether a sandbox is paused on this host.
    pub fn is_paused(&self, id: &str) -> bool {
        self.manager.is_paused(id)
    }

    fn check_memory(&self, memory_mib: u32) -> Result<(), HostResumeError> {
        let requested = u64::from(memory_mib);
        let available = self.available_memory_mib();
        if requested > available {
            return Err(HostResumeError::OutOfMemory {
                requested_mib: requested,
                available_mib: available,
            });
        }
        Ok(())
    }

    fn register(self: &Arc<Self>, sandbox: Sandbox) -> Arc<Sandbox> {
        let sandbox = Arc::new(sandbox);
        let id = sandbox.id().to_string();
        self.live
            .write()
            .expect("registry lock")
            .insert(id.clone(), sandbox.clone());
        self.watch_exit(id, Arc::downgrade(&sandbox));
        sandbox
    }

    /// Resumes a paused sandbox and registers it.
    pub async fn resume(
        self: &Arc<Self>,
        id: &str,
        memory_mib: u32,
    ) -> Result<(Arc<Sandbox>, ResumeReport), HostResumeError> {
        if let Some(live) = self.get(id) {
            return Ok((
                live,
                ResumeReport {
                    duration_ms: 0,
                    chain_length: 0,
                },
            ));
        }
        self.check_memory(memory_mib)?;
        let _busy = self.manager.mark_busy(id);
        let (sandbox, report) = self.manager.resume(id).await?;
        Ok((self.register(sandbox), report))
    }

    /// Creates a sandbox from a snapshot template (a clone) and registers it.
    pub async fn clone_template(
        self: &Arc<Self>,
        name: &str,
        request: &warren_sandbox::SandboxSpec,
    ) -> Result<(Arc<Sandbox>, ResumeReport), HostResumeError> {
        let template = self.manager.template(name)?;
        self.check_memory(template.spec.memory_mib)?;
        let id = warren_sandbox::id::new_sandbox_id();
        let _busy = self.manager.mark_busy(&id);
        let (sandbox, report) = self
            .manager
            .clone_template_with_id(id.clone(), name, request)
            .await?;
        Ok((self.register(sandbox), report))
    }

    /// Start-up recovery (see [`Manager::recover`]): registers the VMs that
    /// outlived the previous warren and reports the rest. Runs before the
    /// API serves anything.
    pub async fn recover(self: &Arc<Self>) -> RecoverySummary {
        let recovery = self.manager.recover().await;
        let mut attached = Vec::new();
        for sandbox in recovery.attached {
            attached.push(sandbox.id().to_string());
            self.register(sandbox);
        }
        RecoverySummary {
            attached,
            paused: recovery.paused,
            lost: recovery.lost,
            quarantined: recovery.quarantined,
            swept: recovery.swept,
        }
    }

    /// One reconciler pass over this host (see [`Manager::reconcile`]).
    pub fn reconcile(&self) -> Vec<Fix> {
        self.manager
            .reconcile(&|id| self.live.read().expect("registry lock").contains_key(id))
    }

    /// Lets every live sandbox run on after this process ends (service
    /// shutdown with `keep`); the next start re-attaches them.
    pub fn detach_all(&self) {
        for sandbox in self.unregister_all() {
            sandbox.detach();
        }
    }

    fn unregister_all(&self) -> Vec<Arc<Sandbox>> {
        self.live
            .write()
            .expect("registry lock")
            .drain()
            .map(|(_, s)| s)
            .collect()
    }

    /// Kills every live sandbox (service shutdown).
    pub async fn kill_all(&self) {
        for sandbox in self.unregister_all() {
            let killed = sandbox.kill().await;
            self.keep_log(&sandbox);
            if let Err(error) = killed {
                tracing::warn!(id = %sandbox.id(), %error, "killing sandbox at shutdown failed");
            }
        }
    }
}

/// What the control plane asks of a host besides its live sandboxes:
/// capacity, images and snapshot templates, and the facts recovery and the
/// reconciler decide on. The service goes through these, never through the
/// host's [`Manager`], so that a host can later be served over the network
/// with exactly this surface.
impl HostAgent {
    /// The accelerator this host's VMs use (reported by `/health`).
    pub fn accel(&self) -> warren_sandbox::Accel {
        self.manager.accel()
    }

    /// This host's CPUs and memory (the bounds of a create request).
    pub fn capacity(&self) -> warren_vmm::host::HostCapacity {
        self.manager.host()
    }

    /// Builds an image if it is not built yet (the service does the default
    /// one at start, so the first create does not wait for it).
    pub async fn prepare_image(
        &self,
        name: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<(), CreateError> {
        self.manager.prepare_image(name, progress).await.map(drop)
    }

    /// Whether an operation holds the sandbox (the reconciler leaves it be).
    pub fn is_busy(&self, id: &str) -> bool {
        self.manager.is_busy(id)
    }

    /// Where the disk of a lost sandbox was kept, if it was.
    pub fn kept_disk(&self, id: &str) -> Option<PathBuf> {
        self.manager.kept_disk(id)
    }

    /// Sandboxes paused on this host's disk.
    pub fn paused_ids(&self) -> Vec<String> {
        self.manager.paused_ids()
    }

    /// Turns a paused sandbox into the snapshot template `name`.
    pub async fn create_template(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<warren_sandbox::TemplateMeta, SnapshotOpError> {
        self.manager.create_template(sandbox_id, name).await
    }

    /// One snapshot template held by this host.
    pub fn template(&self, name: &str) -> Result<warren_sandbox::TemplateMeta, SnapshotOpError> {
        self.manager.template(name)
    }

    /// Every snapshot template held by this host.
    pub fn templates(&self) -> Vec<warren_sandbox::TemplateMeta> {
        self.manager.templates()
    }

    /// Deletes a snapshot template's files.
    pub fn delete_template(&self, name: &str) -> Result<(), SnapshotOpError> {
        self.manager.delete_template(name)
    }
}

fn prune_old_logs(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEPT_LOG_AGE);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
