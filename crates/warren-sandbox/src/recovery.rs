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

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use warren_snapshot::{HEADER_FILE, SnapshotHeader};

use crate::manager::{DISK_OVERLAY, Manager, SANDBOX_META, SandboxMeta, connect_agent};
use crate::memfs::MemFs;
use crate::sandbox::Sandbox;
use crate::snapshot::TEMPLATES_DIR;

/// Where directories that could not be understood are moved (kept for a
/// person to look at; warren never deletes them).
pub const QUARANTINE_DIR: &str = "quarantine";
/// Where directories go to be deleted: a rename is atomic, a recursive
/// delete is not, so a crash mid-delete never leaves a half-deleted sandbox
/// that looks real. Emptied at start and by every reconcile.
pub const TRASH_DIR: &str = "trash";

/// Where the disks of lost sandboxes that asked to keep them
/// ([`SandboxSpec::keep_disk`](crate::SandboxSpec::keep_disk)) go, one
/// directory per loss with the disk layer, metadata and console log.
pub const KEPT_DIR: &str = "kept";

/// How long an attached VM's agent may take to answer after a restart.
const REATTACH_AGENT_TIMEOUT: Duration = Duration::from_secs(20);

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

/// One correction made by recovery or the reconciler, for logs and the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fix {
    /// What kind of problem (`orphan_vm`, `orphan_memfs`, `orphan_dir`,
    /// `stray_file`, `quarantined`, `staging`, ...).
    pub kind: String,
    /// The sandbox or template it concerns.
    pub id: String,
    /// What was found and done.
    pub detail: String,
}

impl Fix {
    fn new(kind: &str, id: &str, detail: impl Into<String>) -> Self {
        let fix = Self {
            kind: kind.into(),
            id: id.into(),
            detail: detail.into(),
        };
        tracing::warn!(kind = %fix.kind, id = %fix.id, "{}", fix.detail);
        fix
    }
}

/// Ids the manager is working on right now (creating, resuming, pausing,
/// cloning, templating): the reconciler leaves them alone.
#[derive(Debug, Default)]
pub(crate) struct Busy(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// Marks an id busy until dropped.
#[derive(Debug)]
pub struct BusyGuard<'a> {
    busy: &'a Busy,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.busy.0.lock().expect("busy lock");
        if let Some(count) = busy.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&self.id);
            }
        }
    }
}

impl Busy {
    pub(crate) fn mark(&self, id: &str) -> BusyGuard<'_> {
        *self
            .0
            .lock()
            .expect("busy lock")
            .entry(id.to_string())
            .or_insert(0) += 1;
        BusyGuard {
            busy: self,
            id: id.to_string(),
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.0.lock().expect("busy lock").contains_key(id)
    }
}

/// How a directory in `sandboxes/` reads.
enum DirState {
    /// Not ours to judge: an ephemeral sandbox of another live process.
    Foreign,
    /// Metadata missing or unreadable, or not a sandbox id.
    Corrupt(String),
    /// A sandbox of this warren.
    Ours {
        meta: Box<SandboxMeta>,
        header: Result<Option<SnapshotHeader>, String>,
    },
}

impl Manager {
    /// Marks `id` as being worked on until the guard is dropped; the
    /// reconciler skips it meanwhile.
    pub fn mark_busy(&self, id: &str) -> BusyGuard<'_> {
        self.busy().mark(id)
    }

    /// Whether an operation on `id` is under way.
    pub fn is_busy(&self, id: &str) -> bool {
        self.busy().contains(id)
    }

    fn read_dir_state(&self, name: &str, dir: &Path) -> DirState {
        if !crate::id::is_valid_sandbox_id(name) {
            return DirState::Corrupt(format!("{name:?} is not a sandbox id"));
        }
        let meta = match std::fs::read(dir.join(SANDBOX_META)) {
            Ok(bytes) => match serde_json::from_slice::<SandboxMeta>(&bytes) {
                Ok(meta) => meta,
                Err(error) => {
                    return DirState::Corrupt(format!("its {SANDBOX_META} is unreadable: {error}"));
                }
            },
            Err(error) => {
                return DirState::Corrupt(format!("its {SANDBOX_META} is missing: {error}"));
            }
        };
        if meta.id != name {
            return DirState::Corrupt(format!(
                "its {SANDBOX_META} names sandbox {:?}, not {name}",
                meta.id
            ));
        }
        if meta.ephemeral
            && meta.owner_pid != std::process::id()
            && warren_vmm::process::is_running(meta.owner_pid)
        {
            return DirState::Foreign;
        }
        let header = if dir.join(HEADER_FILE).exists() {
            warren_snapshot::read_header(dir)
                .map(Some)
                .map_err(|e| e.to_string())
        } else {
            Ok(None)
        };
        DirState::Ours {
            meta: Box::new(meta),
            header,
        }
    }

    /// Moves `path` to `quarantine/` under a unique name and logs why.
    fn quarantine(&self, name: &str, path: &Path, reason: &str) -> Fix {
        let target_dir = self.data_dir().join(QUARANTINE_DIR);
        let _ = std::fs::create_dir_all(&target_dir);
        let target = target_dir.join(format!("{name}.{}", unix_ms()));
        match std::fs::rename(path, &target) {
            Ok(()) => Fix::new(
                "quarantined",
                name,
                format!("{reason}; moved to {}", target.display()),
            ),
            Err(error) => Fix::new(
                "quarantine_failed",
                name,
                format!(
                    "{reason}; moving it to {} failed: {error}",
                    target.display()
                ),
            ),
        }
    }

    /// Moves `path` into the trash and empties it: deletion that a crash
    /// cannot leave half done.
    pub fn trash(&self, path: &Path) -> std::io::Result<()> {
        let trash = self.data_dir().join(TRASH_DIR);
        std::fs::create_dir_all(&trash)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = trash.join(format!("{name}.{}.{}", std::process::id(), unix_ms()));
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        }
        if let Some(parent) = path.parent()
            && let Ok(dir) = std::fs::File::open(parent)
        {
            let _ = dir.sync_all();
        }
        std::fs::remove_dir_all(&target)
    }

    /// Empties the trash; returns how many entries went.
    fn sweep_trash(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.data_dir().join(TRASH_DIR)) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if removed.is_ok() {
                swept += 1;
            }
        }
        swept
    }

    /// Removes template staging directories of processes that are gone
    /// (`.<name>.<pid>.tmp`) and half-deleted templates (`.<name>.deleting`).
    fn sweep_template_leftovers(&self) -> Vec<Fix> {
        let templates = self.data_dir().join(TEMPLATES_DIR);
        let Ok(entries) = std::fs::read_dir(&templates) else {
            return Vec::new();
        };
        let mut fixes = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                continue;
            }
            let leftover = if let Some(rest) = name.strip_suffix(".tmp") {
                let pid = rest
                    .rsplit_once('.')
                    .and_then(|(_, pid)| pid.parse::<u32>().ok());
                match pid {
                    Some(pid) => pid != std::process::id() && !warren_vmm::process::is_running(pid),
                    None => true,
                }
            } else {
                name.ends_with(".deleting")
            };
            if leftover && self.trash(&entry.path()).is_ok() {
                fixes.push(Fix::new(
                    "staging",
                    &name,
                    "removed a template directory left by an interrupted operation",
                ));
            }
        }
        fixes
    }

    /// Ends the memory daemon of a sandbox directory (if one runs), unmounts
    /// its mount and removes the runtime files a dead VM leaves: sockets,
    /// pid files, the memory work file. Returns the names removed.
    fn clear_runtime_files(&self, dir: &Path) -> Vec<String> {
        let mut removed = Vec::new();
        let mount = dir.join("memfs");
        if let Some(pid) = crate::memfs::running_daemon(&mount) {
            crate::memfs::end_daemon(pid);
            removed.push(format!("warren-memfs (pid {pid})"));
        }
        let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        if std::fs::remove_dir(&mount).is_ok() {
            removed.push("memfs/".into());
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return removed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let runtime = name.ends_with(".sock")
                || name == warren_vmm::config::files::PID
                || name == "memfs.pid"
                || name == "memfs.log"
                || name.ends_with(".work")
                || name.ends_with(".work.dirty")
                || name.starts_with(".") && name.contains(".tmp-");
            if runtime && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    /// Brings this host back after a restart; see the module docs. Never
    /// fails: whatever cannot be understood is quarantined and logged.
    pub async fn recover(&self) -> Recovery {
        let mut recovery = Recovery {
            swept: self.sweep_trash(),
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
                    let reason = format!("its snapshot header is unreadable: {error}");
                    recovery
                        .quarantined
                        .push(self.quarantine(&name, &dir, &reason));
                    continue;
                }
            };
            let mut header = header;
            if dir.join(crate::snapshot::PENDING_PAUSE_FILE).exists() {
                // A pause was cut off after its device state and RAM were
                // durable: finish it (the VM, if it still runs, is stopped
                // and its state already saved).
                if let Some(pid) = self.vmm().running_pid(&dir, &name) {
                    self.vmm().kill_process(pid);
                }
                let (dir2, meta2, previous) = (dir.clone(), (*meta).clone(), header.clone());
                let finished = tokio::task::spawn_blocking(move || {
                    crate::snapshot::finish_interrupted_pause(&dir2, &meta2, previous)
                })
                .await
                .unwrap_or_else(|e| Err(format!("finishing the pause panicked: {e}")));
                match finished {
                    Ok(committed) => {
                        tracing::info!(id = %name, "completed a pause that the restart cut off");
                        header = Some(committed);
                    }
                    Err(error) => {
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
                    crate::snapshot::tidy_paused_dir(&dir, &header);
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

    /// Takes over the VM (and memory daemon) a previous warren left running.
    async fn reattach(
        &self,
        id: &str,
        dir: &Path,
        meta: &SandboxMeta,
        header: Option<&SnapshotHeader>,
    ) -> Result<Sandbox, String> {
        let image = meta.image();
        let disk = dir.join(DISK_OVERLAY);
        let mut config = self.vm_config(id, dir, &meta.spec, &image, &disk);
        let memfs = match header {
            Some(header) => {
                let mount = dir.join("memfs");
                let work = dir.join(format!("mem.{}.work", header.next_generation_id()));
                let memfs = MemFs::adopt(&mount, &work)
                    .ok_or("its memory daemon is gone, so its RAM is unreachable")?;
                config.memory_file = Some(memfs.memory_file());
                Some(memfs)
            }
            None => None,
        };
        let vm = self.vmm().attach(config).await.map_err(|e| e.to_string())?;
        let state = vm.run_state().await.map_err(|e| e.to_string())?;
        match state.as_str() {
            "running" => {}
            // A pause or snapshot that was cut off after stopping the vCPUs
            // but before releasing the VM: nothing was committed, so the
            // sandbox simply runs on.
            "paused" | "postmigrate" | "finish-migrate" => {
                vm.cont().await.map_err(|e| e.to_string())?;
                tracing::info!(%id, %state, "continued a VM stopped by an interrupted pause");
            }
            other => {
                // `inmigrate`/`prelaunch`: a resume that never finished.
                return Err(format!(
                    "its VM is in state {other:?} (an interrupted resume)"
                ));
            }
        }
        let agent = connect_agent(id, vm.as_ref(), REATTACH_AGENT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let sandbox = Sandbox::new(
            id,
            dir.to_path_buf(),
            vm,
            agent,
            meta.spec.clone(),
            meta.image_key.clone(),
        );
        if let Some(memfs) = memfs {
            sandbox.set_memfs(memfs);
        }
        let info = sandbox.info().await.map_err(|e| e.to_string())?;
        if info.protocol_version != warren_proto::PROTOCOL_VERSION {
            // Dropping the handle would end it; it is unusable anyway.
            return Err(format!(
                "its guest agent speaks protocol {} and this warren {}",
                info.protocol_version,
                warren_proto::PROTOCOL_VERSION
            ));
        }
        Ok(sandbox)
    }

    /// For a sandbox that is lost (its VM is gone and it has no snapshot)
    /// and asked to keep its disk: moves its writable disk layer, metadata
    /// and console log to `kept/<id>.<ms>/` before the directory goes.
    /// Returns where, or `None` if it did not ask (or nothing was kept).
    pub fn keep_lost_disk(
        &self,
        id: &str,
        dir: &Path,
        spec: &crate::SandboxSpec,
    ) -> Option<PathBuf> {
        if !spec.keep_disk || !dir.join(DISK_OVERLAY).is_file() {
            return None;
        }
        let kept = self.data_dir().join(KEPT_DIR);
        let target = kept.join(format!("{id}.{}", unix_ms()));
        let staging = kept.join(format!(".{id}.{}.tmp", unix_ms()));
        let moved = (|| {
            std::fs::create_dir_all(&staging)?;
            for name in [
                SANDBOX_META,
                warren_vmm::config::files::CONSOLE_LOG,
                DISK_OVERLAY,
            ] {
                let from = dir.join(name);
                if from.exists() {
                    // Same file system: a rename, not a copy.
                    std::fs::rename(&from, staging.join(name))?;
                }
            }
            std::fs::File::open(&staging)?.sync_all()?;
            std::fs::rename(&staging, &target)?;
            std::fs::File::open(&kept)?.sync_all()
        })();
        match moved {
            Ok(()) => {
                tracing::warn!(%id, path = %target.display(), "the lost sandbox's disk is kept, as it asked");
                Some(target)
            }
            Err(error) => {
                tracing::warn!(%id, %error, "keeping the lost sandbox's disk failed");
                let _ = std::fs::remove_dir_all(&staging);
                None
            }
        }
    }

    /// The newest kept disk directory of sandbox `id`, if it was lost and
    /// asked to keep its disk.
    pub fn kept_disk(&self, id: &str) -> Option<PathBuf> {
        let prefix = format!("{id}.");
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.data_dir().join(KEPT_DIR))
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        found.sort();
        found.pop()
    }

    fn keep_console_log(&self, id: &str, dir: &Path) {
        let logs = self.data_dir().join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let tail = warren_vmm::process::tail_of(
            &dir.join(warren_vmm::config::files::CONSOLE_LOG),
            1 << 20,
        );
        let _ = std::fs::write(logs.join(format!("{id}.log")), tail);
    }

    /// Ends what nothing owns on this host: VM and memory-daemon processes
    /// of sandboxes that are neither `live` nor being worked on, directories
    /// of sandboxes that are neither live nor paused, stray runtime files
    /// of paused sandboxes, trash and template leftovers. Returns each fix.
    ///
    /// `is_live` must answer from the caller's registry at the time of the
    /// call: an id is only judged when it is neither busy nor live, and
    /// callers register a sandbox before its busy mark ends.
    pub fn reconcile(&self, is_live: &dyn Fn(&str) -> bool) -> Vec<Fix> {
        let mut fixes = Vec::new();
        let sandboxes = self.sandboxes_dir().to_string_lossy().into_owned();
        let owned = |id: &str| self.is_busy(id) || is_live(id);
        let foreign = |id: &str| {
            matches!(
                self.read_dir_state(id, &self.sandboxes_dir().join(id)),
                DirState::Foreign
            )
        };

        for process in self.vmm().live_vms() {
            let ours = process
                .cmdline
                .contains(&format!("{sandboxes}/{}/", process.id));
            if !ours || owned(&process.id) || foreign(&process.id) {
                continue;
            }
            let gone = self.vmm().kill_process(process.pid);
            fixes.push(Fix::new(
                "orphan_vm",
                &process.id,
                format!(
                    "ended QEMU pid {} that no sandbox owns{}",
                    process.pid,
                    if gone { "" } else { " (it did not exit yet)" }
                ),
            ));
        }
        for (pid, id) in crate::memfs::daemons_under(self.sandboxes_dir()) {
            if owned(&id) || foreign(&id) {
                continue;
            }
            crate::memfs::end_daemon(pid);
            let _ = nix::mount::umount2(
                &self.sandboxes_dir().join(&id).join("memfs"),
                nix::mount::MntFlags::MNT_DETACH,
            );
            fixes.push(Fix::new(
                "orphan_memfs",
                &id,
                format!("ended memory daemon pid {pid} that no sandbox owns"),
            ));
        }

        if let Ok(entries) = std::fs::read_dir(self.sandboxes_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let dir = entry.path();
                if owned(&name) {
                    continue;
                }
                match self.read_dir_state(&name, &dir) {
                    DirState::Foreign => {}
                    DirState::Corrupt(reason) => {
                        // A creation writes its metadata right after making
                        // the directory (and is busy meanwhile); give a
                        // stalled file system a minute anyway.
                        if dir_age(&dir).is_some_and(|age| age > Duration::from_secs(60)) {
                            fixes.push(self.quarantine(&name, &dir, &reason));
                        }
                    }
                    DirState::Ours {
                        header: Ok(Some(_)),
                        ..
                    } => {
                        for file in self.clear_runtime_files(&dir) {
                            fixes.push(Fix::new(
                                "stray_file",
                                &name,
                                format!("removed {file} from the paused sandbox's directory"),
                            ));
                        }
                    }
                    DirState::Ours {
                        header: Err(error), ..
                    } => {
                        fixes.push(self.quarantine(
                            &name,
                            &dir,
                            &format!("its snapshot header is unreadable: {error}"),
                        ));
                    }
                    DirState::Ours {
                        header: Ok(None),
                        meta,
                    } => {
                        self.keep_console_log(&name, &dir);
                        self.keep_lost_disk(&name, &dir, &meta.spec);
                        self.clear_runtime_files(&dir);
                        if self.trash(&dir).is_ok() {
                            fixes.push(Fix::new(
                                "orphan_dir",
                                &name,
                                "removed the directory of a sandbox that is neither running nor paused",
                            ));
                        }
                    }
                }
            }
        }
        let swept = self.sweep_trash();
        if swept > 0 {
            tracing::debug!(swept, "emptied the trash");
        }
        fixes.extend(self.sweep_template_leftovers());
        if let Some(ram_dir) = self.volatile_ram_dir() {
            for path in self.vmm().sweep_memory(ram_dir) {
                let id = path
                    .file_stem()
                    .map(|stem| stem.to_string_lossy().into_owned())
                    .unwrap_or_default();
                fixes.push(Fix::new(
                    "orphan_ram",
                    &id,
                    format!("freed guest RAM {} that no VM uses", path.display()),
                ));
            }
        }
        fixes
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn dir_age(dir: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(dir).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
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
    use crate::spec::SandboxSpec;

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
        let meta = SandboxMeta {
            id: id.into(),
            spec: SandboxSpec::default(),
            image_key: "key".into(),
            created_unix_ms: 0,
            owner_pid,
            ephemeral,
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            base_disk: PathBuf::new(),
            base_disk_format: "raw".into(),
            template: None,
        };
        std::fs::write(dir.join(SANDBOX_META), serde_json::to_vec(&meta).unwrap()).unwrap();
        std::fs::write(dir.join(warren_vmm::config::files::PID), "4242\n").unwrap();
        std::fs::write(dir.join(warren_vmm::config::files::AGENT_SOCKET), "").unwrap();
        std::fs::write(dir.join(warren_vmm::config::files::CONSOLE_LOG), "booted\n").unwrap();
        std::fs::write(dir.join(DISK_OVERLAY), "layer of the run").unwrap();
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
        let kept: Vec<_> = std::fs::read_dir(home.path().join(QUARANTINE_DIR))
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
            DISK_OVERLAY,
        ] {
            assert!(
                !dir.join(gone).exists(),
                "{gone} of the lost run is removed"
            );
        }
        for kept in [
            HEADER_FILE,
            "mem.0",
            "state.0",
            "disk.g0.qcow2",
            SANDBOX_META,
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
        assert!(dir.join(DISK_OVERLAY).exists());
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
        assert!(dir.join(HEADER_FILE).exists());
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
