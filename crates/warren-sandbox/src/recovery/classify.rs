//! Reading a sandbox directory after a restart (whose it is, whether its
//! metadata and snapshot can be read) and the corrections recovery and the
//! reconciler share: quarantine, clearing a dead run's runtime files,
//! sweeping template leftovers, keeping a lost sandbox's disk and log.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use warren_snapshot::SnapshotHeader;

use warren_snapshot::FormatError;

use crate::dir::{DataDir, SandboxDir, TemplateEntry};
use crate::manager::{Manager, SandboxMeta};

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
    pub(super) fn new(kind: &str, id: &str, detail: impl Into<String>) -> Self {
        let fix = Self {
            kind: kind.into(),
            id: id.into(),
            detail: detail.into(),
        };
        tracing::warn!(kind = %fix.kind, id = %fix.id, "{}", fix.detail);
        fix
    }
}

/// How a directory in `sandboxes/` reads.
pub(super) enum DirState {
    /// Not ours to judge: an ephemeral sandbox of another live process.
    Foreign,
    /// Metadata missing or unreadable, or not a sandbox id.
    Corrupt(String),
    /// A sandbox of this warren.
    Ours {
        meta: Box<SandboxMeta>,
        header: Result<Option<SnapshotHeader>, FormatError>,
    },
}

impl Manager {
    /// Reads the directory `dir` (named `name`) of `sandboxes/`.
    pub(super) fn read_dir_state(&self, name: &str, dir: &Path) -> DirState {
        let dir = SandboxDir::new(dir);
        if !crate::id::is_valid_sandbox_id(name) {
            return DirState::Corrupt(format!("{name:?} is not a sandbox id"));
        }
        let meta = match std::fs::read(dir.meta()) {
            Ok(bytes) => match serde_json::from_slice::<SandboxMeta>(&bytes) {
                Ok(meta) => meta,
                Err(error) => {
                    return DirState::Corrupt(format!(
                        "its {} is unreadable: {error}",
                        SandboxDir::META
                    ));
                }
            },
            Err(error) => {
                return DirState::Corrupt(format!("its {} is missing: {error}", SandboxDir::META));
            }
        };
        if meta.id != name {
            return DirState::Corrupt(format!(
                "its {} names sandbox {:?}, not {name}",
                SandboxDir::META,
                meta.id
            ));
        }
        if meta.owned_by_another_live_process() {
            return DirState::Foreign;
        }
        let header = if dir.has_snapshot() {
            warren_snapshot::read_header(dir.path()).map(Some)
        } else {
            Ok(None)
        };
        DirState::Ours {
            meta: Box::new(meta),
            header,
        }
    }

    /// Moves `path` to `quarantine/` under a unique name and logs why.
    pub(super) fn quarantine(&self, name: &str, path: &Path, reason: &str) -> Fix {
        let target = DataDir::new(self.data_dir()).quarantine(name, unix_ms());
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
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

    /// Removes template staging directories of processes that are gone
    /// (`.<name>.<pid>.tmp`) and half-deleted templates (`.<name>.deleting`).
    pub(super) fn sweep_template_leftovers(&self) -> Vec<Fix> {
        let templates = DataDir::new(self.data_dir()).templates();
        let Ok(entries) = std::fs::read_dir(&templates) else {
            return Vec::new();
        };
        let mut fixes = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = match DataDir::template_entry(&name) {
                TemplateEntry::Staging { pid } => {
                    pid != std::process::id() && !warren_vmm::process::is_running(pid)
                }
                TemplateEntry::Leftover => true,
                TemplateEntry::Template | TemplateEntry::Other => false,
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
    pub(super) fn clear_runtime_files(&self, dir: &Path) -> Vec<String> {
        let mut removed = Vec::new();
        let mount = SandboxDir::new(dir).memfs_mount();
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
            if SandboxDir::is_runtime_file(&name) && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    /// For a sandbox that is lost (its VM is gone and it has no snapshot)
    /// and asked to keep its disk: moves its writable disk layer, metadata
    /// and console log to `kept/<id>.<ms>/` before the directory goes.
    /// Returns where, or `None` if it did not ask (or nothing was kept).
    pub fn keep_lost_disk(
        &self,
        id: &str,
        dir: &Path,
        spec: &crate::spec::SandboxSpec,
    ) -> Option<PathBuf> {
        let sandbox = SandboxDir::new(dir);
        if !spec.keep_disk || !sandbox.disk().is_file() {
            return None;
        }
        let data = DataDir::new(self.data_dir());
        let kept = data.kept_dir();
        let (target, staging) = data.kept(id, unix_ms());
        let moved = (|| {
            std::fs::create_dir_all(&staging)?;
            for from in [sandbox.meta(), sandbox.console_log(), sandbox.disk()] {
                let name = from.file_name().expect("a file in the sandbox directory");
                if from.exists() {
                    // Same file system: a rename, not a copy.
                    std::fs::rename(&from, staging.join(name))?;
                }
            }
            crate::dir::fsync_dir(&staging)?;
            std::fs::rename(&staging, &target)?;
            crate::dir::fsync_dir(&kept)
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
        let mut found: Vec<PathBuf> = std::fs::read_dir(DataDir::new(self.data_dir()).kept_dir())
            .ok()?
            .flatten()
            .filter(|e| DataDir::is_kept_of(&e.file_name().to_string_lossy(), id))
            .map(|e| e.path())
            .collect();
        found.sort();
        found.pop()
    }

    /// Keeps the end of a lost sandbox's console log in `logs/<id>.log`.
    pub(super) fn keep_console_log(&self, id: &str, dir: &Path) {
        let target = DataDir::new(self.data_dir()).console_log(id);
        if let Some(logs) = target.parent() {
            let _ = std::fs::create_dir_all(logs);
        }
        let tail = warren_vmm::process::tail_of(&SandboxDir::new(dir).console_log(), 1 << 20);
        let _ = std::fs::write(target, tail);
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// How long ago `dir` last changed.
pub(super) fn dir_age(dir: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(dir).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}
