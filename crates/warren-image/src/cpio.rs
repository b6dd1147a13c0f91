//! The "newc" cpio format the Linux kernel unpacks as an initramfs.
//!
//! Written here rather than taken from a crate: the format is a 110-byte
//! ASCII header, the name, the data and 4-byte padding (see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`), so the
//! whole writer is about sixty lines, while the available crates are small,
//! rarely maintained, and don't all write device nodes or let us pin every
//! header field. Output is deterministic (inode numbers count up from 1,
//! mtime 0, owner root) so the same inputs give the same bytes.
//!
//! The archive is left uncompressed on purpose: under software emulation
//! (TCG) decompressing an initramfs costs the guest far more time than
//! reading a few more megabytes from the host's page cache.
//!
//! [`read`] parses an archive back; it is bounded and never panics, and is
//! used by tests and by tools that inspect images.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
/// Longest entry name [`read`] accepts (the kernel's limit is `PATH_MAX`).
const MAX_NAME: usize = 4096;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

/// Streams a newc archive to `W`. Call [`CpioWriter::finish`] to write the
/// trailer; an archive without it is incomplete.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds a directory (`perm` is the permission bits, e.g. `0o755`).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (e.g. `dev/console`, 5:1).
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the `TRAILER!!!` entry and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.header(TRAILER, 0, 1, (0, 0), 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name == TRAILER || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is larger than 4 GiB"),
            )
        })?;
        self.header(name, mode, nlink, rdev, size)?;
        self.write_padded(data)
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: u32,
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(namesize)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?,
            0, // check (only used by the "crc" variant)
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + namesize + 3);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write_padded(&header)
    }

    /// Writes `bytes`, then zeros up to the next multiple of 4 of the
    /// archive offset (header+name and data are each padded).
    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

/// One entry of a parsed archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Device number of a device node (major, minor).
    pub rdev: (u32, u32),
    /// File contents, or the target of a symlink.
    pub data: Vec<u8>,
}

impl CpioEntry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
    /// Whether this is a character device.
    pub fn is_char_device(&self) -> bool {
        self.mode & S_IFMT == S_IFCHR
    }
}

/// Why an archive could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpioError {
    /// The data ends inside an entry.
    #[error("cpio archive is truncated at offset {0}")]
    Truncated(usize),
    /// A header does not start with the newc magic.
    #[error("no newc cpio header (070701) at offset {0}")]
    BadMagic(usize),
    /// A header field is not hexadecimal.
    #[error("bad header field at offset {0}")]
    BadField(usize),
    /// An entry name is empty, too long, not UTF-8 or not NUL-terminated.
    #[error("bad entry name at offset {0}")]
    BadName(usize),
    /// The data ends without a `TRAILER!!!` entry.
    #[error("cpio archive has no TRAILER!!! entry")]
    NoTrailer,
}

/// Parses a newc archive up to its trailer. Bytes after the trailer (block
/// padding, further concatenated archives) are ignored.
pub fn read(data: &[u8]) -> Result<Vec<CpioEntry>, CpioError> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    loop {
        if off == data.len() {
            return Err(CpioError::NoTrailer);
        }
        let header = data
            .get(off..off + HEADER_LEN)
            .ok_or(CpioError::Truncated(off))?;
        if &header[..6] != MAGIC {
            return Err(CpioError::BadMagic(off));
        }
        let field = |i: usize| -> Result<u32, CpioError> {
            let start = 6 + 8 * i;
            let text = std::str::from_utf8(&header[start..start + 8])
                .map_err(|_| CpioError::BadField(off + start))?;
            u32::from_str_radix(text, 16).map_err(|_| CpioError::BadField(off + start))
        };
        let (mode, uid, gid, nlink) = (field(1)?, field(2)?, field(3)?, field(4)?);
        let size = field(6)? as usize;
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        if namesize == 0 || namesize > MAX_NAME {
            return Err(CpioError::BadName(off));
        }
        let name_start = off + HEADER_LEN;
        let name_bytes = data
            .get(name_start..name_start + namesize)
            .ok_or(CpioError::Truncated(name_start))?;
        let (last, name_bytes) = name_bytes.split_last().ok_or(CpioError::BadName(off))?;
        if *last != 0 || name_bytes.contains(&0) {
            return Err(CpioError::BadName(off));
        }
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| CpioError::BadName(off))?
            .to_owned();
        let data_start = align4(name_start + namesize);
        if name == TRAILER {
            return Ok(entries);
        }
        let end = data_start
            .checked_add(size)
            .ok_or(CpioError::Truncated(data_start))?;
        let contents = data
            .get(data_start..end)
            .ok_or(CpioError::Truncated(data_start))?;
        entries.push(CpioEntry {
            name,
            mode,
            uid,
            gid,
            nlink,
            rdev,
            data: contents.to_vec(),
        });
        off = align4(end);
        if off > data.len() {
            return Err(CpioError::Truncated(end));
        }
    }
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("etc/empty", 0o644, b"").unwrap();
        w.file("lib/modules/a.ko", 0o644, &[7u8; 5]).unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn writes_exact_newc_headers() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"abc").unwrap();
        let out = w.finish().unwrap();
        let expected_header = "070701\
             00000001000081ed00000000000000000000000100000000\
             00000003000000000000000000000000000000000000000500000000";
        assert_eq!(&out[..HEADER_LEN], expected_header.as_bytes());
        // name "init\0" ends at 115, padded to 116; data "abc" padded to 120.
        assert_eq!(&out[HEADER_LEN..116], b"init\0\0");
        assert_eq!(&out[116..120], b"abc\0");
        assert_eq!(&out[120..126], MAGIC);
        assert!(out.len() % 4 == 0);
        assert!(out.windows(10).any(|w| w == TRAILER.as_bytes()));
    }

    #[test]
    fn round_trips_through_the_reader() {
        let out = sample();
        assert_eq!(out.len() % 4, 0);
        let entries = read(&out).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "etc/empty",
                "lib/modules/a.ko",
                "bin/sh"
            ]
        );
        assert!(entries[0].is_dir());
        assert!(entries[1].is_char_device());
        assert_eq!(entries[1].rdev, (5, 1));
        assert!(entries[2].is_file());
        assert_eq!(entries[2].mode & 0o7777, 0o755);
        assert_eq!(entries[2].data, b"#!/bin/sh\necho hi\n");
        assert!(entries[3].data.is_empty());
        assert_eq!(entries[4].data, [7u8; 5]);
        assert!(entries[5].is_symlink());
        assert_eq!(entries[5].data, b"busybox");
        assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0));
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn system_cpio_agrees_if_installed() {
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio(1) not installed; skipping the cross-check");
            return;
        };
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "dev\ndev/console\ninit\netc/empty\nlib/modules/a.ko\nbin/sh\n"
        );
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
    }

    #[test]
    fn reader_is_bounded_on_malformed_input() {
        let out = sample();
        // Every prefix that cuts the archive before the trailer's name ends
        // is an error (the last 3 bytes are the trailer's padding).
        for len in 0..out.len() - 3 {
            assert!(read(&out[..len]).is_err(), "prefix of {len} bytes parsed");
        }
        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(read(&bad), Err(CpioError::BadMagic(0)));
        let mut huge = out.clone();
        // filesize of the first entry: field 6 at 6 + 48.
        huge[54..62].copy_from_slice(b"ffffffff");
        assert!(matches!(read(&huge), Err(CpioError::Truncated(_))));
        let mut badhex = out;
        badhex[54] = b'z';
        assert!(matches!(read(&badhex), Err(CpioError::BadField(_))));
    }
}
