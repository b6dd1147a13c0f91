//! The names of every file warren keeps on disk for sandboxes, and the two
//! primitives every change of them goes through.
//!
//! A sandbox directory (`<data>/sandboxes/<id>/`) holds, besides its
//! metadata:
//!
//! | file | what |
//! |---|---|
//! | `sandbox.json` | `SandboxMeta` (the manager's): how it was made |
//! | `memory` | guest RAM of a cold-booted VM (QEMU maps it shared) |
//! | `memfs/memory` | guest RAM of a resumed VM, served by `warren-memfs` |
//! | `memfs.pid`, `memfs.log` | that daemon's pid file and log |
//! | `mem.<g>.work` | what the resumed guest wrote, becomes `mem.<g>` |
//! | `disk.qcow2` | the writable disk layer of the running VM |
//! | `resume.qcow2` | the empty layer a pause prepared for the next resume |
//! | `SNAPSHOT` | the committed snapshot (see warren-snapshot's FORMAT.md) |
//! | `mem.<g>` | memory generation `g` (sparse or packed) |
//! | `state.<g>` | QEMU device state saved at generation `g` |
//! | `disk.g<g>.qcow2` | the disk layer frozen at generation `g` |
//! | `disk.g<g>f.qcow2` | the disk chain flattened at generation `g` |
//! | `PAUSE-PENDING` | a pause whose material is complete but not yet committed |
//! | `qmp.sock`, `agent.sock`, `vmm.pid`, `vmm.log`, `console.log`, `kernel.restore` | the VM's runtime files ([`warren_vmm::config::files`]) |
//!
//! Every name is spelled here once ([`SandboxDir`], [`DataDir`]); the
//! modules that write files and the crash recovery that judges what a
//! crash left behind (temporary files included) both ask this module, so
//! they cannot disagree. The names are an on-disk format: sandboxes paused
//! by an earlier warren must still load, so none may change.
//!
//! The primitives: [`write_atomic`] (a small file is replaced whole or not
//! at all) and [`DataDir::trash`] (a directory is deleted by a rename first,
//! so a crash never leaves it half deleted).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use warren_vmm::config::files;

/// One sandbox's directory and the names of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    path: PathBuf,
}

impl SandboxDir {
    /// The sandbox's metadata.
    pub const META: &'static str = "sandbox.json";
    /// The writable disk layer of the running VM.
    pub const DISK: &'static str = "disk.qcow2";
    /// The empty disk layer a pause prepares for the next resume.
    pub const RESUME_DISK: &'static str = "resume.qcow2";
    /// The committed snapshot header.
    pub const HEADER: &'static str = warren_snapshot::HEADER_FILE;
    /// A pause whose material is durable but not yet committed.
    pub const PENDING_PAUSE: &'static str = "PAUSE-PENDING";
    /// Guest RAM of a cold-booted VM.
    pub const RAM: &'static str = files::MEMORY;
    /// The memory daemon's mount point.
    pub const MEMFS_MOUNT: &'static str = "memfs";
    /// The memory daemon's pid file (its mount with `.pid`).
    pub const MEMFS_PID: &'static str = "memfs.pid";
    /// The memory daemon's log (its mount with `.log`).
    pub const MEMFS_LOG: &'static str = "memfs.log";

    /// The directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// [`Self::META`].
    pub fn meta(&self) -> PathBuf {
        self.join(Self::META)
    }

    /// [`Self::DISK`].
    pub fn disk(&self) -> PathBuf {
        self.join(Self::DISK)
    }

    /// [`Self::RESUME_DISK`].
    pub fn resume_disk(&self) -> PathBuf {
        self.join(Self::RESUME_DISK)
    }

    /// Where [`warren_vmm::disk::create_overlay_durably`] writes
    /// [`Self::RESUME_DISK`] before its rename (`resume.tmp`).
    pub fn resume_disk_temp(&self) -> PathBuf {
        self.resume_disk().with_extension("tmp")
    }

    /// [`Self::HEADER`].
    pub fn header(&self) -> PathBuf {
        self.join(Self::HEADER)
    }

    /// Whether a snapshot is committed here (the sandbox is paused, or
    /// runs with a snapshot to fall back to).
    pub fn has_snapshot(&self) -> bool {
        self.header().exists()
    }

    /// [`Self::PENDING_PAUSE`].
    pub fn pending_pause(&self) -> PathBuf {
        self.join(Self::PENDING_PAUSE)
    }

    /// [`Self::RAM`].
    pub fn ram(&self) -> PathBuf {
        self.join(Self::RAM)
    }

    /// [`Self::MEMFS_MOUNT`].
    pub fn memfs_mount(&self) -> PathBuf {
        self.join(Self::MEMFS_MOUNT)
    }

    /// The memory daemon's work file while generation `generation` is
    /// being written (`mem.<g>.work`).
    pub fn memory_work(&self, generation: u32) -> PathBuf {
        self.join(format!("mem.{generation}.work"))
    }

    /// The file name of memory generation `generation` (`mem.<g>`).
    pub fn memory_name(generation: u32) -> String {
        format!("mem.{generation}")
    }

    /// The file name of the device state of generation `generation`
    /// (`state.<g>`).
    pub fn state_name(generation: u32) -> String {
        format!("state.{generation}")
    }

    /// The device state file of generation `generation`.
    pub fn state_file(&self, generation: u32) -> PathBuf {
        self.join(Self::state_name(generation))
    }

    /// The file name of the disk layer frozen at `generation`
    /// (`disk.g<g>.qcow2`).
    pub fn frozen_disk_name(generation: u32) -> String {
        format!("disk.g{generation}.qcow2")
    }

    /// The file name of the disk chain flattened at `generation`
    /// (`disk.g<g>f.qcow2`).
    pub fn flat_disk_name(generation: u32) -> String {
        format!("disk.g{generation}f.qcow2")
    }

    /// The guest console log.
    pub fn console_log(&self) -> PathBuf {
        self.join(files::CONSOLE_LOG)
    }

    /// The stub kernel a restore writes (not needed while paused).
    pub fn restore_kernel(&self) -> PathBuf {
        self.join(files::RESTORE_KERNEL)
    }

    /// Whether `name` is a disk layer of a snapshot (frozen or flattened,
    /// or the temporary file of a flattening).
    pub fn is_disk_layer(name: &str) -> bool {
        name.starts_with("disk.g")
    }

    /// Whether `name` is a memory generation or device state (or the
    /// temporary file of one): what a snapshot header may reference.
    pub fn is_snapshot_file(name: &str) -> bool {
        name.starts_with("mem.") || name.starts_with("state.")
    }

    /// Whether `name` is a file a running VM or memory daemon leaves that
    /// means nothing once they are gone: sockets, pid files, logs of the
    /// daemon, memory work files and their dirty reports, and the
    /// temporary file of an interrupted `write_atomic`.
    pub fn is_runtime_file(name: &str) -> bool {
        name.ends_with(".sock")
            || name == files::PID
            || name == Self::MEMFS_PID
            || name == Self::MEMFS_LOG
            || name.ends_with(".work")
            || name.ends_with(".work.dirty")
            || is_atomic_write_temp(name)
    }
}

/// A data directory (`$WARREN_HOME`) and the names of what it holds
/// besides images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Sandbox directories.
    pub const SANDBOXES: &'static str = "sandboxes";
    /// Directories being deleted: a rename is atomic, a recursive delete
    /// is not. Emptied at start and by every reconcile.
    pub const TRASH: &'static str = "trash";
    /// Directories recovery could not understand (never deleted).
    pub const QUARANTINE: &'static str = "quarantine";
    /// Disks of lost sandboxes that asked to keep them.
    pub const KEPT: &'static str = "kept";
    /// Console logs of lost sandboxes.
    pub const LOGS: &'static str = "logs";
    /// Snapshot templates.
    pub const TEMPLATES: &'static str = "templates";
    /// A template's metadata.
    pub const TEMPLATE_META: &'static str = "template.json";
    /// A template's one memory generation.
    pub const TEMPLATE_MEMORY: &'static str = "memory";
    /// A template's device state.
    pub const TEMPLATE_STATE: &'static str = "state";
    /// A template's one disk layer.
    pub const TEMPLATE_DISK: &'static str = "disk.qcow2";

    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// [`Self::SANDBOXES`].
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join(Self::SANDBOXES)
    }

    /// The directory of sandbox `id`.
    pub fn sandbox(&self, id: &str) -> SandboxDir {
        SandboxDir::new(self.sandboxes().join(id))
    }

    /// [`Self::TRASH`].
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join(Self::TRASH)
    }

    /// Where the directory `name` is quarantined at `unix_ms`.
    pub fn quarantine(&self, name: &str, unix_ms: u128) -> PathBuf {
        self.root
            .join(Self::QUARANTINE)
            .join(format!("{name}.{unix_ms}"))
    }

    /// [`Self::KEPT`].
    pub fn kept_dir(&self) -> PathBuf {
        self.root.join(Self::KEPT)
    }

    /// Where the disk of lost sandbox `id` is kept (`kept/<id>.<ms>`), and
    /// the staging directory it is assembled in first.
    pub fn kept(&self, id: &str, unix_ms: u128) -> (PathBuf, PathBuf) {
        let kept = self.kept_dir();
        (
            kept.join(format!("{id}.{unix_ms}")),
            kept.join(format!(".{id}.{unix_ms}.tmp")),
        )
    }

    /// Whether `name` in [`Self::KEPT`] is a kept disk of sandbox `id`.
    pub fn is_kept_of(name: &str, id: &str) -> bool {
        name.strip_prefix(id)
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The kept console log of lost sandbox `id`.
    pub fn console_log(&self, id: &str) -> PathBuf {
        self.root.join(Self::LOGS).join(format!("{id}.log"))
    }

    /// [`Self::TEMPLATES`].
    pub fn templates(&self) -> PathBuf {
        self.root.join(Self::TEMPLATES)
    }

    /// The directory of template `name`.
    pub fn template(&self, name: &str) -> PathBuf {
        self.templates().join(name)
    }

    /// Where process `pid` builds template `name` before its rename.
    pub fn template_staging(&self, name: &str, pid: u32) -> PathBuf {
        self.templates().join(format!(".{name}.{pid}.tmp"))
    }

    /// Where template `name` goes while it is deleted.
    pub fn template_deleting(&self, name: &str) -> PathBuf {
        self.templates().join(format!(".{name}.deleting"))
    }

    /// What an entry `name` of [`Self::TEMPLATES`] is.
    pub fn template_entry(name: &str) -> TemplateEntry {
        if !name.starts_with('.') {
            return TemplateEntry::Template;
        }
        if let Some(rest) = name.strip_suffix(".tmp") {
            return match rest.rsplit_once('.').and_then(|(_, pid)| pid.parse().ok()) {
                Some(pid) => TemplateEntry::Staging { pid },
                None => TemplateEntry::Leftover,
            };
        }
        if name.ends_with(".deleting") {
            TemplateEntry::Leftover
        } else {
            TemplateEntry::Other
        }
    }

    /// Deletes `path` (a file or directory of this data directory) so that
    /// a crash cannot leave it half done: it is renamed into
    /// [`Self::TRASH`] under a unique name, the rename is made durable (the
    /// old parent is fsynced), and then the copy in the trash is removed.
    /// A `path` that does not exist is already deleted.
    pub fn trash(&self, path: &Path) -> std::io::Result<()> {
        let trash = self.trash_dir();
        std::fs::create_dir_all(&trash)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let target = trash.join(format!("{name}.{}.{nanos}", std::process::id()));
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        }
        if let Some(parent) = path.parent() {
            let _ = fsync_dir(parent);
        }
        if target.is_dir() {
            std::fs::remove_dir_all(&target)
        } else {
            std::fs::remove_file(&target)
        }
    }

    /// Empties [`Self::TRASH`]; returns how many entries went.
    pub fn sweep_trash(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.trash_dir()) else {
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
}

/// What an entry of the templates directory is ([`DataDir::template_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateEntry {
    /// A committed template.
    Template,
    /// A template being built by process `pid`.
    Staging {
        /// The building process.
        pid: u32,
    },
    /// What an interrupted build or delete left.
    Leftover,
    /// Something warren does not name.
    Other,
}

/// Replaces the small file `path` with `contents` atomically (a temporary
/// file, fsync, rename, fsync of the directory): a crash leaves the old
/// contents or the new, never a torn file. The one way metadata, records
/// and pid files are written; [`warren_vmm::process::write_atomic`] does the
/// work, and its temporary file (`.<name>.tmp-<pid>`) is what
/// [`SandboxDir::is_runtime_file`] recognises.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    warren_vmm::process::write_atomic(path, contents)
}

/// Whether `name` is the temporary file of an interrupted [`write_atomic`]
/// (`.<name>.tmp-<pid>`).
fn is_atomic_write_temp(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Makes the entries of `dir` (a rename, a new file) durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_on_disk_format_of_earlier_warrens() {
        let dir = SandboxDir::new("/d/sandboxes/sb-1");
        assert_eq!(dir.meta(), Path::new("/d/sandboxes/sb-1/sandbox.json"));
        assert_eq!(dir.disk(), Path::new("/d/sandboxes/sb-1/disk.qcow2"));
        assert_eq!(
            dir.resume_disk(),
            Path::new("/d/sandboxes/sb-1/resume.qcow2")
        );
        assert_eq!(
            dir.resume_disk_temp(),
            Path::new("/d/sandboxes/sb-1/resume.tmp")
        );
        assert_eq!(dir.header(), Path::new("/d/sandboxes/sb-1/SNAPSHOT"));
        assert_eq!(
            dir.pending_pause(),
            Path::new("/d/sandboxes/sb-1/PAUSE-PENDING")
        );
        assert_eq!(dir.ram(), Path::new("/d/sandboxes/sb-1/memory"));
        assert_eq!(dir.memfs_mount(), Path::new("/d/sandboxes/sb-1/memfs"));
        assert_eq!(
            dir.memory_work(3),
            Path::new("/d/sandboxes/sb-1/mem.3.work")
        );
        assert_eq!(dir.state_file(3), Path::new("/d/sandboxes/sb-1/state.3"));
        assert_eq!(SandboxDir::memory_name(3), "mem.3");
        assert_eq!(SandboxDir::frozen_disk_name(3), "disk.g3.qcow2");
        assert_eq!(SandboxDir::flat_disk_name(3), "disk.g3f.qcow2");
        assert_eq!(
            dir.console_log(),
            Path::new("/d/sandboxes/sb-1/console.log")
        );
        assert_eq!(
            dir.restore_kernel(),
            Path::new("/d/sandboxes/sb-1/kernel.restore")
        );
        // The daemon derives its pid file and log from its mount.
        assert_eq!(
            dir.memfs_mount().with_extension("pid"),
            dir.join(SandboxDir::MEMFS_PID)
        );
        assert_eq!(
            dir.memfs_mount().with_extension("log"),
            dir.join(SandboxDir::MEMFS_LOG)
        );
        // The dirty report of a work file is a runtime file.
        let report = warren_snapshot::dirty_report_path(&dir.memory_work(3));
        let report = report.file_name().unwrap().to_str().unwrap();
        assert!(SandboxDir::is_runtime_file(report), "{report}");

        let data = DataDir::new("/d");
        assert_eq!(data.sandbox("sb-1"), dir);
        assert_eq!(data.trash_dir(), Path::new("/d/trash"));
        assert_eq!(data.quarantine("x", 5), Path::new("/d/quarantine/x.5"));
        assert_eq!(
            data.kept("sb-1", 5),
            (
                PathBuf::from("/d/kept/sb-1.5"),
                PathBuf::from("/d/kept/.sb-1.5.tmp")
            )
        );
        assert_eq!(data.console_log("sb-1"), Path::new("/d/logs/sb-1.log"));
        assert_eq!(data.template("t"), Path::new("/d/templates/t"));
        assert_eq!(
            data.template_staging("t", 9),
            Path::new("/d/templates/.t.9.tmp")
        );
        assert_eq!(
            data.template_deleting("t"),
            Path::new("/d/templates/.t.deleting")
        );
    }

    #[test]
    fn files_are_told_apart_by_name() {
        for runtime in [
            "qmp.sock",
            "agent.sock",
            "vmm.pid",
            "memfs.pid",
            "memfs.log",
            "mem.4.work",
            "mem.4.work.dirty",
            ".sandbox.json.tmp-1234",
        ] {
            assert!(SandboxDir::is_runtime_file(runtime), "{runtime}");
        }
        for kept in [
            "sandbox.json",
            "SNAPSHOT",
            "mem.4",
            "state.4",
            "disk.g4.qcow2",
            "console.log",
            ".hidden",
            ".x.tmp-",
        ] {
            assert!(!SandboxDir::is_runtime_file(kept), "{kept}");
        }
        assert!(SandboxDir::is_snapshot_file("mem.4") && SandboxDir::is_snapshot_file("state.0"));
        assert!(!SandboxDir::is_snapshot_file("memory"));
        assert!(SandboxDir::is_disk_layer("disk.g4f.qcow2.tmp"));
        assert!(!SandboxDir::is_disk_layer("disk.qcow2"));
        assert_eq!(DataDir::template_entry("t"), TemplateEntry::Template);
        assert_eq!(
            DataDir::template_entry(".t.9.tmp"),
            TemplateEntry::Staging { pid: 9 }
        );
        assert_eq!(DataDir::template_entry(".t.tmp"), TemplateEntry::Leftover);
        assert_eq!(
            DataDir::template_entry(".t.deleting"),
            TemplateEntry::Leftover
        );
        assert_eq!(DataDir::template_entry(".t"), TemplateEntry::Other);
        assert!(DataDir::is_kept_of("sb-1.5", "sb-1"));
        assert!(!DataDir::is_kept_of("sb-10.5", "sb-1"));
    }

    #[test]
    fn an_atomic_write_leaves_the_old_contents_or_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.json");
        write_atomic(&path, b"old").unwrap();
        // A write that cannot complete (the target is now a non-empty
        // directory, so the rename fails) leaves what was there and no
        // temporary file.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(write_atomic(&blocked, b"new").is_err());
        assert!(blocked.join("inside").exists());
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["blocked", "sandbox.json"]);
    }

    #[test]
    fn trash_removes_files_and_directories_whole_and_tolerates_missing_ones() {
        let home = tempfile::tempdir().unwrap();
        let data = DataDir::new(home.path());
        let sandbox = data.sandbox("sb-1");
        std::fs::create_dir_all(sandbox.memfs_mount()).unwrap();
        std::fs::write(sandbox.meta(), b"{}").unwrap();
        let stray = home.path().join("stray");
        std::fs::write(&stray, b"x").unwrap();

        data.trash(sandbox.path()).unwrap();
        data.trash(&stray).unwrap();
        data.trash(&home.path().join("missing")).unwrap();

        assert!(!sandbox.path().exists() && !stray.exists());
        assert_eq!(std::fs::read_dir(data.trash_dir()).unwrap().count(), 0);
        // What a crash left in the trash is swept.
        std::fs::create_dir_all(data.trash_dir().join("left.1.2/inner")).unwrap();
        std::fs::write(data.trash_dir().join("file.1.2"), b"x").unwrap();
        assert_eq!(data.sweep_trash(), 2);
        assert_eq!(std::fs::read_dir(data.trash_dir()).unwrap().count(), 0);
    }
}
