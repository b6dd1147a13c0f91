//! The guest image pipeline: everything a sandbox VM boots from.
//!
//! An [`Image`] is three files, each a separately cached *part*:
//!
//! | part | file | made from | key (hash of) |
//! |---|---|---|---|
//! | `kernel-<key>/` | `vmlinuz`, `modules/*.ko` | Debian's `linux-image-cloud-amd64`, resolved to its versioned package | recipe version, metapackage, package name + version, module list |
//! | `initramfs-<key>/` | `initramfs.cpio` (uncompressed newc) | the guest agent as `/init`, the kernel's modules, `/etc/warren/modules` (load order) | kernel key, SHA-256 of the agent, format version |
//! | `rootfs-<name>-<key>/` | `rootfs.ext4` (sparse, read-only) | `mmdebstrap` (`debian`) or `busybox-static` (`tiny`) | every field of the recipe, format version, mirror |
//!
//! All parts live under `$WARREN_HOME/images` ([`default_data_dir`]). A part
//! is built in a staging directory, fsynced, and renamed into place, so a
//! directory with a final name is always complete; a lock per key makes a
//! second process wait for the first one's build and reuse it. Each part
//! has a `manifest.json` (inputs, versions, files, build time), written last.
//!
//! ```no_run
//! use warren_image::{ImageStore, NoProgress, default_data_dir, find_guest_agent};
//!
//! let store = ImageStore::open(&default_data_dir())?;
//! let image = store.ensure("debian", &find_guest_agent()?, &NoProgress)?;
//! println!("qemu -kernel {} -initrd {}", image.kernel.display(), image.initramfs.display());
//! # Ok::<(), warren_image::ImageError>(())
//! ```
//!
//! Building needs root (`mmdebstrap` in root mode, file ownership in the
//! ext4 image) and, on the host, the Debian packages `apt`, `dpkg`,
//! `e2fsprogs` and `mmdebstrap`; a missing one is reported with the package
//! to install. Using a built image needs neither.
//!
//! The [`cpio`] module (newc writer and bounded reader) is public so tests
//! and tools can build or inspect initramfs archives of their own.

#![warn(missing_docs)]

mod agent;
mod cache;
pub mod cpio;
mod elf;
mod error;
mod host;
mod initramfs;
mod kernel;
mod key;
mod mounts;
mod progress;
mod rootfs;
mod store;

use std::path::PathBuf;

pub use agent::{GUEST_AGENT_ENV, find_guest_agent};
pub use cache::{Manifest, ManifestFile};
pub use error::{CommandError, GUEST_AGENT_BUILD_HINT, ImageError, ModuleError};
pub use initramfs::{InitramfsDetails, MODULES_LIST_PATH, MODULES_PATH, modules_in};
pub use kernel::{KernelDetails, ModuleInfo};
pub use progress::{NoProgress, Progress, TracingProgress};
pub use rootfs::{DEFAULT_MIRROR, FS_LABEL, ImageRecipe, MIRROR_ENV, RootfsDetails};
pub use store::{CachedPart, EnsureOptions, Image, ImageStore, PartKind};

/// Environment variable that overrides the data directory.
pub const HOME_ENV: &str = "WARREN_HOME";

/// Where warren keeps images and sandboxes: `$WARREN_HOME` if set, else
/// `/var/lib/warren` for root (a system service), else
/// `$XDG_DATA_HOME/warren` or `~/.local/share/warren`.
pub fn default_data_dir() -> PathBuf {
    data_dir_from(
        std::env::var_os(HOME_ENV),
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

fn data_dir_from(
    warren_home: Option<std::ffi::OsString>,
    is_root: bool,
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    let set = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(warren_home) {
        return dir;
    }
    if is_root {
        return PathBuf::from("/var/lib/warren");
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = set(xdg_data_home).filter(|d| d.is_absolute()) {
        return dir.join("warren");
    }
    match set(home) {
        Some(home) => home.join(".local/share/warren"),
        None => std::env::temp_dir().join(format!("warren-{}", nix::unistd::geteuid())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_precedence() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(
            data_dir_from(s("/w"), true, s("/x"), s("/h")),
            PathBuf::from("/w")
        );
        assert_eq!(
            data_dir_from(s(""), true, s("/x"), s("/h")),
            PathBuf::from("/var/lib/warren")
        );
        assert_eq!(
            data_dir_from(None, false, s("/x"), s("/h")),
            PathBuf::from("/x/warren")
        );
        assert_eq!(
            data_dir_from(None, false, s("rel"), s("/h")),
            PathBuf::from("/h/.local/share/warren")
        );
        assert_eq!(
            data_dir_from(None, false, None, s("/h")),
            PathBuf::from("/h/.local/share/warren")
        );
    }
}
