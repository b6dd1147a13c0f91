//! Loading the kernel modules the initramfs carries.
//!
//! Debian's cloud kernel builds every virtio driver as a module, so the
//! disk and the agent's serial port only exist once the init loads them.
//! The image builder writes the load order (dependencies first) into
//! `/etc/warren/modules`; there is no `modules.dep` and no modprobe.

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

use crate::logging::{console, console_debug};

/// The list of modules to load, in order.
pub const MODULE_LIST: &str = "/etc/warren/modules";
/// Where the module files are.
pub const MODULE_DIR: &str = "/lib/modules";

/// Parses the module list: one file name per line (`.ko` optional), blank
/// lines and `#` comments ignored, path components refused.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|line| !line.contains('/') && *line != "." && *line != "..")
        .map(|line| {
            if line.ends_with(".ko") {
                line.to_string()
            } else {
                format!("{line}.ko")
            }
        })
        .collect()
}

/// Loads every listed module. A failure is reported on the console and the
/// rest are still tried: the root mount that follows gives the decisive
/// error if something essential is missing. Returns how many failed.
pub fn load_all() -> usize {
    let list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(text) => text,
        Err(error) => {
            console_debug(&format!("no module list at {MODULE_LIST} ({error})"));
            return 0;
        }
    };
    let mut failures = 0;
    for name in parse_list(&list) {
        let path = Path::new(MODULE_DIR).join(&name);
        match load(&path) {
            Ok(()) => console_debug(&format!("loaded module {name}")),
            Err(error) => {
                failures += 1;
                console(&format!(
                    "loading kernel module {}: {error}",
                    path.display()
                ));
            }
        }
    }
    failures
}

fn load(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        // Built in or already loaded: fine.
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(format!("{errno} ({})", errno.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_module_list() {
        let text = "virtio_ring.ko\n  virtio\n\n# comment\nvirtio_blk.ko\n../evil.ko\n";
        assert_eq!(
            parse_list(text),
            ["virtio_ring.ko", "virtio.ko", "virtio_blk.ko"]
        );
    }
}
