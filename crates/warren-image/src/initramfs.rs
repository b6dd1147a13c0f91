//! The initramfs part: an uncompressed newc archive whose `/init` is the
//! guest agent, with the kernel's virtio modules and their load order.
//!
//! Layout inside the archive:
//! ```text
//! /init                   the guest agent (0755)
//! /lib/modules/<file>.ko  the modules of the kernel part
//! /etc/warren/modules     their file names, one per line, in load order
//! /dev/console            character device 5:1, so PID 1 has a console
//!                         before it mounts devtmpfs
//! /dev /proc /sys /newroot /etc /lib   empty mount points
//! ```
//!
//! Key = hash(kernel key, SHA-256 of the agent, format version). Agents
//! change with every rebuild during development, so only the newest
//! [`KEEP_PER_KERNEL`] initramfs parts of a kernel are kept.

use std::fs::File;
use std::io::{BufWriter, Write};

use serde::{Deserialize, Serialize};

use crate::agent::GuestAgent;
use crate::cache::{Cache, Part, read_manifest};
use crate::cpio::CpioWriter;
use crate::error::ImageError;
use crate::kernel::{KernelDetails, MODULES_DIR};
use crate::key::KeyHasher;
use crate::progress::Progress;

/// Bump when the archive layout changes.
const INITRAMFS_FORMAT_VERSION: u32 = 1;

/// Directory-name prefix of initramfs parts.
pub(crate) const PART: &str = "initramfs";

/// File name of the archive inside the part.
pub(crate) const CPIO_FILE: &str = "initramfs.cpio";

/// Where the init finds the module load order.
pub const MODULES_LIST_PATH: &str = "etc/warren/modules";

/// Where the module files are inside the archive.
pub const MODULES_PATH: &str = "lib/modules";

/// How many initramfs parts to keep per kernel.
pub(crate) const KEEP_PER_KERNEL: usize = 3;

/// What the initramfs manifest records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitramfsDetails {
    /// Version of the archive layout at build time.
    pub format_version: u32,
    /// Key of the kernel part whose modules it holds.
    pub kernel_key: String,
    /// That kernel's version.
    pub kernel_version: String,
    /// SHA-256 of the agent binary (`/init`).
    pub agent_sha256: String,
    /// Where the agent was read from (informational).
    pub agent_path: String,
    /// Module file names in load order.
    pub modules: Vec<String>,
}

/// The cache key of an initramfs.
pub(crate) fn initramfs_key(kernel_key: &str, agent_sha256: &str) -> String {
    KeyHasher::new("warren-image/initramfs")
        .field("format_version", INITRAMFS_FORMAT_VERSION.to_le_bytes())
        .field("kernel_key", kernel_key)
        .field("agent_sha256", agent_sha256)
        .finish()
}

/// Returns the initramfs for this kernel and agent, building it if needed
/// (and then pruning old ones of the same kernel).
pub(crate) fn ensure(
    cache: &Cache,
    kernel: &Part<KernelDetails>,
    agent: &GuestAgent,
    progress: &dyn Progress,
) -> Result<Part<InitramfsDetails>, ImageError> {
    let key = initramfs_key(&kernel.manifest.key, &agent.sha256);
    let part = cache.get_or_build(PART, &key, progress, |staging| {
        progress.step("building initramfs");
        let modules_dir = kernel.dir.join(MODULES_DIR);
        let mut modules = Vec::new();
        for module in &kernel.manifest.details.modules {
            let path = modules_dir.join(&module.file);
            let data = std::fs::read(&path).map_err(ImageError::io("read", &path))?;
            modules.push((module.file.clone(), data));
        }
        let path = staging.join(CPIO_FILE);
        let file = File::create(&path).map_err(ImageError::io("create", &path))?;
        write_archive(BufWriter::new(file), &agent.bytes, &modules)
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(ImageError::io("write", &path))?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        progress.finished(&format!("initramfs ready ({} KiB)", size / 1024));
        Ok(InitramfsDetails {
            format_version: INITRAMFS_FORMAT_VERSION,
            kernel_key: kernel.manifest.key.clone(),
            kernel_version: kernel.manifest.details.kernel_version.clone(),
            agent_sha256: agent.sha256.clone(),
            agent_path: agent.path.display().to_string(),
            modules: modules.into_iter().map(|(file, _)| file).collect(),
        })
    })?;
    if part.built_now
        && let Err(e) = prune(cache, &kernel.manifest.key, &key)
    {
        tracing::warn!(error = %e, "cannot prune old initramfs parts");
    }
    Ok(part)
}

/// Writes the archive: mount points, `/dev/console`, `/init`, the modules
/// (in the given order, which is the load order) and their list.
pub(crate) fn write_archive<W: Write>(
    out: W,
    init: &[u8],
    modules: &[(String, Vec<u8>)],
) -> std::io::Result<W> {
    let mut cpio = CpioWriter::new(out);
    for dir in [
        "dev",
        "proc",
        "sys",
        "newroot",
        "etc",
        "etc/warren",
        "lib",
        MODULES_PATH,
    ] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("init", 0o755, init)?;
    let mut list = String::new();
    for (file, data) in modules {
        cpio.file(&format!("{MODULES_PATH}/{file}"), 0o644, data)?;
        list.push_str(file);
        list.push('\n');
    }
    cpio.file(MODULES_LIST_PATH, 0o644, list.as_bytes())?;
    cpio.finish()
}

/// Deletes all but the newest [`KEEP_PER_KERNEL`] initramfs parts of
/// `kernel_key`, never `keep` (the one just built).
fn prune(cache: &Cache, kernel_key: &str, keep: &str) -> Result<(), ImageError> {
    let mut others = Vec::new();
    for (name, dir) in cache.entries()? {
        let Some(key) = name.strip_prefix("initramfs-") else {
            continue;
        };
        if key == keep {
            continue;
        }
        let Ok(Some(manifest)) = read_manifest::<InitramfsDetails>(&dir) else {
            continue;
        };
        if manifest.details.kernel_key == kernel_key {
            others.push((manifest.built_at_unix_ms, key.to_owned()));
        }
    }
    others.sort_by(|a, b| b.cmp(a));
    for (_, key) in others.into_iter().skip(KEEP_PER_KERNEL - 1) {
        if cache.remove(PART, &key)? {
            tracing::info!(key, "pruned old initramfs");
        }
    }
    Ok(())
}

/// Reads the module load order from an archive's `/etc/warren/modules`.
pub fn modules_in(entries: &[crate::cpio::CpioEntry]) -> Option<Vec<String>> {
    let list = entries.iter().find(|e| e.name == MODULES_LIST_PATH)?;
    Some(
        String::from_utf8_lossy(&list.data)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::write_synced;
    use crate::cpio;

    #[test]
    fn archive_has_init_modules_and_order() {
        let modules = vec![
            ("virtio_ring.ko".to_owned(), b"ring".to_vec()),
            ("virtio.ko".to_owned(), b"virtio".to_vec()),
            ("virtio-rng.ko".to_owned(), b"rng".to_vec()),
        ];
        let out = write_archive(Vec::new(), b"\x7fELFagent", &modules).unwrap();
        let entries = cpio::read(&out).unwrap();
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert!(init.is_file());
        assert_eq!(init.mode & 0o7777, 0o755);
        assert_eq!(init.data, b"\x7fELFagent");
        for dir in ["dev", "proc", "sys", "newroot", "etc", "lib"] {
            assert!(entries.iter().any(|e| e.name == dir && e.is_dir()), "{dir}");
        }
        let console = entries.iter().find(|e| e.name == "dev/console").unwrap();
        assert!(console.is_char_device() && console.rdev == (5, 1));
        assert_eq!(
            modules_in(&entries).unwrap(),
            ["virtio_ring.ko", "virtio.ko", "virtio-rng.ko"]
        );
        let rng = entries
            .iter()
            .find(|e| e.name == "lib/modules/virtio-rng.ko")
            .unwrap();
        assert_eq!(rng.data, b"rng");
        // Every directory comes before what is in it.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                let p = entries.iter().position(|d| d.name == parent).unwrap();
                assert!(p < i, "{} before {}", parent, e.name);
            }
        }
    }

    #[test]
    fn key_is_stable_and_sensitive() {
        let k = initramfs_key("00000000000000aa", "abc");
        assert_eq!(k, initramfs_key("00000000000000aa", "abc"));
        assert_ne!(k, initramfs_key("00000000000000ab", "abc"));
        assert_ne!(k, initramfs_key("00000000000000aa", "abd"));
    }

    #[test]
    fn prune_keeps_the_newest_three_of_a_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let mut keys = Vec::new();
        let details = |kernel: &str| InitramfsDetails {
            format_version: 1,
            kernel_key: kernel.into(),
            kernel_version: "v".into(),
            agent_sha256: "s".into(),
            agent_path: "p".into(),
            modules: vec![],
        };
        for i in 0..5 {
            let key = format!("{i:016x}");
            let _: Part<InitramfsDetails> = cache
                .build_unlocked(PART, &key, |dir| {
                    write_synced(&dir.join(CPIO_FILE), b"x", 0o644)?;
                    Ok(details("kernel-a"))
                })
                .unwrap();
            keys.push(key);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let other_kernel = "00000000000000ff";
        let _: Part<InitramfsDetails> = cache
            .build_unlocked(PART, other_kernel, |_| Ok(details("kernel-b")))
            .unwrap();
        // Pretend the oldest one was just built (a cache that was pruned
        // elsewhere): it must survive anyway.
        prune(&cache, "kernel-a", &keys[0]).unwrap();
        let mut left: Vec<_> = cache
            .entries()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!("initramfs-{}", keys[0]),
                format!("initramfs-{}", keys[3]),
                format!("initramfs-{}", keys[4]),
                format!("initramfs-{other_kernel}"),
            ]
        );
    }
}
