//! [`ImageStore`]: the public face of the pipeline. It turns an image name
//! and an agent binary into the three files QEMU needs, building whatever
//! part is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::agent::GuestAgent;
use crate::cache::{Cache, Part, STALE_AFTER, allocated_bytes, read_manifest};
use crate::error::ImageError;
use crate::host::{self, APT_GET, DPKG_DEB, MKFS_EXT4, MMDEBSTRAP};
use crate::initramfs::{self, CPIO_FILE};
use crate::kernel::{self, KERNEL, VMLINUZ};
use crate::key::KeyHasher;
use crate::progress::Progress;
use crate::rootfs::{
    self, CATALOG, DEFAULT_MIRROR, IMAGE_FILE, ImageRecipe, MIRROR_ENV, RecipeKind, RootfsDetails,
};

/// The image cache under `<data_dir>/images`.
///
/// Cheap to open; every method is safe to call from several processes at
/// once (builds of the same part are serialised by a lock per part, and
/// published parts are never modified).
#[derive(Debug, Clone)]
pub struct ImageStore {
    cache: Cache,
    mirror: String,
}

/// Options of [`ImageStore::ensure_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EnsureOptions {
    /// Ask apt for the current kernel package even if a kernel from the
    /// same recipe is cached (picks up kernel updates; costs apt queries).
    pub refresh_kernel: bool,
}

impl EnsureOptions {
    /// Options that re-resolve the kernel package through apt.
    pub fn refresh_kernel() -> Self {
        Self {
            refresh_kernel: true,
        }
    }
}

/// A ready image: everything needed to boot a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image name (`debian`, `tiny`).
    pub name: String,
    /// The kernel (bzImage), for QEMU `-kernel`.
    pub kernel: PathBuf,
    /// The uncompressed initramfs, for QEMU `-initrd`.
    pub initramfs: PathBuf,
    /// The read-only ext4 base image, to put under a qcow2 overlay.
    pub rootfs: PathBuf,
    /// The kernel's release string (`uname -r`).
    pub kernel_version: String,
    /// Hash of the three parts' keys: equal keys mean identical images, so
    /// snapshots made from one image can be restored on the other.
    pub key: String,
}

/// The three kinds of cached parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartKind {
    /// A kernel with its modules.
    Kernel,
    /// An initramfs (agent + modules).
    Initramfs,
    /// A root filesystem image.
    Rootfs,
}

impl std::fmt::Display for PartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::Initramfs => "initramfs",
            Self::Rootfs => "rootfs",
        })
    }
}

/// One cached part, as `warren images` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPart {
    /// Which kind of part.
    pub kind: PartKind,
    /// The image name, for root filesystems.
    pub image: Option<String>,
    /// The part's cache key.
    pub key: String,
    /// Its directory.
    pub path: PathBuf,
    /// Bytes actually allocated on disk (`st_blocks * 512`, all files).
    pub allocated_bytes: u64,
    /// Sum of the files' apparent sizes (the rootfs is sparse).
    pub apparent_bytes: u64,
    /// When it was built.
    pub built_at: std::time::SystemTime,
    /// One line about its contents (package, agent hash, ...).
    pub summary: String,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `data_dir/images`, and
    /// removes what crashed builds left behind. The Debian mirror comes
    /// from `$WARREN_DEBIAN_MIRROR` (default `http://deb.debian.org/debian`).
    pub fn open(data_dir: &Path) -> Result<Self, ImageError> {
        Self::open_at(&data_dir.join("images"))
    }

    /// Opens (creating if needed) a store whose parts live directly in
    /// `images_dir`, for setups that share one image cache between several
    /// data directories (the test suite does).
    pub fn open_at(images_dir: &Path) -> Result<Self, ImageError> {
        let cache = Cache::open(images_dir)?;
        cache.sweep(STALE_AFTER)?;
        let mirror = std::env::var(MIRROR_ENV)
            .ok()
            .filter(|m| !m.trim().is_empty())
            .map_or_else(
                || DEFAULT_MIRROR.to_owned(),
                |m| rootfs::normalize_mirror(&m),
            );
        Ok(Self { cache, mirror })
    }

    /// Uses `mirror` (a URL such as `http://deb.debian.org/debian`, or a
    /// bare host name) for Debian images instead of the environment's. The
    /// mirror is part of the Debian image's key: it is written into the
    /// image's apt sources.
    pub fn with_mirror(mut self, mirror: &str) -> Self {
        self.mirror = rootfs::normalize_mirror(mirror);
        self
    }

    /// The `images/` directory.
    pub fn root(&self) -> &Path {
        self.cache.root()
    }

    /// The images this version can build, with one-line descriptions. The
    /// first is the default.
    pub fn catalog() -> &'static [ImageRecipe] {
        &CATALOG
    }

    /// Name of the default image (`debian`).
    pub fn default_image() -> &'static str {
        CATALOG[0].name
    }

    /// Returns the image `name`, building whatever part is missing (kernel,
    /// initramfs with `guest_agent` as `/init`, root filesystem). Safe to
    /// call from several processes at once. A cached kernel is reused
    /// without asking apt; see [`ImageStore::ensure_with`].
    pub fn ensure(
        &self,
        name: &str,
        guest_agent: &Path,
        progress: &dyn Progress,
    ) -> Result<Image, ImageError> {
        self.ensure_with(name, guest_agent, &EnsureOptions::default(), progress)
    }

    /// [`ImageStore::ensure`] with options.
    pub fn ensure_with(
        &self,
        name: &str,
        guest_agent: &Path,
        options: &EnsureOptions,
        progress: &dyn Progress,
    ) -> Result<Image, ImageError> {
        let recipe =
            CATALOG
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(|| ImageError::UnknownImage {
                    name: name.to_owned(),
                    available: CATALOG.iter().map(|r| r.name.to_owned()).collect(),
                })?;
        let agent = GuestAgent::load(guest_agent)?;
        let rootfs_part = format!("rootfs-{}", recipe.name);
        let rootfs_key = rootfs::rootfs_key(recipe, &self.mirror);
        let rootfs_cached = self
            .cache
            .load::<RootfsDetails>(&rootfs_part, &rootfs_key)?;
        if rootfs_cached.is_none() {
            preflight(recipe)?;
        }

        let kernel = kernel::ensure(&self.cache, &KERNEL, options.refresh_kernel, progress)?;
        let initramfs = initramfs::ensure(&self.cache, &kernel, &agent, progress)?;
        let rootfs = match rootfs_cached {
            Some(part) => part,
            None => self
                .cache
                .get_or_build(&rootfs_part, &rootfs_key, progress, |staging| {
                    rootfs::build(recipe, &self.mirror, staging, progress)
                })?,
        };
        Ok(Image {
            name: recipe.name.to_owned(),
            kernel: kernel.dir.join(VMLINUZ),
            initramfs: initramfs.dir.join(CPIO_FILE),
            rootfs: rootfs.dir.join(IMAGE_FILE),
            kernel_version: kernel.manifest.details.kernel_version.clone(),
            key: combined_key(&kernel, &initramfs, &rootfs),
        })
    }

    /// The cached parts with their sizes, for `warren images`.
    pub fn list(&self) -> Result<Vec<CachedPart>, ImageError> {
        let mut out = Vec::new();
        for (_, dir) in self.cache.entries()? {
            let manifest = match read_manifest::<serde_json::Value>(&dir) {
                Ok(Some(manifest)) => manifest,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable image part");
                    continue;
                }
            };
            let details = &manifest.details;
            let text = |field: &str| {
                details
                    .get(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned()
            };
            let (kind, image, summary) = match manifest.part.as_str() {
                kernel::PART => (
                    PartKind::Kernel,
                    None,
                    format!("{} {}", text("package"), text("package_version")),
                ),
                initramfs::PART => (
                    PartKind::Initramfs,
                    None,
                    format!(
                        "kernel {}, agent sha256 {}",
                        text("kernel_version"),
                        text("agent_sha256").get(..12).unwrap_or("?")
                    ),
                ),
                other => match other.strip_prefix("rootfs-") {
                    Some(image) => {
                        let packages = details
                            .get("packages")
                            .and_then(|p| p.as_array())
                            .map_or(0, Vec::len);
                        (
                            PartKind::Rootfs,
                            Some(image.to_owned()),
                            format!(
                                "{image}, {} MiB file system, {packages} packages",
                                details["size_mib"]
                            ),
                        )
                    }
                    None => continue,
                },
            };
            out.push(CachedPart {
                kind,
                image,
                key: manifest.key.clone(),
                allocated_bytes: allocated_bytes(&dir),
                apparent_bytes: manifest.files.iter().map(|f| f.size).sum(),
                path: dir,
                built_at: UNIX_EPOCH + Duration::from_millis(manifest.built_at_unix_ms),
                summary,
            });
        }
        out.sort_by(|a, b| (a.kind, &a.image, b.built_at).cmp(&(b.kind, &b.image, a.built_at)));
        Ok(out)
    }
}

/// Fails early, before any download, if the root filesystem cannot be
/// built here.
fn preflight(recipe: &ImageRecipe) -> Result<(), ImageError> {
    host::require_root(
        &format!("the {} root filesystem", recipe.name),
        "files in it must belong to root and to uid 1000, which needs root to create",
    )?;
    host::find_tool(MKFS_EXT4)?;
    match recipe.kind {
        RecipeKind::Debian(_) => host::find_tool(MMDEBSTRAP).map(drop),
        RecipeKind::Tiny(_) => host::find_tool(APT_GET)
            .and_then(|_| host::find_tool(DPKG_DEB))
            .map(drop),
    }
}

fn combined_key<A, B, C>(kernel: &Part<A>, initramfs: &Part<B>, rootfs: &Part<C>) -> String {
    KeyHasher::new("warren-image/image")
        .field("kernel", &kernel.manifest.key)
        .field("initramfs", &initramfs.manifest.key)
        .field("rootfs", &rootfs.manifest.key)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn unknown_image_lists_the_catalog() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(tmp.path()).unwrap();
        let err = store
            .ensure("ubuntu", Path::new("/nonexistent"), &NoProgress)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"ubuntu\""), "{msg}");
        assert!(msg.contains("debian, tiny"), "{msg}");
        let ImageError::UnknownImage { available, .. } = err else {
            panic!()
        };
        assert_eq!(available, ["debian", "tiny"]);
    }

    #[test]
    fn missing_agent_says_how_to_build_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(tmp.path()).unwrap();
        let err = store
            .ensure("tiny", &tmp.path().join("warren-guest"), &NoProgress)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("./dev.sh build") && msg.contains("WARREN_GUEST_AGENT"),
            "{msg}"
        );
    }

    #[test]
    fn open_creates_the_images_dir_and_lists_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&tmp.path().join("data")).unwrap();
        assert!(store.root().is_dir());
        assert!(store.list().unwrap().is_empty());
        assert_eq!(ImageStore::default_image(), "debian");
        assert_eq!(ImageStore::catalog().len(), 2);
    }
}
