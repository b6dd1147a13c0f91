//! A unit-test fake of [`Host`]: no VMs, no directories, only the facts the
//! control plane decides on (which ids are live, paused, busy; how much
//! memory is left), which a test sets up and then inspects.
//!
//! It exists so that `state.rs`'s create / kill / reaper / reconcile
//! decisions are tested in milliseconds and without QEMU. It does not
//! prove that the real host does what it promises: the real-VM integration
//! suites (`crates/warren-server/tests`, `tests/`, the restart and fault
//! tests) stay, and stay the judge of that.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use warren_host::session::Sandbox as LiveSandbox;
use warren_host::{
    Capacity, Fix, Host, HostError, HostErrorKind, HostEvent, PauseReport, RecoverySummary,
    ResumeReport, SandboxSpec, TemplateMeta,
};

/// What the fake host holds; tests read and change it through
/// [`FakeHost::with`].
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    /// Live sandboxes and the spec they were created with.
    pub live: HashMap<String, SandboxSpec>,
    /// Sandboxes paused on the fake disk.
    pub paused: HashSet<String>,
    /// Ids an operation holds (the reconciler must leave them be).
    pub busy: HashSet<String>,
    /// Where the disks of lost sandboxes were kept.
    pub kept_disks: HashMap<String, PathBuf>,
    /// Memory left for new sandboxes.
    pub memory_left_mib: u64,
    /// Every id the control plane asked to kill, in order, whether the
    /// host had it or not.
    pub kill_calls: Vec<String>,
    /// Number of create calls (creations the host was asked for).
    pub create_calls: usize,
    /// Number of host-side reconciler passes.
    pub reconcile_calls: usize,
}

/// The fake host. See the module doc: a unit-test fake only.
#[derive(Debug)]
pub(crate) struct FakeHost {
    state: Mutex<FakeState>,
    events: broadcast::Sender<HostEvent>,
    next_id: std::sync::atomic::AtomicU32,
}

impl FakeHost {
    /// A fake host with `memory_left_mib` free and nothing on it.
    pub fn new(memory_left_mib: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FakeState {
                memory_left_mib,
                ..FakeState::default()
            }),
            events: broadcast::channel(16).0,
            next_id: std::sync::atomic::AtomicU32::new(1),
        })
    }

    /// Reads or changes what the host holds.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().expect("fake host lock"))
    }

    fn new_id(&self) -> String {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("sb-fake{n:05}")
    }
}

fn remote(kind: HostErrorKind, message: String) -> HostError {
    HostError::Remote { kind, message }
}

#[async_trait::async_trait]
impl Host for FakeHost {
    fn accel(&self) -> String {
        "fake".into()
    }

    fn capacity(&self) -> Capacity {
        Capacity {
            cpus: 4,
            memory_total_mib: 16 * 1024,
            memory_available_mib: self.with(|s| s.memory_left_mib),
        }
    }

    fn check_spec(&self, spec: &SandboxSpec) -> Result<(), HostError> {
        let host = warren_vmm::host::HostCapacity {
            memory_total_mib: 16 * 1024,
            memory_available_mib: self.with(|s| s.memory_left_mib),
            cpus: 4,
        };
        spec.validate(&host).map_err(HostError::InvalidSpec)
    }

    fn available_memory_mib(&self) -> u64 {
        self.with(|s| s.memory_left_mib)
    }

    async fn prepare_image(&self, _name: &str) -> Result<(), HostError> {
        Ok(())
    }

    async fn create(&self, spec: SandboxSpec) -> Result<String, HostError> {
        let id = self.new_id();
        self.with(|s| {
            s.create_calls += 1;
            let requested = u64::from(spec.memory_mib);
            if requested > s.memory_left_mib {
                return Err(HostError::OutOfMemory {
                    requested_mib: requested,
                    available_mib: s.memory_left_mib,
                });
            }
            s.memory_left_mib -= requested;
            s.live.insert(id.clone(), spec);
            Ok(id)
        })
    }

    async fn clone_template(
        &self,
        name: &str,
        _spec: &SandboxSpec,
    ) -> Result<(String, ResumeReport), HostError> {
        Err(remote(
            HostErrorKind::NoTemplate,
            format!("no snapshot template named {name:?}"),
        ))
    }

    async fn kill(&self, id: &str) -> Result<bool, HostError> {
        Ok(self.with(|s| {
            s.kill_calls.push(id.to_string());
            if let Some(spec) = s.live.remove(id) {
                s.memory_left_mib += u64::from(spec.memory_mib);
                true
            } else {
                s.paused.remove(id)
            }
        }))
    }

    async fn pause(&self, id: &str, _merge_cap: usize) -> Result<Option<PauseReport>, HostError> {
        Ok(self.with(|s| {
            let spec = s.live.remove(id)?;
            s.memory_left_mib += u64::from(spec.memory_mib);
            s.paused.insert(id.to_string());
            Some(PauseReport {
                generation: 0,
                full: true,
                memory_bytes: 1 << 20,
                dirty_bytes: 1 << 20,
                state_bytes: 4096,
                chain_length: 1,
                merged: false,
                duration_ms: 1,
            })
        }))
    }

    async fn resume(&self, id: &str, memory_mib: u32) -> Result<ResumeReport, HostError> {
        self.with(|s| {
            if s.live.contains_key(id) {
                return Ok(());
            }
            if !s.paused.remove(id) {
                return Err(remote(
                    HostErrorKind::NotPaused,
                    format!("no paused sandbox {id} on this host"),
                ));
            }
            s.live.insert(
                id.to_string(),
                SandboxSpec {
                    image: "debian".into(),
                    vcpus: 1,
                    memory_mib,
                    env: Default::default(),
                    metadata: Default::default(),
                    keep_disk: false,
                    network: None,
                },
            );
            Ok(())
        })?;
        Ok(ResumeReport {
            duration_ms: 1,
            chain_length: 1,
        })
    }

    fn is_live(&self, id: &str) -> bool {
        self.with(|s| s.live.contains_key(id))
    }

    fn live_ids(&self) -> Vec<String> {
        self.with(|s| s.live.keys().cloned().collect())
    }

    fn live_count(&self) -> usize {
        self.with(|s| s.live.len())
    }

    fn is_paused(&self, id: &str) -> bool {
        self.with(|s| s.paused.contains(id))
    }

    fn paused_ids(&self) -> Vec<String> {
        self.with(|s| s.paused.iter().cloned().collect())
    }

    fn is_busy(&self, id: &str) -> bool {
        self.with(|s| s.busy.contains(id))
    }

    fn kept_disk(&self, id: &str) -> Option<PathBuf> {
        self.with(|s| s.kept_disks.get(id).cloned())
    }

    fn console_log(&self, _id: &str, _max_bytes: u64) -> Option<String> {
        None
    }

    fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }

    async fn recover(&self) -> RecoverySummary {
        RecoverySummary::default()
    }

    async fn reconcile(&self) -> Vec<Fix> {
        self.with(|s| s.reconcile_calls += 1);
        Vec::new()
    }

    async fn create_template(
        &self,
        sandbox_id: &str,
        _name: &str,
    ) -> Result<TemplateMeta, HostError> {
        Err(remote(
            HostErrorKind::NotPaused,
            format!("no paused sandbox {sandbox_id} on this host"),
        ))
    }

    fn template(&self, name: &str) -> Result<TemplateMeta, HostError> {
        Err(remote(
            HostErrorKind::NoTemplate,
            format!("no snapshot template named {name:?}"),
        ))
    }

    fn templates(&self) -> Vec<TemplateMeta> {
        Vec::new()
    }

    fn delete_template(&self, name: &str) -> Result<(), HostError> {
        Err(remote(
            HostErrorKind::NoTemplate,
            format!("no snapshot template named {name:?}"),
        ))
    }

    fn detach_all(&self) {
        self.with(|s| s.live.clear());
    }

    async fn kill_all(&self) {
        self.with(|s| s.live.clear());
    }

    /// No VMs, so no data plane: a running record answers 409 "its VM
    /// exited" for exec and files, which the real-VM suites cover.
    fn session(&self, _id: &str) -> Option<Arc<LiveSandbox>> {
        None
    }
}
