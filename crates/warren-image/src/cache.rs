//! The part cache: content-keyed directories under `images/`, built
//! atomically and safely from several processes at once.
//!
//! Layout:
//! ```text
//! images/
//!   kernel-<key>/              a published part: complete, never modified
//!     vmlinuz  modules/...  manifest.json
//!   initramfs-<key>/  rootfs-<name>-<key>/
//!   .staging-<part>-<key>-<pid>-<random>/   a build in progress (or a crashed one)
//!   .trash-<part>-<key>-<pid>-<random>/     a part being deleted
//!   .locks/<part>-<key>.lock                 flock(2) per key
//! ```
//!
//! Invariants: a directory with a final name is complete (its
//! `manifest.json` is written last, everything is fsynced, then the staging
//! directory is renamed into place and `images/` fsynced); only the holder
//! of a key's lock builds or deletes that key; a crash leaves at most a
//! staging or trash directory, which [`Cache::sweep`] removes once its
//! process is gone (or it is older than an hour) and nobody holds its lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::progress::Progress;

/// The file written last into every part directory.
pub(crate) const MANIFEST_FILE: &str = "manifest.json";
const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";
const LOCK_DIR: &str = ".locks";
/// A staging directory older than this is considered abandoned even if a
/// process with its pid exists (pids get reused).
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(3600);

/// What every part directory records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest<D> {
    /// Part kind and name: `kernel`, `initramfs`, `rootfs-debian`, ...
    pub part: String,
    /// The cache key (hash of the inputs).
    pub key: String,
    /// When the build finished, in milliseconds since the Unix epoch.
    pub built_at_unix_ms: u64,
    /// How long the build took.
    pub build_ms: u64,
    /// Which library version built it.
    pub builder: String,
    /// The files of the part (paths relative to its directory).
    pub files: Vec<ManifestFile>,
    /// Part-specific inputs and outputs.
    pub details: D,
}

/// One file of a part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the part directory.
    pub path: String,
    /// Apparent size in bytes.
    pub size: u64,
    /// Allocated bytes (`st_blocks * 512`); less than `size` for sparse files.
    pub allocated: u64,
}

/// A part found or built by [`Cache::get_or_build`].
#[derive(Debug)]
pub(crate) struct Part<D> {
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Manifest<D>,
    /// Whether this call built it (false on a cache hit).
    pub(crate) built_now: bool,
}

/// The `images/` directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    root: PathBuf,
}

/// What [`Cache::sweep`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepReport {
    pub(crate) removed: Vec<String>,
}

impl Cache {
    /// Opens `root`, creating it (and its lock directory) if needed.
    pub(crate) fn open(root: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(root.join(LOCK_DIR)).map_err(ImageError::io("create", root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The `images/` directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Where the part `part` with `key` lives once published.
    pub(crate) fn final_dir(&self, part: &str, key: &str) -> PathBuf {
        self.root.join(format!("{part}-{key}"))
    }

    /// The manifest of a published part, if it exists.
    pub(crate) fn load<D: DeserializeOwned>(
        &self,
        part: &str,
        key: &str,
    ) -> Result<Option<Part<D>>, ImageError> {
        let dir = self.final_dir(part, key);
        match read_manifest::<D>(&dir)? {
            Some(manifest) => {
                check_files(&dir, &manifest.files)?;
                Ok(Some(Part {
                    dir,
                    manifest,
                    built_now: false,
                }))
            }
            None => Ok(None),
        }
    }

    /// Returns the published part, building it first if it does not exist.
    ///
    /// `build` fills the staging directory it is given and returns the
    /// part's details for the manifest. Concurrent callers for the same key
    /// wait on the key's lock and then reuse the first one's result. If
    /// `build` fails, the staging directory is removed and nothing is
    /// published.
    pub(crate) fn get_or_build<D, F>(
        &self,
        part: &str,
        key: &str,
        progress: &dyn Progress,
        build: F,
    ) -> Result<Part<D>, ImageError>
    where
        D: Serialize + DeserializeOwned,
        F: FnOnce(&Path) -> Result<D, ImageError>,
    {
        if let Some(found) = self.load(part, key)? {
            return Ok(found);
        }
        let _lock = self.lock(part, key, progress)?;
        if let Some(found) = self.load(part, key)? {
            return Ok(found);
        }
        self.build_unlocked(part, key, build)
    }

    /// Builds and publishes without taking the lock (the caller holds it).
    /// If the final directory appears meanwhile, the new build is discarded
    /// and the existing one returned.
    pub(crate) fn build_unlocked<D, F>(
        &self,
        part: &str,
        key: &str,
        build: F,
    ) -> Result<Part<D>, ImageError>
    where
        D: Serialize + DeserializeOwned,
        F: FnOnce(&Path) -> Result<D, ImageError>,
    {
        let staging = TempDir::create(&self.root, STAGING_PREFIX, part, key)?;
        let started = Instant::now();
        let details = build(staging.path())?;
        let files = sync_tree(staging.path())?;
        let manifest = Manifest {
            part: part.to_owned(),
            key: key.to_owned(),
            built_at_unix_ms: unix_ms(SystemTime::now()),
            build_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            builder: concat!("warren-image ", env!("CARGO_PKG_VERSION")).to_owned(),
            files,
            details,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
            path: staging.path().join(MANIFEST_FILE),
            source,
        })?;
        write_synced(&staging.path().join(MANIFEST_FILE), &json, 0o644)?;
        sync_dir(staging.path())?;
        let dir = self.final_dir(part, key);
        match fs::rename(staging.path(), &dir) {
            Ok(()) => {
                staging.keep();
                sync_dir(&self.root)?;
                Ok(Part {
                    dir,
                    manifest,
                    built_now: true,
                })
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                tracing::debug!(
                    part,
                    key,
                    "another process published this part first; discarding ours"
                );
                drop(staging);
                self.load(part, key)?.ok_or(ImageError::Io {
                    action: "find the published part",
                    path: dir,
                    source: e,
                })
            }
            Err(e) => Err(ImageError::Io {
                action: "publish (rename into place)",
                path: dir,
                source: e,
            }),
        }
    }

    /// Takes the exclusive lock of `part-key`, telling `progress` if it has
    /// to wait for another process.
    fn lock(
        &self,
        part: &str,
        key: &str,
        progress: &dyn Progress,
    ) -> Result<Flock<File>, ImageError> {
        let path = self.lock_path(&format!("{part}-{key}"));
        let file = open_lock_file(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((file, Errno::EWOULDBLOCK)) => {
                progress.step(&format!(
                    "waiting for another process that is building {part}-{key}"
                ));
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| ImageError::Io {
                    action: "lock",
                    path,
                    source: e.into(),
                })
            }
            Err((_, e)) => Err(ImageError::Io {
                action: "lock",
                path,
                source: e.into(),
            }),
        }
    }

    /// Takes the lock of `name` (`part-key`) if nobody holds it.
    fn try_lock(&self, name: &str) -> Result<Option<Flock<File>>, ImageError> {
        let path = self.lock_path(name);
        let file = open_lock_file(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(ImageError::Io {
                action: "lock",
                path,
                source: e.into(),
            }),
        }
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join(LOCK_DIR).join(format!("{name}.lock"))
    }

    /// Deletes a published part unless someone holds its lock. Returns
    /// whether it was deleted. The directory is first renamed away, so its
    /// final name disappears atomically.
    pub(crate) fn remove(&self, part: &str, key: &str) -> Result<bool, ImageError> {
        let Some(_lock) = self.try_lock(&format!("{part}-{key}"))? else {
            return Ok(false);
        };
        let dir = self.final_dir(part, key);
        if !dir.exists() {
            return Ok(false);
        }
        let trash = TempDir::name(&self.root, TRASH_PREFIX, part, key);
        fs::rename(&dir, &trash).map_err(ImageError::io("move away", &dir))?;
        sync_dir(&self.root)?;
        remove_tree(&trash).map_err(ImageError::io("delete", &trash))?;
        Ok(true)
    }

    /// Published part directories: (directory name, path).
    pub(crate) fn entries(&self) -> Result<Vec<(String, PathBuf)>, ImageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(ImageError::io("list", &self.root))? {
            let entry = entry.map_err(ImageError::io("list", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push((name, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes abandoned staging and trash directories: those whose process
    /// is gone or that are older than `stale_after`, and whose key nobody is
    /// building right now (the builder holds the key's lock throughout).
    pub(crate) fn sweep(&self, stale_after: Duration) -> Result<SweepReport, ImageError> {
        let mut report = SweepReport::default();
        let now = SystemTime::now();
        for entry in fs::read_dir(&self.root).map_err(ImageError::io("list", &self.root))? {
            let entry = entry.map_err(ImageError::io("list", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix(STAGING_PREFIX)
                .or_else(|| name.strip_prefix(TRASH_PREFIX))
            else {
                continue;
            };
            let parsed = parse_temp_name(rest);
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let dead = parsed.is_none_or(|(_, pid)| !pid_alive(pid));
            if !dead && age < stale_after {
                continue;
            }
            let _lock = match parsed {
                Some((part_key, _)) => match self.try_lock(part_key)? {
                    Some(lock) => Some(lock),
                    None => continue, // someone is building this key now
                },
                None => None,
            };
            match remove_tree(&entry.path()) {
                Ok(()) => report.removed.push(name),
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove abandoned build directory")
                }
            }
        }
        if !report.removed.is_empty() {
            tracing::info!(removed = ?report.removed, "removed abandoned image build directories");
        }
        Ok(report)
    }
}

/// Checks that the files a manifest lists are there with their sizes (a
/// stat each: cheap enough for every lookup).
fn check_files(dir: &Path, files: &[ManifestFile]) -> Result<(), ImageError> {
    for file in files {
        let path = dir.join(&file.path);
        let reason = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == file.size => continue,
            Ok(meta) => format!("{} is {} bytes, not {}", file.path, meta.len(), file.size),
            Err(e) => format!("{}: {e}", file.path),
        };
        return Err(ImageError::DamagedPart {
            dir: dir.to_path_buf(),
            reason,
        });
    }
    Ok(())
}

/// Splits `<part>-<key>-<pid>-<random>` into (`<part>-<key>`, pid).
fn parse_temp_name(rest: &str) -> Option<(&str, i32)> {
    let mut pieces = rest.rsplitn(3, '-');
    let _random = pieces.next()?;
    let pid = pieces.next()?.parse().ok()?;
    let part_key = pieces.next()?;
    let (_, key) = part_key.rsplit_once('-')?;
    crate::key::is_key(key).then_some((part_key, pid))
}

/// Whether a process with this pid exists (in our pid namespace); a pid
/// that is not positive names no single process.
fn pid_alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(|pid| pid > 0 && warren_vmm::process::exists(pid))
}

fn open_lock_file(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path)
        .map_err(ImageError::io("open lock file", path))
}

/// Reads `dir/manifest.json`; `None` if the directory does not exist.
pub(crate) fn read_manifest<D: DeserializeOwned>(
    dir: &Path,
) -> Result<Option<Manifest<D>>, ImageError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => return Ok(None),
        Err(e) => return Err(ImageError::io("read", &path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ImageError::Manifest { path, source })
}

/// A directory that is removed on drop unless [`TempDir::keep`] is called:
/// every early return of a build cleans up after itself.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl TempDir {
    fn name(root: &Path, prefix: &str, part: &str, key: &str) -> PathBuf {
        root.join(format!(
            "{prefix}{part}-{key}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    fn create(root: &Path, prefix: &str, part: &str, key: &str) -> Result<Self, ImageError> {
        let path = Self::name(root, prefix, part, key);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(ImageError::io("create", &path))?;
        Ok(Self { path, armed: true })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove staging directory");
        }
    }
}

/// Removes a tree even if some directories in it are read-only, but never
/// through a mount point (see [`crate::mounts`]).
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    crate::mounts::detach_all_under(path)?;
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            make_dirs_writable(path);
            fs::remove_dir_all(path).map_err(|_| first)
        }
    }
}

fn make_dirs_writable(path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.is_dir()
    {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                make_dirs_writable(&entry.path());
            }
        }
    }
}

/// Creates `path` (which must not exist) with `bytes`, and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(ImageError::io("create", path))?;
    file.write_all(bytes)
        .map_err(ImageError::io("write", path))?;
    // The umask may have cleared bits of `mode`.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(ImageError::io("chmod", path))?;
    file.sync_all().map_err(ImageError::io("fsync", path))
}

/// fsyncs a directory (its entries, not the files in it).
pub(crate) fn sync_dir(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(ImageError::io("fsync", path))
}

/// fsyncs every file and directory under `root` and lists the regular files.
fn sync_tree(root: &Path) -> Result<Vec<ManifestFile>, ImageError> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(ImageError::io("list", &dir))? {
            let entry = entry.map_err(ImageError::io("list", &dir))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(ImageError::io("stat", &path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(ImageError::io("fsync", &path))?;
                files.push(ManifestFile {
                    path: path
                        .strip_prefix(root)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .into_owned(),
                    size: meta.len(),
                    allocated: meta.blocks() * 512,
                });
            }
        }
        sync_dir(&dir)?;
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Allocated bytes of everything under `path` (not following symlinks).
pub(crate) fn allocated_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        total += entries
            .flatten()
            .map(|e| allocated_bytes(&e.path()))
            .sum::<u64>();
    }
    total
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Details {
        value: u32,
    }

    fn names(root: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_DIR)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn builds_once_then_hits() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let part = cache
            .get_or_build("kernel", "0123456789abcdef", &NoProgress, |dir| {
                write_synced(&dir.join("vmlinuz"), b"kernel", 0o644)?;
                Ok(Details { value: 7 })
            })
            .unwrap();
        assert!(part.built_now);
        assert_eq!(part.dir, tmp.path().join("kernel-0123456789abcdef"));
        assert_eq!(part.manifest.details, Details { value: 7 });
        assert_eq!(part.manifest.files.len(), 1);
        assert_eq!(part.manifest.files[0].path, "vmlinuz");
        assert_eq!(part.manifest.files[0].size, 6);
        let again: Part<Details> = cache
            .get_or_build("kernel", "0123456789abcdef", &NoProgress, |_| {
                panic!("must not rebuild")
            })
            .unwrap();
        assert!(!again.built_now);
        assert_eq!(
            again.manifest.built_at_unix_ms,
            part.manifest.built_at_unix_ms
        );
        assert_eq!(names(tmp.path()), ["kernel-0123456789abcdef"]);
    }

    #[test]
    fn failing_build_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let err = cache
            .get_or_build::<Details, _>("rootfs-tiny", "0123456789abcdef", &NoProgress, |dir| {
                fs::create_dir(dir.join("root")).unwrap();
                // A read-only directory must not stop the cleanup.
                fs::write(dir.join("root/file"), b"x").unwrap();
                fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o555)).unwrap();
                Err(ImageError::BadPackage {
                    package: "p".into(),
                    reason: "boom".into(),
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
    }

    #[test]
    fn concurrent_builders_of_one_key_build_once() {
        let tmp = tempfile::tempdir().unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let root = tmp.path().to_path_buf();
                let builds = builds.clone();
                std::thread::spawn(move || {
                    // Each thread opens its own Cache, so each has its own
                    // lock file descriptions, like separate processes.
                    let cache = Cache::open(&root).unwrap();
                    let part: Part<Details> = cache
                        .get_or_build("initramfs", "00000000000000aa", &NoProgress, |dir| {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            write_synced(&dir.join("initramfs.cpio"), b"cpio", 0o644)?;
                            Ok(Details { value: 1 })
                        })
                        .unwrap();
                    part.manifest.built_at_unix_ms
                })
            })
            .collect();
        let stamps: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(stamps.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(names(tmp.path()), ["initramfs-00000000000000aa"]);
    }

    #[test]
    fn losing_the_publish_race_discards_our_build() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let first: Part<Details> = cache
            .build_unlocked("kernel", "00000000000000bb", |dir| {
                write_synced(&dir.join("f"), b"first", 0o644)?;
                Ok(Details { value: 1 })
            })
            .unwrap();
        assert!(first.built_now);
        // A second builder that did not see the first one (no lock).
        let second: Part<Details> = cache
            .build_unlocked("kernel", "00000000000000bb", |dir| {
                write_synced(&dir.join("f"), b"second", 0o644)?;
                Ok(Details { value: 2 })
            })
            .unwrap();
        assert!(!second.built_now);
        assert_eq!(second.manifest.details.value, 1);
        assert_eq!(fs::read(second.dir.join("f")).unwrap(), b"first");
        assert_eq!(names(tmp.path()), ["kernel-00000000000000bb"]);
    }

    fn dead_pid() -> i32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        pid
    }

    fn set_age(path: &Path, age: Duration) {
        let when = SystemTime::now() - age;
        let t = nix::sys::time::TimeSpec::from(when.duration_since(UNIX_EPOCH).unwrap());
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn sweep_removes_only_abandoned_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let me = std::process::id();
        let dead = dead_pid();
        let mk = |name: &str| {
            let p = tmp.path().join(name);
            fs::create_dir(&p).unwrap();
            fs::write(p.join("junk"), b"x").unwrap();
            p
        };
        mk(&format!(".staging-kernel-0000000000000001-{dead}-0000abcd"));
        mk(&format!(
            ".trash-rootfs-tiny-0000000000000002-{dead}-0000abcd"
        ));
        mk(&format!(
            ".staging-rootfs-debian-0000000000000003-{me}-0000abcd"
        ));
        let old = mk(&format!(
            ".staging-initramfs-0000000000000004-{me}-0000abcd"
        ));
        set_age(&old, Duration::from_secs(2 * 3600));
        mk(&format!(".staging-kernel-0000000000000005-{dead}-0000abcd"));
        mk("kernel-0000000000000006");
        // Someone is building key 5 right now: its staging dir must stay.
        let _held = cache.try_lock("kernel-0000000000000005").unwrap().unwrap();
        let other = Cache::open(tmp.path()).unwrap();

        let report = other.sweep(STALE_AFTER).unwrap();
        let mut removed = report.removed.clone();
        removed.sort();
        assert_eq!(
            removed,
            [
                format!(".staging-initramfs-0000000000000004-{me}-0000abcd"),
                format!(".staging-kernel-0000000000000001-{dead}-0000abcd"),
                format!(".trash-rootfs-tiny-0000000000000002-{dead}-0000abcd"),
            ]
        );
        assert_eq!(
            names(tmp.path()),
            [
                format!(".staging-kernel-0000000000000005-{dead}-0000abcd"),
                format!(".staging-rootfs-debian-0000000000000003-{me}-0000abcd"),
                "kernel-0000000000000006".to_owned(),
            ]
        );
    }

    #[test]
    fn damaged_parts_are_reported_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let part: Part<Details> = cache
            .build_unlocked("kernel", "00000000000000dd", |dir| {
                write_synced(&dir.join("vmlinuz"), b"kernel", 0o644)?;
                Ok(Details { value: 1 })
            })
            .unwrap();
        fs::remove_file(part.dir.join("vmlinuz")).unwrap();
        let err = cache
            .load::<Details>("kernel", "00000000000000dd")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("damaged") && msg.contains("vmlinuz") && msg.contains("delete"),
            "{msg}"
        );
    }

    #[test]
    fn parses_temp_names() {
        assert_eq!(
            parse_temp_name("rootfs-debian-0123456789abcdef-42-deadbeef"),
            Some(("rootfs-debian-0123456789abcdef", 42))
        );
        assert_eq!(parse_temp_name("garbage"), None);
        assert_eq!(parse_temp_name("kernel-notakey-42-deadbeef"), None);
    }

    #[test]
    fn remove_skips_locked_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let _: Part<Details> = cache
            .build_unlocked("initramfs", "00000000000000cc", |_| {
                Ok(Details { value: 1 })
            })
            .unwrap();
        let held = cache
            .try_lock("initramfs-00000000000000cc")
            .unwrap()
            .unwrap();
        let other = Cache::open(tmp.path()).unwrap();
        assert!(!other.remove("initramfs", "00000000000000cc").unwrap());
        drop(held);
        assert!(other.remove("initramfs", "00000000000000cc").unwrap());
        assert!(names(tmp.path()).is_empty());
    }
}
