//! The host agent: which sandboxes run on this host.
//!
//! The control plane (`warren-server`) decides *what* should exist
//! (tenancy, persistence, timeouts); the host agent owns *what does*
//! exist here: the live [`Sandbox`] handles, their exits, and the host's
//! capacity. In `warren up` both run in one process and talk through this
//! Rust API; a multi-host deployment puts a network service in between
//! without changing either side's logic: the service sees a host only
//! through the [`Host`] trait, which [`HostAgent`] implements.

mod host;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast;
pub use warren_sandbox::recovery::Fix;
use warren_sandbox::{DestroyError, Manager, PauseError, PauseOptions, Progress, Sandbox};
pub use warren_sandbox::{
    ManagerConfig, ManagerError, PauseReport, ResumeReport, SandboxSpec, TemplateMeta,
};

pub use host::{
    Capacity, Host, HostError, HostErrorKind, UnavailableReason, validate_template_name,
};

/// The defaults of what a request leaves out (image, vCPUs, memory) and of
/// how pauses merge the snapshot chain.
pub mod defaults {
    pub use warren_sandbox::snapshot::DEFAULT_MERGE_CAP;
    pub use warren_sandbox::spec::{DEFAULT_IMAGE, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
}

/// Whether a string can be a sandbox id at all (anything else is unknown
/// without asking the host).
pub fn is_valid_sandbox_id(id: &str) -> bool {
    warren_sandbox::id::is_valid_sandbox_id(id)
}

/// The data plane: the live sandbox handle and what its exec, file and PTY
/// calls take and return. This is the one seam of the host interface that
/// is still the sandbox library's own types: a networked host needs typed
/// streams in its place (see ARCHITECTURE.md, "The host seam").
pub mod session {
    pub use warren_sandbox::{
        Command, ExecError, FileError, FileInfo, FileType, GuestErrorKind, NetworkError, Process,
        ProcessEvent, Sandbox, Unavailable, WriteOptions,
    };
    pub use warren_sandbox::{NetworkPolicy, PolicyError};
}

/// Something that happened to a sandbox on this host without being asked.
#[derive(Debug, Clone)]
pub enum HostEvent {
    /// The VM ended on its own (crash, power-off, killed from outside).
    VmExited {
        /// Sandbox id.
        id: String,
        /// How it ended, as users read it (the VM's exit description).
        exit: String,
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

/// The sandboxes live on this host.
pub struct HostAgent {
    /// This agent itself, for the tasks it spawns (exit watchers).
    me: Weak<HostAgent>,
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
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            manager,
            live: RwLock::new(HashMap::new()),
            events,
            reserve_mib: 512,
            logs_dir,
        })
    }

    /// Starts the sandbox manager of this host (its data directory, the
    /// accelerator) and a host agent over it.
    pub fn start(config: ManagerConfig) -> Result<Arc<Self>, ManagerError> {
        Ok(Self::new(Manager::new(config)?))
    }

    /// This agent as an `Arc` (it only ever lives in one, see [`Self::new`]).
    fn arc(&self) -> Arc<Self> {
        self.me
            .upgrade()
            .expect("a host agent is borrowed only through its Arc")
    }

    /// The end of a stopped sandbox's console log, if it was kept.
    fn kept_console_log(&self, id: &str, max_bytes: u64) -> Option<String> {
        if !warren_sandbox::id::is_valid_sandbox_id(id) {
            return None;
        }
        let path = self.logs_dir.join(format!("{id}.log"));
        path.exists()
            .then(|| warren_vmm::process::tail_of(&path, max_bytes))
    }

    /// The console log of a paused sandbox (kept in its directory).
    fn paused_console_log(&self, id: &str, max_bytes: u64) -> Option<String> {
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

    fn keep_log(&self, sandbox: &Sandbox) {
        if let Err(error) = sandbox.preserve_console_log(&self.logs_dir, KEPT_LOG_BYTES) {
            tracing::warn!(id = %sandbox.id(), %error, "could not keep the console log");
        }
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
    pub async fn create_sandbox(
        self: &Arc<Self>,
        spec: SandboxSpec,
        progress: Arc<dyn Progress>,
    ) -> Result<Arc<Sandbox>, HostError> {
        let requested = u64::from(spec.memory_mib);
        let available = self.available_memory_mib();
        if requested > available {
            return Err(HostError::OutOfMemory {
                requested_mib: requested,
                available_mib: available,
            });
        }
        // The id stays busy until the sandbox is registered, so the
        // reconciler never mistakes it for an orphan in between.
        let id = warren_sandbox::id::new_sandbox_id();
        let _busy = self.manager.mark_busy(&id);
        let sandbox = self
            .manager
            .create_with_id(id, spec, progress)
            .await
            .map_err(HostError::Create)?;
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
                    exit: exit.to_string(),
                    reverted,
                    kept_disk,
                });
            }
        });
    }

    /// The live sandbox with this id (the data plane's handle).
    pub fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.live.read().expect("registry lock").get(id).cloned()
    }

    /// Kills a sandbox, or deletes it if it is paused. Returns false if it
    /// was neither live nor paused here.
    async fn kill_sandbox(&self, id: &str) -> Result<bool, DestroyError> {
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
    pub async fn pause_sandbox(
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

    fn check_memory(&self, memory_mib: u32) -> Result<(), HostError> {
        let requested = u64::from(memory_mib);
        let available = self.available_memory_mib();
        if requested > available {
            return Err(HostError::OutOfMemoryToResume {
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
    pub async fn resume_sandbox(
        self: &Arc<Self>,
        id: &str,
        memory_mib: u32,
    ) -> Result<(Arc<Sandbox>, ResumeReport), HostError> {
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
    pub async fn clone_from_template(
        self: &Arc<Self>,
        name: &str,
        request: &SandboxSpec,
    ) -> Result<(Arc<Sandbox>, ResumeReport), HostError> {
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
    async fn recover_host(self: &Arc<Self>) -> RecoverySummary {
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
    fn reconcile_host(&self) -> Vec<Fix> {
        self.manager
            .reconcile(&|id| self.live.read().expect("registry lock").contains_key(id))
    }

    fn unregister_all(&self) -> Vec<Arc<Sandbox>> {
        self.live
            .write()
            .expect("registry lock")
            .drain()
            .map(|(_, s)| s)
            .collect()
    }
}

/// The local host: the service's control plane talks to this host agent
/// only through [`Host`], never through its [`Manager`], so that a host can
/// later be served over the network with exactly this surface.
#[async_trait::async_trait]
impl Host for HostAgent {
    fn accel(&self) -> String {
        self.manager.accel().as_str().to_string()
    }

    fn capacity(&self) -> Capacity {
        self.manager.host().into()
    }

    fn check_spec(&self, spec: &SandboxSpec) -> Result<(), HostError> {
        spec.validate(&self.manager.host())
            .map_err(HostError::InvalidSpec)
    }

    fn available_memory_mib(&self) -> u64 {
        HostAgent::available_memory_mib(self)
    }

    async fn prepare_image(&self, name: &str) -> Result<(), HostError> {
        let progress = Arc::new(warren_image::TracingProgress);
        self.manager
            .prepare_image(name, progress)
            .await
            .map(drop)
            .map_err(HostError::Create)
    }

    async fn create(&self, spec: SandboxSpec) -> Result<String, HostError> {
        let live = self
            .arc()
            .create_sandbox(spec, Arc::new(warren_sandbox::NoProgress))
            .await?;
        Ok(live.id().to_string())
    }

    async fn clone_template(
        &self,
        name: &str,
        spec: &SandboxSpec,
    ) -> Result<(String, ResumeReport), HostError> {
        let (live, report) = self.arc().clone_from_template(name, spec).await?;
        Ok((live.id().to_string(), report))
    }

    async fn kill(&self, id: &str) -> Result<bool, HostError> {
        Ok(self.kill_sandbox(id).await?)
    }

    async fn pause(&self, id: &str, merge_cap: usize) -> Result<Option<PauseReport>, HostError> {
        let options = PauseOptions {
            merge_cap,
            ..PauseOptions::default()
        };
        Ok(self.pause_sandbox(id, &options).await?)
    }

    async fn resume(&self, id: &str, memory_mib: u32) -> Result<ResumeReport, HostError> {
        let (_, report) = self.arc().resume_sandbox(id, memory_mib).await?;
        Ok(report)
    }

    fn is_live(&self, id: &str) -> bool {
        self.live.read().expect("registry lock").contains_key(id)
    }

    fn live_ids(&self) -> Vec<String> {
        self.live
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    fn live_count(&self) -> usize {
        self.live.read().expect("registry lock").len()
    }

    fn is_paused(&self, id: &str) -> bool {
        self.manager.is_paused(id)
    }

    fn paused_ids(&self) -> Vec<String> {
        self.manager.paused_ids()
    }

    fn is_busy(&self, id: &str) -> bool {
        self.manager.is_busy(id)
    }

    fn kept_disk(&self, id: &str) -> Option<PathBuf> {
        self.manager.kept_disk(id)
    }

    fn console_log(&self, id: &str, max_bytes: u64) -> Option<String> {
        match self.get(id) {
            Some(live) => Some(live.console_log(max_bytes)),
            // Paused: in its directory. Stopped: the end of its log was
            // kept when it stopped.
            None => self
                .paused_console_log(id, max_bytes)
                .or_else(|| self.kept_console_log(id, max_bytes)),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }

    async fn recover(&self) -> RecoverySummary {
        self.arc().recover_host().await
    }

    async fn reconcile(&self) -> Vec<Fix> {
        // Directory scans and process kills: off the async threads.
        let me = self.arc();
        tokio::task::spawn_blocking(move || me.reconcile_host())
            .await
            .unwrap_or_default()
    }

    async fn create_template(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<TemplateMeta, HostError> {
        Ok(self.manager.create_template(sandbox_id, name).await?)
    }

    fn template(&self, name: &str) -> Result<TemplateMeta, HostError> {
        Ok(self.manager.template(name)?)
    }

    fn templates(&self) -> Vec<TemplateMeta> {
        self.manager.templates()
    }

    fn delete_template(&self, name: &str) -> Result<(), HostError> {
        Ok(self.manager.delete_template(name)?)
    }

    fn detach_all(&self) {
        for sandbox in self.unregister_all() {
            sandbox.detach();
        }
    }

    async fn kill_all(&self) {
        for sandbox in self.unregister_all() {
            let killed = sandbox.kill().await;
            self.keep_log(&sandbox);
            if let Err(error) = killed {
                tracing::warn!(id = %sandbox.id(), %error, "killing sandbox at shutdown failed");
            }
        }
    }

    fn session(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.get(id)
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
