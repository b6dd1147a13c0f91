//! Pause, resume, snapshot templates and clones.
//!
//! A sandbox directory holds, besides its metadata:
//!
//! | file | what |
//! |---|---|
//! | `memory` | guest RAM of a cold-booted VM (QEMU maps it shared) |
//! | `memfs/memory` | guest RAM of a resumed VM, served by `warren-memfs` |
//! | `mem.<g>.work` | what the resumed guest wrote, becomes `mem.<g>` |
//! | `disk.qcow2` | the writable disk layer of the running VM |
//! | `SNAPSHOT` | the committed snapshot (see warren-snapshot's FORMAT.md) |
//! | `mem.<g>` | memory generation `g` (sparse) |
//! | `state.<g>` | QEMU device state saved at generation `g` |
//! | `disk.g<g>.qcow2` | the disk layer frozen at generation `g` |
//!
//! | `PAUSE-PENDING` | a pause whose material is complete but not yet committed |
//!
//! Only `SNAPSHOT` decides what a paused sandbox is; it is replaced
//! atomically as the last step of a pause, so a pause (or merge) that dies at
//! any point leaves the previous snapshot as it was. Files it does not
//! reference are garbage from an interrupted operation and are removed by the
//! next one. One exception keeps acknowledged work: once the device state and
//! the RAM are durable, `PAUSE-PENDING` is written before the VM is ended, and
//! a restarted warren that finds it completes the commit
//! ([`finish_interrupted_pause`]) instead of falling back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use warren_snapshot::{Generation, HEADER_FILE, SnapshotHeader};
use warren_vmm::disk::{self, create_overlay, create_overlay_durably, qcow2_backing_file};
use warren_vmm::process;

use crate::error::{CreateError, ExecError, Unavailable};
use crate::manager::{
    DISK_OVERLAY, DirGuard, Manager, RESUME_OVERLAY, SANDBOX_META, SandboxMeta, connect_agent,
};
use crate::memfs::{MemFs, MemFsError, find_memfs_binary};
use crate::sandbox::Sandbox;
use crate::spec::SandboxSpec;

/// Default number of memory generations after which they are merged.
pub const DEFAULT_MERGE_CAP: usize = 10;
/// Where snapshot templates live under the data directory.
pub const TEMPLATES_DIR: &str = "templates";
/// Name of a template's metadata file.
pub const TEMPLATE_META: &str = "template.json";

/// How a pause runs.
#[derive(Debug, Clone)]
pub struct PauseOptions {
    /// Merge the memory generations into one when there are more than this.
    pub merge_cap: usize,
    /// Bound on each step that waits for the guest or QEMU.
    pub timeout: Duration,
    /// How long to wait for transfers in flight ([`Sandbox::hold_off_pause`])
    /// to end before pausing anyway (and cutting them).
    pub drain: Duration,
}

impl Default for PauseOptions {
    fn default() -> Self {
        Self {
            merge_cap: DEFAULT_MERGE_CAP,
            timeout: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

/// What a pause did, for callers and benchmarks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PauseReport {
    /// The generation written.
    pub generation: u32,
    /// A full snapshot (first pause) rather than a diff.
    pub full: bool,
    /// Bytes of memory written to disk by this pause (allocated bytes of
    /// the new generation file; diffs are compressed).
    pub memory_bytes: u64,
    /// Guest memory the pause had to store, before compression: nonzero
    /// blocks of a full snapshot, blocks written since the resume for a
    /// diff.
    pub dirty_bytes: u64,
    /// Size of the device state.
    pub state_bytes: u64,
    /// Generations in the chain after the pause.
    pub chain_length: usize,
    /// Whether the chain was merged.
    pub merged: bool,
    /// How long the vCPUs were running-but-unreachable (the whole pause).
    pub duration_ms: u64,
}

/// What a resume did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResumeReport {
    /// Time from the call to the agent answering.
    pub duration_ms: u64,
    /// Generations the memory is read from.
    pub chain_length: usize,
}

/// Why a pause failed, and what state the sandbox is left in.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The sandbox cannot be paused (already paused, destroyed, VM gone).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The pause failed while the VM still existed: it runs on, unchanged.
    #[error("pausing sandbox {id} failed, it keeps running: {detail}{}", space_hint(*no_space))]
    StillRunning {
        /// Sandbox id.
        id: String,
        /// What failed.
        detail: String,
        /// The disk holding the data directory is full.
        no_space: bool,
    },
    /// The VM ended on its own (killed, crashed) before the pause had
    /// everything it needed: the sandbox falls back to its previous
    /// snapshot if it has one, else it is lost.
    #[error("pausing sandbox {id} failed because its VM ended during the pause ({detail}); {}", if *previous_kept { "it falls back to its previous snapshot" } else { "it had no earlier snapshot and is lost" })]
    VmEnded {
        /// Sandbox id.
        id: String,
        /// What failed when the VM went away.
        detail: String,
        /// Whether an earlier snapshot remains resumable.
        previous_kept: bool,
    },
    /// The VM was released but the new snapshot could not be committed: the
    /// sandbox is paused at its previous snapshot (what ran since the last
    /// resume is lost), or lost if it had none.
    #[error("pausing sandbox {id} failed after its VM stopped: {detail}; {}{}", if *previous_kept { "the previous snapshot is kept and can be resumed" } else { "the sandbox had no earlier snapshot and is lost" }, space_hint(*no_space))]
    Committed {
        /// Sandbox id.
        id: String,
        /// What failed.
        detail: String,
        /// Whether an earlier snapshot remains resumable.
        previous_kept: bool,
        /// The disk holding the data directory is full.
        no_space: bool,
    },
}

impl PauseError {
    /// The sandbox still runs after this error.
    pub fn still_running(&self) -> bool {
        matches!(self, PauseError::StillRunning { .. })
    }

    /// The failure was a full disk.
    pub fn no_space(&self) -> bool {
        match self {
            PauseError::StillRunning { no_space, .. } | PauseError::Committed { no_space, .. } => {
                *no_space
            }
            PauseError::Unavailable(_) | PauseError::VmEnded { .. } => false,
        }
    }
}

fn space_hint(no_space: bool) -> &'static str {
    if no_space {
        " (the disk holding warren's data directory is full: free space and try again)"
    } else {
        ""
    }
}

/// Why a resume, clone or template operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotOpError {
    /// No paused sandbox with this id.
    #[error("no paused sandbox {0} on this host")]
    NotPaused(String),
    /// No template with this name.
    #[error("no snapshot template named {0:?}")]
    NoTemplate(String),
    /// A template with this name exists.
    #[error("a snapshot template named {0:?} already exists; pick another name or delete it first")]
    TemplateExists(String),
    /// The template still has clones.
    #[error("snapshot template {name:?} is used by {} sandbox(es) ({}); delete them first", users.len(), users.join(", "))]
    TemplateInUse {
        /// Template name.
        name: String,
        /// Sandboxes created from it.
        users: Vec<String>,
    },
    /// A bad template name.
    #[error(
        "invalid template name {0:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidName(String),
    /// The on-disk snapshot is unreadable.
    #[error("the snapshot of {id} is unreadable: {detail}")]
    Corrupt {
        /// Sandbox id or template name.
        id: String,
        /// What is wrong.
        detail: String,
    },
    /// The memory daemon failed.
    #[error(transparent)]
    MemFs(#[from] MemFsError),
    /// Booting the restored VM failed (the snapshot is left as it was).
    #[error(transparent)]
    Create(#[from] CreateError),
    /// A file operation failed.
    #[error("{what}: {detail}{}", space_hint(*no_space))]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        detail: String,
        /// The disk is full.
        no_space: bool,
    },
}

impl SnapshotOpError {
    fn io(what: impl Into<String>, error: impl std::fmt::Display, no_space: bool) -> Self {
        SnapshotOpError::Io {
            what: what.into(),
            detail: error.to_string(),
            no_space,
        }
    }
}

fn is_no_space(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

fn text_says_no_space(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("no space left") || lower.contains("enospc") || lower.contains("quota exceeded")
}

/// Whether the filesystem of `dir` has (almost) no space left: QEMU's
/// migration errors do not always carry the errno.
fn nearly_full(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size() < 4 << 20)
        .unwrap_or(false)
}

/// Snapshot bookkeeping kept in the header's `meta`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ChainMeta {
    /// Disk layers of this sandbox's own, oldest first (relative names).
    #[serde(default)]
    disk_layers: Vec<String>,
    /// vCPUs the state was saved with.
    vcpus: u32,
    /// Guest RAM.
    memory_mib: u32,
}

/// A snapshot template on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TemplateMeta {
    /// Template name.
    pub name: String,
    /// The sandbox it was taken from.
    pub source_sandbox: String,
    /// The spec clones get (vCPUs and memory are locked to these).
    pub spec: SandboxSpec,
    /// Image key of the base image.
    pub image_key: String,
    /// The image's root disk below the template's frozen disk (never another
    /// template's disk).
    pub base_disk: PathBuf,
    /// qemu-img format of `base_disk`.
    #[serde(default = "raw_format")]
    pub base_disk_format: String,
    /// Kernel the snapshot runs (clones must boot the same one).
    pub kernel: PathBuf,
    /// Initramfs the snapshot booted with.
    pub initramfs: PathBuf,
    /// When it was taken (ms since the epoch).
    pub created_unix_ms: u64,
    /// Allocated bytes of its memory file.
    pub memory_bytes: u64,
    /// Allocated bytes of its disk layer.
    pub disk_bytes: u64,
}

fn raw_format() -> String {
    "raw".into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Checks a template name (it becomes a directory name).
pub fn validate_template_name(name: &str) -> Result<(), SnapshotOpError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotOpError::InvalidName(name.to_string()))
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking snapshot task panicked")
}

impl Sandbox {
    /// Pauses the sandbox to disk: the guest flushes its filesystems, the
    /// vCPUs stop, the device state is saved, guest RAM already lives in
    /// files (the first pause keeps the RAM file, sparse; later ones keep
    /// only the blocks written since the resume), and the VM process ends
    /// so its memory returns to the host. On success the handle is
    /// unusable (operations fail with "paused"); resume with
    /// [`Manager::resume`].
    pub async fn pause(&self, options: &PauseOptions) -> Result<PauseReport, PauseError> {
        // One pause at a time; one that waited may find the sandbox paused.
        let _pause_running = self.shared().pause_running.lock().await;
        if let Some(unavailable) = self.shared().unavailable() {
            return Err(unavailable.into());
        }
        let started = Instant::now();
        let id = self.id().to_string();
        let dir = self.dir().to_path_buf();
        let vm = self.vm();
        // No new transfer starts from here; the ones in flight may finish.
        let transfers = self.shared().transfers.clone();
        let _drained = match tokio::time::timeout(options.drain, transfers.write_owned()).await {
            Ok(guard) => Some(guard),
            Err(_) => {
                tracing::warn!(%id, drain = ?options.drain, "transfers still running; pausing anyway");
                None
            }
        };
        // A step failed while the VM should still exist: it runs on, unless
        // it is the VM that went away (then the exit watcher takes over).
        let failed = |detail: String, no_space: bool| {
            if vm.exit().is_some() || !process::is_running(vm.pid()) {
                PauseError::VmEnded {
                    id: id.clone(),
                    detail,
                    previous_kept: dir.join(HEADER_FILE).exists(),
                }
            } else {
                PauseError::StillRunning {
                    id: id.clone(),
                    detail,
                    no_space,
                }
            }
        };

        // 1. The guest writes its dirty filesystem data to the disk layer.
        match tokio::time::timeout(options.timeout, self.sync_filesystems(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(failed(
                    format!("the guest could not flush its filesystems: {error}"),
                    false,
                ));
            }
            Err(_) => {
                return Err(failed(
                    format!(
                        "the guest did not flush its filesystems within {:?}",
                        options.timeout
                    ),
                    false,
                ));
            }
        }
        let previous = {
            let dir = dir.clone();
            blocking(move || read_existing_header(&dir)).await
        }
        .map_err(|detail| {
            failed(
                format!("its previous snapshot is unreadable: {detail}"),
                false,
            )
        })?;
        let generation = previous
            .as_ref()
            .map_or(0, SnapshotHeader::next_generation_id);

        // 2. Stop the vCPUs and save the device state.
        let state_name = format!("state.{generation}");
        let state_path = dir.join(&state_name);
        let saved = match vm.save_device_state(&state_path, options.timeout).await {
            Ok(saved) => saved,
            Err(error) => {
                let _ = std::fs::remove_file(&state_path);
                let text = error.to_string();
                let resumed = vm.cont().await;
                let mut detail = format!("saving the device state failed: {text}");
                if let Err(cont) = resumed {
                    detail.push_str(&format!(" (and restarting its vCPUs failed: {cont})"));
                }
                let no_space = text_says_no_space(&text) || nearly_full(&dir);
                return Err(failed(detail, no_space));
            }
        };

        // 3. Make guest RAM durable while the VM can still be continued,
        //    then record that everything a commit needs is on disk: from
        //    here a restart completes this pause instead of dropping it.
        let daemon_flush = self
            .memfs_handle()
            .lock()
            .expect("memfs lock")
            .as_ref()
            .map(|memfs| memfs.flush());
        // A cold-booted VM whose RAM lives in host memory gets a copy in its
        // directory; the copy goes again if the VM goes on running.
        let ram_in_memory = vm.volatile_memory().map(Path::to_path_buf);
        let on_disk = dir.join(warren_vmm::config::files::MEMORY);
        let io =
            |what: &str, error: std::io::Error| (format!("{what}: {error}"), is_no_space(&error));
        let made_durable = match (daemon_flush, ram_in_memory.clone()) {
            (Some(flushed), _) => flushed.map_err(|e| io("writing guest memory to disk failed", e)),
            (None, Some(source)) => {
                let dest = on_disk.clone();
                blocking(move || warren_snapshot::copy_ram(&source, &dest))
                    .await
                    .map(drop)
                    .map_err(|e| {
                        let no_space = matches!(e, warren_snapshot::OpError::NoSpace { .. });
                        (
                            format!("writing guest memory to disk failed: {e}"),
                            no_space,
                        )
                    })
            }
            (None, None) => std::fs::File::open(&on_disk)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("writing guest memory to disk failed", e)),
        };
        let flushed = made_durable.and_then(|()| {
            let pending = PendingPause {
                generation,
                state: state_name.clone(),
                merge_cap: options.merge_cap.max(1),
            };
            process::write_atomic(
                &dir.join(PENDING_PAUSE_FILE),
                &serde_json::to_vec(&pending).expect("pending pause serializes"),
            )
            .map_err(|e| io("recording the pause failed", e))
        });
        if let Err((detail, no_space)) = flushed {
            let _ = std::fs::remove_file(&state_path);
            if ram_in_memory.is_some() {
                let _ = std::fs::remove_file(&on_disk);
            }
            let _ = vm.cont().await;
            return Err(failed(detail, no_space || nearly_full(&dir)));
        }

        // 4. Release the VM. From here the old snapshot (if any) is the
        //    fallback until the new one is committed.
        self.mark_paused();
        vm.keep_memory_file();
        if let Err(error) = vm.kill().await {
            tracing::warn!(%id, %error, "ending the paused VM failed");
        }
        let ram = match self.memfs_handle().lock().expect("memfs lock").take() {
            Some(memfs) => RamSource::Daemon(memfs),
            None => RamSource::Full,
        };
        let previous_kept = previous.is_some();
        let job = CommitPause {
            dir: dir.clone(),
            previous,
            generation,
            ram,
            memory_bytes: u64::from(self.spec().memory_mib) << 20,
            state_name,
            vcpus: self.spec().vcpus,
            memory_mib: self.spec().memory_mib,
            merge_cap: options.merge_cap.max(1),
        };
        let outcome = blocking(move || commit_pause(job)).await;
        let committed = match outcome {
            Ok(done) => {
                prepare_resume_overlay(&dir, &done.header).await;
                done
            }
            Err((detail, no_space)) => {
                // The previous snapshot stands; this pause's files go.
                let work = dir.join(format!("mem.{generation}.work"));
                let _ = std::fs::remove_file(warren_snapshot::dirty_report_path(&work));
                let _ = std::fs::remove_file(&work);
                let _ = std::fs::remove_file(&state_path);
                let _ = std::fs::remove_file(dir.join(PENDING_PAUSE_FILE));
                return Err(PauseError::Committed {
                    id,
                    detail,
                    previous_kept,
                    no_space,
                });
            }
        };
        Ok(PauseReport {
            generation,
            full: committed.full,
            memory_bytes: committed.written,
            dirty_bytes: committed.dirty,
            state_bytes: saved.bytes,
            chain_length: committed.header.generations.len(),
            merged: committed.merged,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// Creates the empty disk layer the next resume will run on, so that a
/// resume need not wait for `qemu-img` (about 20 ms, a tenth of a resume
/// here). Best effort: without it, the resume creates the layer itself.
async fn prepare_resume_overlay(dir: &Path, header: &SnapshotHeader) {
    let frozen = header.resolve(dir, &header.disk);
    let prepared = dir.join(RESUME_OVERLAY);
    if let Err(error) = create_overlay_durably(&frozen, "qcow2", &prepared).await {
        tracing::debug!(dir = %dir.display(), %error, "preparing the next disk layer failed");
    }
}

/// Moves the layer a pause prepared into place as `disk`, if there is one
/// over `frozen`; a layer over anything else (an older snapshot's) goes.
fn take_prepared_overlay(dir: &Path, frozen: &Path, disk: &Path) -> bool {
    let prepared = dir.join(RESUME_OVERLAY);
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

/// Names a pause whose device state and RAM are durable but whose
/// `SNAPSHOT` is not yet written (the VM is being, or has been, ended).
pub(crate) const PENDING_PAUSE_FILE: &str = "PAUSE-PENDING";

/// The content of [`PENDING_PAUSE_FILE`]: what a restarted warren needs to
/// finish the commit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingPause {
    /// The generation being written.
    generation: u32,
    /// Its device state file.
    state: String,
    /// The merge cap the pause ran with.
    merge_cap: usize,
}

/// Reads `dir`'s pending-pause record, if there is a readable one.
pub(crate) fn pending_pause(dir: &Path) -> Option<PendingPause> {
    let bytes = std::fs::read(dir.join(PENDING_PAUSE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Completes a pause that a crash of warren cut off after its material was
/// durable ([`PENDING_PAUSE_FILE`] exists) but before `SNAPSHOT` named it.
/// The VM must be gone. Returns the committed header; an error means the
/// material is not all there and the previous snapshot (if any) stands.
/// The pending record is removed either way.
pub(crate) fn finish_interrupted_pause(
    dir: &Path,
    meta: &SandboxMeta,
    previous: Option<SnapshotHeader>,
) -> Result<SnapshotHeader, String> {
    let result = (|| {
        let pending = pending_pause(dir).ok_or("its pause record is unreadable")?;
        if let Some(header) = &previous {
            if header.device_state == pending.state {
                // Committed already; only the record was left.
                return Ok(header.clone());
            }
            if header.next_generation_id() != pending.generation {
                return Err(format!(
                    "the pause record names generation {} but the snapshot expects {}",
                    pending.generation,
                    header.next_generation_id()
                ));
            }
        } else if pending.generation != 0 {
            return Err("the pause record names a diff but there is no snapshot".into());
        }
        if !dir.join(&pending.state).is_file() {
            return Err(format!("its device state {} is missing", pending.state));
        }
        let ram = match previous {
            None => RamSource::Full,
            Some(_) => {
                let work = dir.join(format!("mem.{}.work", pending.generation));
                match MemFs::adopt(&dir.join("memfs"), &work) {
                    Some(memfs) => RamSource::Daemon(memfs),
                    None => RamSource::Report,
                }
            }
        };
        let memory_bytes = u64::from(meta.spec.memory_mib) << 20;
        commit_pause(CommitPause {
            dir: dir.to_path_buf(),
            previous,
            generation: pending.generation,
            ram,
            memory_bytes,
            state_name: pending.state,
            vcpus: meta.spec.vcpus,
            memory_mib: meta.spec.memory_mib,
            merge_cap: pending.merge_cap,
        })
        .map(|committed| committed.header)
        .map_err(|(detail, _)| detail)
    })();
    let _ = std::fs::remove_file(dir.join(PENDING_PAUSE_FILE));
    let _ = fsync_dir(dir);
    result
}

impl Sandbox {
    /// After its VM died on its own: if the sandbox has a snapshot (it was
    /// paused and resumed before, or a pause running when the VM died
    /// completed), it falls back to it, paused, instead of being lost; what
    /// ran since the resume is gone. Returns whether it did. The memory
    /// daemon is ended and the dead run's files removed.
    pub async fn fall_back_to_snapshot(&self) -> bool {
        // A pause that was running when the VM died decides first: its
        // snapshot may be complete (the VM died stopped, after its state was
        // saved), and then the sandbox is paused at it.
        let _pause_done = self.shared().pause_running.lock().await;
        if self.is_paused() {
            return true;
        }
        let dir = self.dir().to_path_buf();
        let header = {
            let dir = dir.clone();
            blocking(move || read_existing_header(&dir)).await
        };
        let Ok(Some(header)) = header else {
            return false;
        };
        self.mark_paused();
        let _ = self.vm().kill().await;
        if let Some(mut memfs) = self.memfs_handle().lock().expect("memfs lock").take() {
            memfs.abort();
        }
        blocking(move || tidy_paused_dir(&dir, &header)).await;
        true
    }
}

/// Reads `dir/SNAPSHOT` if there is one.
fn read_existing_header(dir: &Path) -> Result<Option<SnapshotHeader>, String> {
    if !dir.join(HEADER_FILE).exists() {
        return Ok(None);
    }
    warren_snapshot::read_header(dir)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Where a pause's RAM comes from.
enum RamSource {
    /// A cold-booted VM's `memory` file (or, when an interrupted commit is
    /// finished, the `mem.<g>` it was already renamed to): a full generation.
    Full,
    /// The memory daemon of a resumed VM: its report of dirtied blocks.
    Daemon(MemFs),
    /// The report the daemon left next to the work file when it ended
    /// (it is gone; a crash came between its end and the commit).
    Report,
}

struct CommitPause {
    dir: PathBuf,
    previous: Option<SnapshotHeader>,
    generation: u32,
    ram: RamSource,
    memory_bytes: u64,
    state_name: String,
    vcpus: u32,
    memory_mib: u32,
    merge_cap: usize,
}

/// What [`commit_pause`] committed.
struct CommittedPause {
    header: SnapshotHeader,
    /// A full snapshot rather than a diff.
    full: bool,
    /// The chain was merged.
    merged: bool,
    /// Bytes the new (or merged) generation file takes on disk.
    written: u64,
    /// Guest memory this pause stored before compression (nonzero blocks of
    /// a full snapshot, blocks written since the resume for a diff).
    dirty: u64,
}

/// Steps 5-8 of a pause (the VM is gone): turn the RAM into a generation,
/// freeze the disk layer, merge if the chain is too long, commit.
/// Returns what was committed, or (detail, no_space).
fn commit_pause(job: CommitPause) -> Result<CommittedPause, (String, bool)> {
    let CommitPause {
        dir,
        previous,
        generation,
        ram,
        memory_bytes,
        state_name,
        vcpus,
        memory_mib,
        merge_cap,
    } = job;
    let mem_name = format!("mem.{generation}");
    let mem_path = dir.join(&mem_name);
    let op = |e: warren_snapshot::OpError| {
        let no_space = matches!(e, warren_snapshot::OpError::NoSpace { .. });
        (e.to_string(), no_space)
    };
    let io = |what: &str, e: std::io::Error| (format!("{what}: {e}"), is_no_space(&e));
    // A step repeated after a crash finds its output where its input was:
    // each rename below is skipped when only the target exists.
    let keep = |from: &Path, what: &str| -> Result<(), (String, bool)> {
        match std::fs::rename(from, &mem_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && mem_path.is_file() => Ok(()),
            Err(e) => Err(io(what, e)),
        }
    };

    // 5. Memory.
    let work = dir.join(format!("mem.{generation}.work"));
    let report_path = warren_snapshot::dirty_report_path(&work);
    // A first pause stores everything; later ones store a diff (the
    // mismatched cases are refused below).
    let full = previous.is_none();
    // `packed`: how the new generation file stores its blocks.
    let (map, packed, dirty) = match (ram, &previous) {
        (RamSource::Full, None) => {
            let ram = dir.join(warren_vmm::config::files::MEMORY);
            let source = if ram.exists() { &ram } else { &mem_path };
            let map =
                warren_snapshot::full_generation(source, memory_bytes, generation).map_err(op)?;
            keep(&ram, "keeping the memory file")?;
            let dirty = map.nonzero_blocks() * warren_snapshot::BLOCK_SIZE;
            (map, false, dirty)
        }
        (ram @ (RamSource::Daemon(_) | RamSource::Report), Some(previous)) => {
            let report = match ram {
                RamSource::Daemon(memfs) => memfs.finish().map_err(|e| (e.to_string(), false))?,
                _ => warren_snapshot::read_dirty_report(&report_path)
                    .map_err(|e| (format!("its memory daemon is gone: {e}"), false))?,
            };
            if report.write_errors > 0 {
                let _ = std::fs::remove_file(&work);
                let _ = std::fs::remove_file(&report_path);
                return Err((
                    format!(
                        "{} block(s) of guest memory could not be written: {}",
                        report.write_errors,
                        report.first_error.unwrap_or_default()
                    ),
                    true,
                ));
            }
            let map =
                warren_snapshot::apply_dirty(&previous.map, &report, generation).map_err(op)?;
            // The diff is packed (compressed) into the generation file; a
            // repeat after a crash finds the packed file and no work file.
            let blocks = memory_bytes / warren_snapshot::BLOCK_SIZE;
            let packed = if work.exists() {
                warren_snapshot::pack(&work, &report.data_runs, blocks, &mem_path).map_err(op)?;
                let _ = std::fs::remove_file(&work);
                true
            } else if mem_path.is_file() {
                // Packed by the interrupted run; or, if a warren from
                // before packed diffs renamed the work file there, sparse.
                warren_snapshot::PackedGeneration::open(&mem_path, blocks).is_ok()
            } else {
                return Err((format!("the memory diff {} is gone", work.display()), false));
            };
            let dirty =
                report.data_runs.iter().map(|run| run.1).sum::<u64>() * warren_snapshot::BLOCK_SIZE;
            (map, packed, dirty)
        }
        (RamSource::Full, Some(_)) => {
            return Err(("a resumed sandbox's RAM has no memory daemon".into(), false));
        }
        (_, None) => {
            return Err(("a resumed sandbox has no previous snapshot".into(), false));
        }
    };

    // 6. Disk: the running layer becomes a frozen one (a second name now;
    //    the old name goes once the header is committed).
    let layer = format!("disk.g{generation}.qcow2");
    let _ = std::fs::remove_file(dir.join(&layer));
    std::fs::hard_link(dir.join(DISK_OVERLAY), dir.join(&layer))
        .map_err(|e| io("freezing the disk layer", e))?;
    let mut chain_meta: ChainMeta = previous
        .as_ref()
        .and_then(|h| serde_json::from_value(h.meta.clone()).ok())
        .unwrap_or_default();
    chain_meta.disk_layers.push(layer.clone());
    chain_meta.vcpus = vcpus;
    chain_meta.memory_mib = memory_mib;

    // 7. The header: generations still referenced, plus the new one.
    let used: std::collections::BTreeSet<u32> = map
        .blocks_per_generation()
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    let mut generations: Vec<Generation> = previous
        .as_ref()
        .map(|h| h.generations.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|g| used.contains(&g.id))
        .collect();
    if used.contains(&generation) {
        generations.push(if packed {
            Generation::packed(generation, mem_name.clone())
        } else {
            Generation::sparse(generation, mem_name.clone())
        });
    }
    let mut header = SnapshotHeader {
        memory_bytes,
        generations,
        map,
        device_state: state_name,
        disk: layer,
        created_unix_ms: now_ms(),
        meta: serde_json::Value::Null,
    };
    let mut merged = false;
    if header.generations.len() > merge_cap {
        // Merge into generation + 1 (ids only grow, so no file is reused).
        let merged_id = generation + 1;
        let merged_name = format!("mem.{merged_id}");
        let (map, _) = warren_snapshot::flatten(&dir, &header, &dir.join(&merged_name), merged_id)
            .map_err(op)?;
        header.map = map;
        header.generations = vec![Generation::sparse(merged_id, merged_name)];
        merged = true;
        // The disk chain (one layer per resume) is flattened with it, so
        // neither chain grows without bound. A failure keeps the chain.
        if chain_meta.disk_layers.len() > 1 {
            match read_meta(&dir).and_then(|meta| {
                flatten_disk(&dir, &header.disk, &meta, generation)
                    .map_err(|e| crate::error::with_causes(&e))
            }) {
                Ok(flat) => {
                    header.disk = flat.clone();
                    chain_meta.disk_layers = vec![flat];
                }
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "flattening the disk layers failed; keeping the chain");
                }
            }
        }
    }
    header.meta = serde_json::to_value(&chain_meta).expect("chain meta serializes");
    warren_snapshot::write_header_atomic(&dir, &header).map_err(|e| {
        let text = e.to_string();
        let no_space = text_says_no_space(&text);
        (format!("recording the snapshot failed: {text}"), no_space)
    })?;

    // 8. Garbage: files the committed header does not reference.
    let _ = std::fs::remove_file(dir.join(PENDING_PAUSE_FILE));
    let _ = std::fs::remove_file(&report_path);
    let _ = std::fs::remove_file(dir.join(DISK_OVERLAY));
    remove_unreferenced(&dir, &header, &chain_meta.disk_layers);
    // The file this pause wrote: the new generation, or the merged one. A
    // pause that dirtied nothing has no generation of its own.
    let written = header
        .generations
        .iter()
        .find(|g| g.id == generation || merged)
        .map_or(0, |g| {
            warren_snapshot::allocated_bytes(&header.resolve(&dir, &g.file))
        });
    let _ = fsync_dir(&dir);
    Ok(CommittedPause {
        header,
        full,
        merged,
        written,
        dirty,
    })
}

/// Writes the disk chain ending in `top` as one qcow2 layer over the
/// sandbox's base disk (`qemu-img convert -B` copies only what differs from
/// the base); returns its file name.
fn flatten_disk(
    dir: &Path,
    top: &str,
    meta: &SandboxMeta,
    generation: u32,
) -> Result<String, disk::DiskError> {
    let name = format!("disk.g{generation}f.qcow2");
    disk::flatten_durably(
        &meta.base_disk,
        &meta.base_disk_format,
        &dir.join(top),
        &dir.join(&name),
    )?;
    Ok(name)
}

/// Makes a paused sandbox's directory hold its committed snapshot and
/// nothing else of note: the writable disk layer of a run that ended without
/// a pause (resume makes a fresh one), a cold-boot RAM file, generations and
/// states no header references.
pub(crate) fn tidy_paused_dir(dir: &Path, header: &SnapshotHeader) {
    let _ = std::fs::remove_file(dir.join(DISK_OVERLAY));
    let _ = std::fs::remove_file(dir.join(warren_vmm::config::files::RESTORE_KERNEL));
    let _ = std::fs::remove_file(dir.join(RESUME_OVERLAY).with_extension("tmp"));
    let memory = warren_vmm::config::files::MEMORY;
    if !header.generations.iter().any(|g| g.file == memory) {
        let _ = std::fs::remove_file(dir.join(memory));
    }
    let chain: ChainMeta = serde_json::from_value(header.meta.clone()).unwrap_or_default();
    remove_unreferenced(dir, header, &chain.disk_layers);
}

/// Removes memory generations, device states, work files and disk layers
/// that the committed snapshot does not reference (leftovers of earlier
/// generations or of interrupted operations). `disk_layers` is the
/// sandbox's own disk chain, every layer of which stays.
fn remove_unreferenced(dir: &Path, header: &SnapshotHeader, disk_layers: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("disk.g") {
            if !disk_layers.iter().any(|layer| layer == name) && header.disk != name {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let snapshot_file = name.starts_with("mem.") || name.starts_with("state.");
        if !snapshot_file {
            continue;
        }
        let referenced =
            header.device_state == name || header.generations.iter().any(|g| g.file == name);
        if !referenced {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Manager {
    /// Resumes a paused sandbox: its memory is served lazily from the
    /// snapshot chain, a new disk layer goes on top of the frozen one, QEMU
    /// loads the device state, the guest runs on from where it stopped, and
    /// its clock is set. On error the snapshot is left as it was.
    pub async fn resume(&self, id: &str) -> Result<(Sandbox, ResumeReport), SnapshotOpError> {
        let started = Instant::now();
        let dir = self.sandboxes_dir().join(id);
        if !crate::id::is_valid_sandbox_id(id) || !dir.join(HEADER_FILE).exists() {
            return Err(SnapshotOpError::NotPaused(id.to_string()));
        }
        let _busy = self.mark_busy(id);
        let meta = read_meta(&dir).map_err(|detail| SnapshotOpError::Corrupt {
            id: id.to_string(),
            detail,
        })?;
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
            .filter(|e| e.path().join(HEADER_FILE).exists())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| crate::id::is_valid_sandbox_id(id))
            .collect();
        ids.sort();
        ids
    }

    /// Whether a sandbox is paused on this host.
    pub fn is_paused(&self, id: &str) -> bool {
        crate::id::is_valid_sandbox_id(id)
            && self.sandboxes_dir().join(id).join(HEADER_FILE).exists()
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
            .map_err(|e| SnapshotOpError::io(format!("removing {}", dir.display()), &e, false))
    }

    async fn restore(
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
        .map_err(|e| SnapshotOpError::Corrupt {
            id: id.to_string(),
            detail: e.to_string(),
        })?;
        let chain_length = header.generations.len();
        let image = meta.image();
        let binary = find_memfs_binary()?;
        let generation = header.next_generation_id();
        let work = dir.join(format!("mem.{generation}.work"));
        let mount = dir.join("memfs");
        let memory_bytes = header.memory_bytes;
        let die_with_parent = self.ephemeral();
        // The memory daemon and a fresh writable disk layer over the frozen
        // one, side by side. Unlink first: a leftover `disk.qcow2` may be a
        // second name of a frozen layer.
        let disk = dir.join(DISK_OVERLAY);
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
        let (memfs, overlay) = tokio::join!(start_memfs, overlay);
        let memfs = memfs?;
        phase("memory daemon and disk layer ready");
        if let Err(error) = overlay {
            return Err(error.into());
        }
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
                    detail: format!("restoring the device state failed: {e}"),
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
        let sandbox = Sandbox::new(
            id,
            dir.to_path_buf(),
            vm,
            agent,
            meta.spec.clone(),
            meta.image_key.clone(),
        );
        sandbox.set_memfs(memfs);
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

    /// Turns a paused sandbox into the snapshot template `name`: its memory
    /// chain is flattened into one file and its disk layers into one qcow2
    /// layer over the base image, so the template is independent of the
    /// sandbox (which may be deleted or resumed afterwards).
    pub async fn create_template(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<TemplateMeta, SnapshotOpError> {
        validate_template_name(name)?;
        if !self.is_paused(sandbox_id) {
            return Err(SnapshotOpError::NotPaused(sandbox_id.to_string()));
        }
        let _busy = self.mark_busy(sandbox_id);
        let templates = self.data_dir().join(TEMPLATES_DIR);
        let target = templates.join(name);
        if target.exists() {
            return Err(SnapshotOpError::TemplateExists(name.to_string()));
        }
        std::fs::create_dir_all(&templates).map_err(|e| {
            SnapshotOpError::io("creating the templates directory", &e, is_no_space(&e))
        })?;
        let dir = self.sandboxes_dir().join(sandbox_id);
        let meta = read_meta(&dir).map_err(|detail| SnapshotOpError::Corrupt {
            id: sandbox_id.to_string(),
            detail,
        })?;
        let header = warren_snapshot::read_header(&dir).map_err(|e| SnapshotOpError::Corrupt {
            id: sandbox_id.to_string(),
            detail: e.to_string(),
        })?;
        let staging = templates.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(|e| {
            SnapshotOpError::io("creating the template directory", &e, is_no_space(&e))
        })?;
        let guard = DirGuard::new(staging.clone());

        // Memory: one flat generation.
        let memory = staging.join("memory");
        let (map, memory_bytes) = {
            let (dir, header, memory) = (dir.clone(), header.clone(), memory.clone());
            blocking(move || warren_snapshot::flatten(&dir, &header, &memory, 0)).await
        }
        .map_err(|e| {
            let no_space = matches!(e, warren_snapshot::OpError::NoSpace { .. });
            SnapshotOpError::io("flattening the memory", e, no_space)
        })?;
        std::fs::copy(
            header.resolve(&dir, &header.device_state),
            staging.join("state"),
        )
        .map_err(|e| SnapshotOpError::io("copying the device state", &e, is_no_space(&e)))?;
        // Disk: one layer over the image's own root disk. A clone's base is
        // its template's disk: the new template goes down to that template's
        // base instead, so it never depends on another template (which could
        // then be deleted under it).
        let (root_disk, root_format) = match &meta.template {
            Some(parent) => {
                let parent = self
                    .template(parent)
                    .map_err(|e| SnapshotOpError::Corrupt {
                        id: sandbox_id.to_string(),
                        detail: format!("the template it was cloned from is unreadable: {e}"),
                    })?;
                (parent.base_disk, parent.base_disk_format)
            }
            None => (meta.base_disk.clone(), meta.base_disk_format.clone()),
        };
        let disk = staging.join("disk.qcow2");
        let frozen = header.resolve(&dir, &header.disk);
        disk::flatten(&root_disk, &root_format, &frozen, &disk)
            .await
            .map_err(|e| {
                let no_space = e.is_no_space();
                SnapshotOpError::io(
                    "flattening the disk",
                    crate::error::with_causes(&e),
                    no_space,
                )
            })?;
        let disk_bytes = warren_snapshot::allocated_bytes(&disk);
        let template_header = SnapshotHeader {
            memory_bytes: header.memory_bytes,
            generations: vec![Generation::sparse(0, "memory")],
            map,
            device_state: "state".into(),
            disk: "disk.qcow2".into(),
            created_unix_ms: now_ms(),
            meta: header.meta.clone(),
        };
        let template = TemplateMeta {
            name: name.to_string(),
            source_sandbox: sandbox_id.to_string(),
            spec: meta.spec.clone(),
            image_key: meta.image_key.clone(),
            base_disk: root_disk,
            base_disk_format: root_format,
            kernel: meta.kernel.clone(),
            initramfs: meta.initramfs.clone(),
            created_unix_ms: now_ms(),
            memory_bytes,
            disk_bytes,
        };
        let json = serde_json::to_vec_pretty(&template).expect("template meta serializes");
        {
            let (staging, target, templates) = (staging.clone(), target.clone(), templates.clone());
            blocking(move || -> std::io::Result<()> {
                process::write_atomic(&staging.join(TEMPLATE_META), &json)?;
                warren_snapshot::write_header_atomic(&staging, &template_header)
                    .map_err(std::io::Error::other)?;
                for file in ["memory", "state", "disk.qcow2"] {
                    std::fs::File::open(staging.join(file))?.sync_all()?;
                }
                fsync_dir(&staging)?;
                std::fs::rename(&staging, &target)?;
                fsync_dir(&templates)
            })
            .await
        }
        .map_err(|e| SnapshotOpError::io("committing the template", &e, is_no_space(&e)))?;
        guard.disarm();
        Ok(template)
    }

    /// Snapshot templates on this host.
    pub fn templates(&self) -> Vec<TemplateMeta> {
        let Ok(entries) = std::fs::read_dir(self.data_dir().join(TEMPLATES_DIR)) else {
            return Vec::new();
        };
        let mut all: Vec<TemplateMeta> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| std::fs::read(e.path().join(TEMPLATE_META)).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        all.sort_by(|a: &TemplateMeta, b| a.name.cmp(&b.name));
        all
    }

    /// One snapshot template.
    pub fn template(&self, name: &str) -> Result<TemplateMeta, SnapshotOpError> {
        validate_template_name(name)?;
        let path = self
            .data_dir()
            .join(TEMPLATES_DIR)
            .join(name)
            .join(TEMPLATE_META);
        let bytes =
            std::fs::read(&path).map_err(|_| SnapshotOpError::NoTemplate(name.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| SnapshotOpError::Corrupt {
            id: name.to_string(),
            detail: e.to_string(),
        })
    }

    /// Sandboxes (running or paused) created from template `name`.
    pub fn template_users(&self, name: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.sandboxes_dir()) else {
            return Vec::new();
        };
        let mut users: Vec<String> = entries
            .flatten()
            .filter_map(|e| read_meta(&e.path()).ok())
            .filter(|meta| meta.template.as_deref() == Some(name))
            .map(|meta| meta.id)
            .collect();
        users.sort();
        users
    }

    /// Deletes a snapshot template; refused while sandboxes use it.
    pub fn delete_template(&self, name: &str) -> Result<(), SnapshotOpError> {
        self.template(name)?;
        let users = self.template_users(name);
        if !users.is_empty() {
            return Err(SnapshotOpError::TemplateInUse {
                name: name.to_string(),
                users,
            });
        }
        let templates = self.data_dir().join(TEMPLATES_DIR);
        // Rename first so a half-deleted template is never listed.
        let trash = templates.join(format!(".{name}.deleting"));
        std::fs::rename(templates.join(name), &trash)
            .map_err(|e| SnapshotOpError::io("deleting the template", &e, false))?;
        let _ = fsync_dir(&templates);
        std::fs::remove_dir_all(&trash)
            .map_err(|e| SnapshotOpError::io("deleting the template", &e, false))
    }

    /// Creates a sandbox from a snapshot template: a clone. It starts from
    /// the template's memory (served lazily, shared on disk with every
    /// other clone) and disk (its own layer on top), with a new id and
    /// hostname; only `env`, `metadata` and `keep_disk` of `request` apply
    /// (image, vCPUs and memory are the template's).
    pub async fn clone_template(
        &self,
        name: &str,
        request: &SandboxSpec,
    ) -> Result<(Sandbox, ResumeReport), SnapshotOpError> {
        self.clone_template_with_id(crate::id::new_sandbox_id(), name, request)
            .await
    }

    /// [`Manager::clone_template`] with an id the caller chose, so that it
    /// can keep the id busy until it has registered the clone.
    pub async fn clone_template_with_id(
        &self,
        id: String,
        name: &str,
        request: &SandboxSpec,
    ) -> Result<(Sandbox, ResumeReport), SnapshotOpError> {
        let _busy = self.mark_busy(&id);
        let started = Instant::now();
        let template = self.template(name)?;
        let template_dir = self.data_dir().join(TEMPLATES_DIR).join(name);
        let template_header =
            warren_snapshot::read_header(&template_dir).map_err(|e| SnapshotOpError::Corrupt {
                id: name.to_string(),
                detail: e.to_string(),
            })?;
        let mut spec = template.spec.clone();
        spec.env = request.env.clone();
        spec.metadata = request.metadata.clone();
        spec.keep_disk = request.keep_disk;
        spec.validate(&self.host())
            .map_err(|e| SnapshotOpError::Create(CreateError::InvalidSpec(e)))?;
        let dir = self.sandboxes_dir().join(&id);
        std::fs::create_dir(&dir).map_err(|e| {
            SnapshotOpError::io("creating the sandbox directory", &e, is_no_space(&e))
        })?;
        let guard = DirGuard::new(dir.clone());
        let meta = SandboxMeta {
            id: id.clone(),
            spec,
            image_key: template.image_key.clone(),
            created_unix_ms: now_ms(),
            owner_pid: std::process::id(),
            ephemeral: self.ephemeral(),
            kernel: template.kernel.clone(),
            initramfs: template.initramfs.clone(),
            base_disk: template_dir.join("disk.qcow2"),
            base_disk_format: "qcow2".into(),
            template: Some(name.to_string()),
        };
        let meta_json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        process::write_atomic(&dir.join(SANDBOX_META), &meta_json).map_err(|e| {
            SnapshotOpError::io("writing the sandbox metadata", &e, is_no_space(&e))
        })?;
        // The clone's snapshot is the template's, by absolute path.
        let absolute = |file: &str| {
            template_header
                .resolve(&template_dir, file)
                .to_string_lossy()
                .into_owned()
        };
        let header = SnapshotHeader {
            memory_bytes: template_header.memory_bytes,
            generations: template_header
                .generations
                .iter()
                .map(|g| Generation {
                    file: absolute(&g.file),
                    ..g.clone()
                })
                .collect(),
            map: template_header.map.clone(),
            device_state: absolute(&template_header.device_state),
            disk: absolute(&template_header.disk),
            created_unix_ms: now_ms(),
            meta: serde_json::to_value(ChainMeta {
                disk_layers: Vec::new(),
                vcpus: template.spec.vcpus,
                memory_mib: template.spec.memory_mib,
            })
            .expect("chain meta serializes"),
        };
        warren_snapshot::write_header_atomic(&dir, &header)
            .map_err(|e| SnapshotOpError::io("writing the clone's snapshot header", e, false))?;
        let restored = self.restore(&id, &dir, meta, true).await?;
        guard.disarm();
        Ok((
            restored.sandbox,
            ResumeReport {
                duration_ms: started.elapsed().as_millis() as u64,
                chain_length: restored.chain_length,
            },
        ))
    }
}

struct Restored {
    sandbox: Sandbox,
    chain_length: usize,
}

fn read_meta(dir: &Path) -> Result<SandboxMeta, String> {
    let bytes = std::fs::read(dir.join(SANDBOX_META)).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Allocated bytes of the files in a directory tree (st_blocks * 512).
pub fn dir_allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Sets a restored guest's clock (unless the link handshake did) and, for
/// a clone, its identity (host name, reseeded random generator): one call
/// to a current agent, a shell command for an agent from an older image.
async fn set_clock_and_identity(
    sandbox: &Sandbox,
    id: &str,
    new_identity: bool,
) -> Result<(), CreateError> {
    let failed = |what: &str, e: ExecError| CreateError::Agent {
        id: id.to_string(),
        detail: format!("{what} failed: {e}"),
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
    use std::os::unix::fs::FileExt;

    use warren_snapshot::{BLOCK_SIZE, BlockSource, DirtyReport};

    use super::*;

    const MIB: u32 = 4;

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
        let disk = dir.join(DISK_OVERLAY);

        // A layer prepared over an older snapshot is dropped, not used.
        create_overlay_durably(&older, "qcow2", &dir.join(RESUME_OVERLAY))
            .await
            .unwrap();
        assert!(!take_prepared_overlay(dir, &newer, &disk));
        assert!(!dir.join(RESUME_OVERLAY).exists() && !disk.exists());

        create_overlay_durably(&newer, "qcow2", &dir.join(RESUME_OVERLAY))
            .await
            .unwrap();
        assert!(take_prepared_overlay(dir, &newer, &disk));
        assert_eq!(qcow2_backing_file(&disk), Some(newer));
        assert!(!dir.join(RESUME_OVERLAY).exists());
        assert!(!take_prepared_overlay(dir, &older, &disk), "used once");
    }

    fn meta() -> SandboxMeta {
        SandboxMeta {
            id: "sb-test".into(),
            spec: SandboxSpec {
                memory_mib: MIB,
                ..SandboxSpec::default()
            },
            image_key: "key".into(),
            created_unix_ms: 0,
            owner_pid: 1,
            ephemeral: false,
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            base_disk: PathBuf::new(),
            base_disk_format: "raw".into(),
            template: None,
        }
    }

    fn block_of(dir: &Path, header: &SnapshotHeader, block: u64) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        if let Some(BlockSource::Gen(g)) = header.map.lookup(block) {
            let generation = header.generations.iter().find(|x| x.id == g).unwrap();
            let f = warren_snapshot::ops::open_generation(
                &header.resolve(dir, &generation.file),
                generation,
                0,
                header.map.blocks(),
            )
            .unwrap();
            f.read_exact_at(&mut buf, block * BLOCK_SIZE).unwrap();
        }
        buf
    }

    /// The pause record for generation `generation` (state `state.<g>`).
    fn record_pause(dir: &Path, generation: u32) {
        let pending = PendingPause {
            generation,
            state: format!("state.{generation}"),
            merge_cap: 10,
        };
        std::fs::write(
            dir.join(PENDING_PAUSE_FILE),
            serde_json::to_vec(&pending).unwrap(),
        )
        .unwrap();
    }

    /// The files a first pause leaves once its RAM and state are durable:
    /// RAM with two marked blocks, a device state, a disk layer, the record.
    fn interrupted_first_pause(dir: &Path) {
        let ram = std::fs::File::create(dir.join(warren_vmm::config::files::MEMORY)).unwrap();
        ram.set_len(u64::from(MIB) << 20).unwrap();
        ram.write_all_at(&[7u8; 4096], 3 * BLOCK_SIZE).unwrap();
        ram.write_all_at(&[9u8; 4096], 200 * BLOCK_SIZE).unwrap();
        std::fs::write(dir.join("state.0"), b"device state").unwrap();
        std::fs::write(dir.join(DISK_OVERLAY), b"disk layer").unwrap();
        record_pause(dir, 0);
    }

    #[test]
    fn a_first_pause_cut_off_after_its_ram_was_durable_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let header = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        assert_eq!(header.device_state, "state.0");
        assert_eq!(read_existing_header(dir.path()).unwrap().unwrap(), header);
        assert_eq!(block_of(dir.path(), &header, 3), vec![7u8; 4096]);
        assert_eq!(block_of(dir.path(), &header, 200), vec![9u8; 4096]);
        assert_eq!(block_of(dir.path(), &header, 4), vec![0u8; 4096]);
        assert!(!dir.path().join(PENDING_PAUSE_FILE).exists());
        assert!(dir.path().join(&header.disk).exists());
    }

    #[test]
    fn a_commit_cut_off_after_the_ram_rename_is_finished_the_same() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        // The crash came after `memory` became `mem.0`.
        std::fs::rename(
            dir.path().join(warren_vmm::config::files::MEMORY),
            dir.path().join("mem.0"),
        )
        .unwrap();
        let header = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        assert_eq!(block_of(dir.path(), &header, 200), vec![9u8; 4096]);
    }

    /// How far an interrupted diff pause got with its work file.
    #[derive(Clone, Copy, PartialEq)]
    enum WorkFile {
        /// Still there.
        Left,
        /// Packed into `mem.1` and deleted.
        Packed,
        /// Renamed to `mem.1` (a warren from before packed diffs).
        RenamedSparse,
    }

    /// A resumed run rewrote block 3 and zeroed block 200, then the daemon
    /// wrote its report and warren died before the commit, with the work
    /// file in state `work_file`.
    fn diff_pause_committed_after_a_crash(work_file: WorkFile) {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let first = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        let work = dir.path().join("mem.1.work");
        let file = std::fs::File::create(&work).unwrap();
        file.set_len(u64::from(MIB) << 20).unwrap();
        file.write_all_at(&[5u8; 4096], 3 * BLOCK_SIZE).unwrap();
        let report = DirtyReport {
            data_runs: vec![(3, 1)],
            zero_runs: vec![(200, 1)],
            ..DirtyReport::default()
        };
        warren_snapshot::write_dirty_report(&warren_snapshot::dirty_report_path(&work), &report)
            .unwrap();
        std::fs::write(dir.path().join("state.1"), b"device state 1").unwrap();
        std::fs::write(dir.path().join(DISK_OVERLAY), b"disk layer 1").unwrap();
        record_pause(dir.path(), 1);

        let blocks = (u64::from(MIB) << 20) / BLOCK_SIZE;
        match work_file {
            WorkFile::Left => {}
            WorkFile::Packed => {
                warren_snapshot::pack(&work, &report.data_runs, blocks, &dir.path().join("mem.1"))
                    .unwrap();
                std::fs::remove_file(&work).unwrap();
            }
            WorkFile::RenamedSparse => std::fs::rename(&work, dir.path().join("mem.1")).unwrap(),
        }

        let header = finish_interrupted_pause(dir.path(), &meta(), Some(first)).unwrap();
        assert_eq!(header.device_state, "state.1");
        assert_eq!(block_of(dir.path(), &header, 3), vec![5u8; 4096]);
        assert_eq!(block_of(dir.path(), &header, 200), vec![0u8; 4096]);
        let diff = header.generations.iter().find(|g| g.id == 1).unwrap();
        assert_eq!(
            diff.packed,
            work_file != WorkFile::RenamedSparse,
            "{header:?}"
        );
        assert!(!work.exists());
        assert!(!warren_snapshot::dirty_report_path(&work).exists());
        assert!(!dir.path().join(PENDING_PAUSE_FILE).exists());
    }

    #[test]
    fn a_diff_pause_whose_daemon_ended_is_committed_from_its_report() {
        diff_pause_committed_after_a_crash(WorkFile::Left);
    }

    #[test]
    fn a_diff_pause_that_crashed_after_packing_is_committed_from_the_packed_diff() {
        diff_pause_committed_after_a_crash(WorkFile::Packed);
    }

    #[test]
    fn a_diff_an_older_warren_left_sparse_is_committed_as_sparse() {
        diff_pause_committed_after_a_crash(WorkFile::RenamedSparse);
    }

    #[test]
    fn a_pause_without_its_memory_is_not_committed_and_the_old_snapshot_stands() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let first = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        std::fs::write(dir.path().join("state.1"), b"device state 1").unwrap();
        record_pause(dir.path(), 1);
        let error = finish_interrupted_pause(dir.path(), &meta(), Some(first.clone())).unwrap_err();
        assert!(error.contains("memory daemon is gone"), "{error}");
        assert_eq!(read_existing_header(dir.path()).unwrap().unwrap(), first);
        assert!(!dir.path().join(PENDING_PAUSE_FILE).exists());
    }

    #[test]
    fn a_record_left_after_the_commit_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let pending = std::fs::read(dir.path().join(PENDING_PAUSE_FILE)).unwrap();
        let header = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        std::fs::write(dir.path().join(PENDING_PAUSE_FILE), pending).unwrap();
        let again = finish_interrupted_pause(dir.path(), &meta(), Some(header.clone())).unwrap();
        assert_eq!(again, header);
        assert!(!dir.path().join(PENDING_PAUSE_FILE).exists());
    }
}
