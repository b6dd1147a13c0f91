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
//! and fsyncs them before the VM is released ([`persist`]).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// `statfs` magic of tmpfs (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Copy unit of [`persist`]; all-zero units are left as holes.
const COPY_UNIT: usize = 64 * 1024;
/// Read size of [`persist`].
const COPY_CHUNK: usize = 4 << 20;

/// `/dev/shm` when it is a tmpfs (the default home of volatile RAM).
pub fn default_root() -> Option<PathBuf> {
    let root = PathBuf::from("/dev/shm");
    is_tmpfs(&root).then_some(root)
}

/// Whether `path` is on a tmpfs.
pub fn is_tmpfs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == TMPFS_MAGIC
    }
}

/// Bytes a non-root writer may still allocate on the file system of `dir`.
fn available_bytes(dir: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: as in `is_tmpfs`.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c_path.as_ptr(), &mut stat) == 0)
            .then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
    }
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
        let is_ram = entry.path().extension().is_some_and(|ext| ext == "memory");
        if let (true, Ok(meta)) = (is_ram, entry.metadata()) {
            promised += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    let room = available + allocated;
    (promised + memory_bytes <= room).then(|| dir.join(format!("{id}.memory")))
}

/// Copies the RAM in `source` to `dest` (sparse: holes and all-zero 64 KiB
/// units are not written), fsyncs it and renames it into place, then fsyncs
/// the directory: `dest` is then the durable memory image of the stopped VM.
/// Returns the bytes written. On error `dest` is untouched and no temporary
/// file is left.
pub fn persist(source: &Path, dest: &Path) -> std::io::Result<u64> {
    let input = File::open(source)?;
    let len = input.metadata()?.len();
    let temp = dest.with_extension("persisting");
    let result = (|| {
        let output = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        output.set_len(len)?;
        let mut written = 0u64;
        let mut buf = vec![0u8; COPY_CHUNK];
        for (start, end) in data_ranges(&input, len)? {
            let mut offset = start;
            while offset < end {
                let n = (end - offset).min(COPY_CHUNK as u64) as usize;
                input.read_exact_at(&mut buf[..n], offset)?;
                for (i, unit) in buf[..n].chunks(COPY_UNIT).enumerate() {
                    if unit.iter().any(|&b| b != 0) {
                        output.write_all_at(unit, offset + (i * COPY_UNIT) as u64)?;
                        written += unit.len() as u64;
                    }
                }
                offset += n as u64;
            }
        }
        output.sync_all()?;
        std::fs::rename(&temp, dest)?;
        if let Some(parent) = dest.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The byte ranges of `file` that hold data (everything else is a hole),
/// found with SEEK_DATA/SEEK_HOLE.
fn data_ranges(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        // SAFETY: lseek on a file descriptor we own.
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        if data < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `offset`
            }
            if error.raw_os_error() == Some(libc::EINVAL) {
                return Ok(vec![(0, len)]); // no SEEK_DATA here: copy it all
            }
            return Err(error);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let end = (hole as u64).min(len);
        ranges.push((data as u64, end));
        offset = hole;
    }
    Ok(ranges)
}

/// The RAM file (`mem-path`) on the command line of QEMU process `pid`.
pub fn memory_path_of(pid: u32) -> Option<PathBuf> {
    let args = super::process_cmdline(pid)?;
    let backend = args
        .iter()
        .find(|arg| arg.starts_with("memory-backend-file,id=ram0,"))?;
    // The path is the last option and has its commas doubled.
    let path = backend.split_once("mem-path=")?.1.replace(",,", ",");
    Some(PathBuf::from(path))
}

/// The RAM file of QEMU process `pid` if it is one of ours in host memory
/// (`<id>.memory`; RAM on disk is `<sandbox>/memory` and must outlive the
/// process when a pause is being committed).
pub fn volatile_memory_of(pid: u32) -> Option<PathBuf> {
    memory_path_of(pid).filter(|path| path.extension().is_some_and(|ext| ext == "memory"))
}

/// Removes RAM files in `dir` that no running QEMU uses (left behind by a
/// VM killed while warren was not there to clean up). Returns their paths.
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let in_use: Vec<PathBuf> = super::processes_running(|program| program.contains("qemu"))
        .into_iter()
        .filter_map(|(pid, _)| memory_path_of(pid))
        .collect();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path.extension().is_some_and(|ext| ext == "memory");
        if ours && !in_use.contains(&path) && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_copies_data_and_leaves_zeros_out() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("ram");
        let file = File::create(&source).unwrap();
        file.set_len(8 << 20).unwrap();
        file.write_all_at(&[7u8; 100], 3 << 20).unwrap();
        // Written but zero: copied as a hole.
        file.write_all_at(&[0u8; 1 << 20], 5 << 20).unwrap();
        let dest = dir.path().join("memory");
        std::fs::write(&dest, b"old").unwrap();

        let written = persist(&source, &dest).unwrap();

        // Only the unit around the data is written; the zero megabyte is not.
        assert!((100..=COPY_UNIT as u64).contains(&written), "{written}");
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&dest).unwrap().blocks() * 512 <= 2 * COPY_UNIT as u64);
        let copy = std::fs::read(&dest).unwrap();
        assert_eq!(copy.len(), 8 << 20);
        assert_eq!(copy, std::fs::read(&source).unwrap());
        assert!(!dest.with_extension("persisting").exists());
    }

    #[test]
    fn a_failed_persist_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("memory");
        std::fs::write(&dest, b"old").unwrap();
        assert!(persist(&dir.path().join("missing"), &dest).is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
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
