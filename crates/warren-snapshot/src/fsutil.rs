//! Small file helpers shared by the format, the operations and the daemon:
//! crash-safe replacement of a file, hole punching, sparse-file walking and
//! the zero test that decides which blocks are worth storing.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// An I/O failure together with what was being done and to which file, so
/// the public error types can say both.
#[derive(Debug)]
pub(crate) struct PathIo {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl PathIo {
    pub(crate) fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `path` with `suffix` appended to its file name (`a/b` → `a/b.tmp`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or creation in `path`'s directory durable.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), PathIo> {
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PathIo::new("syncing directory", dir, e))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the
/// new content, never a mix: write `path.tmp`, fsync, rename, fsync the dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PathIo> {
    let tmp = with_suffix(path, ".tmp");
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| PathIo::new("creating", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| PathIo::new("writing", &tmp, e))?;
        f.sync_all().map_err(|e| PathIo::new("syncing", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| PathIo::new("renaming to", path, e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_parent_dir(path)
}

/// Frees the storage of `[offset, offset + len)` without changing the size.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate only reads its integer arguments; the fd is valid
    // for the lifetime of `file`.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lseek` with `whence`; `Ok(None)` when there is no further data (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Ok(None);
    };
    // SAFETY: lseek only reads its integer arguments; the fd is valid.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(u64::try_from(rc).ok())
}

/// The allocated ranges `[start, end)` of `file` below `limit`, in order,
/// found with SEEK_DATA/SEEK_HOLE so that the cost follows the data and not
/// the file size. A file system without sparse support reports everything
/// as data, which is slower but still correct.
pub(crate) fn data_ranges(file: &File, limit: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < limit {
        let Some(start) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        if start >= limit {
            break;
        }
        let end = seek(file, start, libc::SEEK_HOLE)?
            .unwrap_or(limit)
            .min(limit);
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Whether every byte is zero. Written so the compiler vectorizes it: this
/// runs over every block the guest dirtied.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Whether an I/O error means the disk (or quota) is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_test() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        for i in [0, 63, 64, 100, 4095] {
            let mut b = vec![0u8; 4096];
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
        }
        assert!(!is_zero(&[0, 0, 1]));
    }

    #[test]
    fn atomic_write_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!with_suffix(&p, ".tmp").exists());
    }
}
