//! Guest RAM of a cold-booted VM kept in host memory (a tmpfs such as
//! `/dev/shm`) rather than in the sandbox directory on disk.
//!
//! Why: a shared RAM file on a disk file system is written back to disk
//! while the VM runs (the kernel flushes dirty pages every few seconds), so
//! every page the guest touches costs a page-cache fault, dirty accounting
//! and, later, disk I/O and a re-fault after write-protection. Measured
//! under TCG, a 64 MiB upload into a fresh sandbox ran at 58 MiB/s with RAM
//! on ext4 and 124 MiB/s with RAM on tmpfs. Durability is unaffected: a
//! running guest's RAM is never durable anyway, and a pause copies the
//! pages the guest used (zero pages left out) into the sandbox directory
//! and fsyncs them before the VM is released (`warren_snapshot::copy_ram`).

use std::path::{Path, PathBuf};

pub use crate::host::{default_ram_root as default_root, is_tmpfs};

/// Bytes a non-root writer may still allocate on the file system of `dir`.
fn available_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// The RAM file of VM `id` under `dir`, if `dir` can hold all of its
/// `memory_bytes` on top of the full size of every other RAM file there: a
/// tmpfs that fills up would kill a VM (SIGBUS on the next page it
/// touches), so a VM that might not fit keeps its RAM on disk instead.
pub fn place(dir: &Path, id: &str, memory_bytes: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let available = available_bytes(dir)?;
    let (mut promised, mut allocated) = (0u64, 0u64);
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let is_ram = is_volatile(&entry.path());
        if let (true, Ok(meta)) = (is_ram, entry.metadata()) {
            promised += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    let room = available + allocated;
    (promised + memory_bytes <= room).then(|| dir.join(format!("{id}.memory")))
}

/// The RAM file (`mem-path`) on a QEMU command line.
fn memory_path_in(args: &[String]) -> Option<PathBuf> {
    let backend = args
        .iter()
        .find(|arg| arg.starts_with("memory-backend-file,id=ram0,"))?;
    // The path is the last option and has its commas doubled.
    let path = backend.split_once("mem-path=")?.1.replace(",,", ",");
    Some(PathBuf::from(path))
}

/// Whether `path` names a RAM file in host memory (`<id>.memory`; RAM on
/// disk is `<sandbox>/memory` and must outlive the process when a pause is
/// being committed).
fn is_volatile(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "memory")
}

/// The RAM file of QEMU process `pid` if it is one of ours in host memory.
pub fn volatile_memory_of(pid: u32) -> Option<PathBuf> {
    memory_path_in(&crate::process::cmdline(pid)?).filter(|path| is_volatile(path))
}

/// Removes RAM files in `dir` that no running QEMU uses (left behind by a
/// VM killed while warren was not there to clean up). Returns their paths.
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let in_use: Vec<PathBuf> = crate::process::find_running(|program| program.contains("qemu"))
        .into_iter()
        .filter_map(|(_, args)| memory_path_in(&args))
        .collect();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if is_volatile(&path) && !in_use.contains(&path) && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ram_file_is_read_back_from_the_command_line() {
        let args = [
            "-m",
            "512M",
            "memory-backend-file,id=ram0,size=512M,share=on,mem-path=/s,,x/a.memory",
        ]
        .map(String::from);
        let path = memory_path_in(&args).unwrap();
        assert_eq!(path, PathBuf::from("/s,x/a.memory"));
        assert!(is_volatile(&path));
        assert!(!is_volatile(Path::new("/data/sandboxes/sb-1/memory")));
        assert!(!is_volatile(Path::new("/data/sandboxes/sb-1/memfs/memory")));
        assert_eq!(memory_path_in(&args[..2]), None);
    }

    #[test]
    fn a_vm_that_might_not_fit_stays_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert!(place(dir.path(), "x", u64::MAX / 4).is_none());
        assert_eq!(
            place(dir.path(), "x", 1 << 20),
            Some(dir.path().join("x.memory"))
        );
    }
}
