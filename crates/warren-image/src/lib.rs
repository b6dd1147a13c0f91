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

pub use agent::{GUEST_AGENT_ENV, find_guest_agent};
pub use cache::{Manifest, ManifestFile};
pub use error::{CommandError, GUEST_AGENT_BUILD_HINT, ImageError, ModuleError};
pub use initramfs::{InitramfsDetails, MODULES_LIST_PATH, MODULES_PATH, modules_in};
pub use kernel::{KernelDetails, ModuleInfo};
pub use progress::{NoProgress, Progress, TracingProgress};
pub use rootfs::{DEFAULT_MIRROR, FS_LABEL, ImageRecipe, MIRROR_ENV, RootfsDetails};
pub use store::{CachedPart, EnsureOptions, Image, ImageStore, PartKind};

// Where a local service keeps its data is part of the contract between the
// service and its clients (the CLI finds the admin key there), so it lives in
// warren-api; re-exported for the service side.
pub use warren_api::local::{HOME_ENV, default_data_dir};
