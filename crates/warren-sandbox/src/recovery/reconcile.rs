//! The host half of the reconciler: ending what nothing owns.

use std::time::Duration;

use super::classify::{DirState, Fix, dir_age};
use crate::dir::DataDir;
use crate::manager::Manager;

impl Manager {
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
                &DataDir::new(self.data_dir()).sandbox(&id).memfs_mount(),
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
                            &format!(
                                "its snapshot header is unreadable: {}",
                                crate::error::with_causes(&error)
                            ),
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
        match self.networking().sweep(owned) {
            Ok(0) => {}
            Ok(removed) => fixes.push(Fix::new(
                "orphan_network",
                "",
                format!("removed {removed} network namespace(s) of sandboxes that are not running"),
            )),
            Err(error) => tracing::warn!(
                "sweeping sandbox networks failed: {}",
                crate::error::with_causes(&error)
            ),
        }
        let swept = DataDir::new(self.data_dir()).sweep_trash();
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
