//! The `warren-memfs` daemon: a FUSE file system with one file, `memory`,
//! that QEMU maps (`memory-backend-file,share=on`) as guest RAM on resume.
//!
//! Why FUSE: resuming must not copy gigabytes of snapshot before the guest
//! runs. Each page the guest touches is faulted in through this file and
//! served from the snapshot chain; pages it writes go to a sparse work file
//! and are tracked per 4 KiB block, so the next pause stores only those
//! (the [`DirtyReport`] written at exit).
//!
//! Block states: untouched (read from the chain), written with data (read
//! from the work file), written with zeros (read as zeros, not stored), and
//! pending (a write that failed, e.g. disk full: kept in memory so the guest
//! never sees its memory revert, acknowledged to the kernel, retried on
//! every fsync and at exit; fsync of `memory` fails while any is pending).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session, SessionUnmounter, WriteFlags,
};

use crate::dirty::{DirtyReport, dirty_report_path, write_dirty_report};
use crate::format::{BLOCK_SIZE, read_header};
use crate::fsutil;
use crate::map::{BlockMap, BlockSource};
use crate::packed::GenerationFile;

/// What to serve and where; mirrors the command line of `warren-memfs`.
#[derive(Debug, Clone)]
pub struct MemfsConfig {
    /// Existing empty directory to mount on; the file is `mount/memory`.
    pub mount: PathBuf,
    /// Sparse file receiving the guest's writes; recreated empty at start
    /// (a previous attempt's work file is garbage).
    pub work: PathBuf,
    /// Guest RAM size in bytes (multiple of 4096); must match the snapshot.
    pub size: u64,
    /// Snapshot directory to read from; `None` serves all zeros (a fresh VM
    /// that should still produce diff snapshots).
    pub snapshot: Option<PathBuf>,
    /// FUSE worker threads: more lets concurrent vCPU faults proceed in
    /// parallel.
    pub threads: usize,
}

/// The file name under the mount point.
pub const MEMORY_FILE: &str = "memory";

const ROOT_INO: u64 = 1;
const MEMORY_INO: u64 = 2;
/// Largest read/write request negotiated with the kernel.
const MAX_IO: u32 = 1 << 20;
/// Attributes never change, so the kernel may cache them for long.
const TTL: Duration = Duration::from_secs(24 * 3600);
const BS: u64 = BLOCK_SIZE;

const UNTOUCHED: u8 = 0;
const DATA: u8 = 1;
const ZERO: u8 = 2;
const PENDING: u8 = 3;

/// The snapshot being served: its map and one open file per generation.
struct Chain {
    map: BlockMap,
    /// Sorted by id.
    files: Vec<(u32, GenerationFile)>,
}

impl Chain {
    fn file(&self, id: u32) -> Option<&GenerationFile> {
        self.files
            .binary_search_by_key(&id, |f| f.0)
            .ok()
            .and_then(|i| self.files.get(i))
            .map(|f| &f.1)
    }
}

/// Where a block's current bytes are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Src {
    Zero,
    Work,
    Gen(u32),
    Pending,
}

/// Serialized write-side state (writes are serialized by the kernel for
/// one file anyway; the lock also makes read-modify-write safe).
#[derive(Default)]
struct WriteSide {
    /// Blocks whose write to the work file failed, with their bytes.
    pending: BTreeMap<u64, Box<[u8]>>,
    /// Writes whose data could not even be kept (e.g. the chain could not
    /// be read to complete a partial block).
    lost: u64,
    first_error: Option<String>,
    last_errno: i32,
}

struct Shared {
    size: u64,
    chain: Option<Chain>,
    work: File,
    work_path: PathBuf,
    states: Vec<AtomicU8>,
    writes: Mutex<WriteSide>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

thread_local! {
    /// Reply buffer reused across reads, so the fault path does not allocate.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriteSide> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self, block: u64) -> u8 {
        self.states
            .get(block as usize)
            .map_or(ZERO, |s| s.load(Ordering::Acquire))
    }

    fn set_state(&self, block: u64, state: u8) {
        if let Some(s) = self.states.get(block as usize) {
            s.store(state, Ordering::Release);
        }
    }

    fn source(&self, block: u64) -> Src {
        match self.state(block) {
            DATA => Src::Work,
            ZERO => Src::Zero,
            PENDING => Src::Pending,
            _ => match &self.chain {
                Some(c) => match c.map.lookup(block) {
                    Some(BlockSource::Gen(g)) => Src::Gen(g),
                    _ => Src::Zero,
                },
                None => Src::Zero,
            },
        }
    }

    /// Fills `buf` with the current content at `offset` (in bounds), one
    /// syscall per run of blocks with the same source. `side` is passed by
    /// the write path, which already holds the lock.
    fn read_into(&self, offset: u64, buf: &mut [u8], side: Option<&WriteSide>) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / BS;
            let src = self.source(block);
            let mut seg_end = ((block + 1) * BS).min(end);
            if src != Src::Pending {
                while seg_end < end && self.source(seg_end / BS) == src {
                    seg_end = ((seg_end / BS + 1) * BS).min(end);
                }
            }
            let out = &mut buf[(pos - offset) as usize..(seg_end - offset) as usize];
            match src {
                Src::Zero => out.fill(0),
                Src::Work => self.work.read_exact_at(out, pos)?,
                Src::Gen(g) => match self.chain.as_ref().and_then(|c| c.file(g)) {
                    Some(f) => f.read_exact_at(out, pos)?,
                    None => return Err(io::Error::from_raw_os_error(libc::EIO)),
                },
                Src::Pending => self.read_pending(block, pos, out, side)?,
            }
            pos = seg_end;
        }
        Ok(())
    }

    fn read_pending(
        &self,
        block: u64,
        pos: u64,
        out: &mut [u8],
        side: Option<&WriteSide>,
    ) -> io::Result<()> {
        let guard: MutexGuard<'_, WriteSide>;
        let side = match side {
            Some(s) => s,
            None => {
                guard = self.lock();
                &guard
            }
        };
        let from = (pos % BS) as usize;
        if let Some(data) = side.pending.get(&block)
            && let Some(src) = data.get(from..from + out.len())
        {
            out.copy_from_slice(src);
            return Ok(());
        }
        // Stored or zeroed since we looked; stable now that we hold the lock.
        match self.state(block) {
            ZERO => out.fill(0),
            _ => self.work.read_exact_at(out, pos)?,
        }
        Ok(())
    }

    fn note_error(&self, side: &mut WriteSide, msg: String, errno: i32) {
        side.last_errno = errno;
        if side.first_error.is_none() {
            tracing::error!("{msg}");
            side.first_error = Some(msg);
        } else {
            tracing::debug!("{msg}");
        }
    }

    /// Stores whole blocks starting at `first` in the work file; on failure
    /// keeps them in memory (pending) and returns the error.
    fn store_data(&self, side: &mut WriteSide, first: u64, bytes: &[u8]) -> io::Result<()> {
        let n = bytes.len() as u64 / BS;
        match self.work.write_all_at(bytes, first * BS) {
            Ok(()) => {
                for b in first..first + n {
                    if self.state(b) == PENDING {
                        side.pending.remove(&b);
                    }
                    self.set_state(b, DATA);
                }
                Ok(())
            }
            Err(e) => {
                let msg = format!(
                    "writing {} bytes at offset {} of {}: {e}",
                    bytes.len(),
                    first * BS,
                    self.work_path.display()
                );
                self.note_error(side, msg, e.raw_os_error().unwrap_or(libc::EIO));
                for (i, chunk) in bytes.chunks_exact(BS as usize).enumerate() {
                    let b = first + i as u64;
                    side.pending.insert(b, chunk.into());
                    self.set_state(b, PENDING);
                }
                Err(e)
            }
        }
    }

    /// [`Self::store_data`] for the write path: a block that cannot be
    /// stored is kept in memory (served to reads, retried at every fsync),
    /// so the write succeeds for the kernel. Answering it with an error
    /// would make the kernel drop the page's dirty state and report the
    /// error to a later, unrelated fsync, while the data is in fact safe.
    fn store_data_or_keep(&self, side: &mut WriteSide, first: u64, bytes: &[u8]) {
        let _ = self.store_data(side, first, bytes);
    }

    /// Marks `n` blocks from `first` as zero, freeing their space in the
    /// work file if they held data there. A failed punch is harmless: zero
    /// blocks are never read from the work file.
    fn store_zero(&self, side: &mut WriteSide, first: u64, n: u64) {
        if (first..first + n).any(|b| self.state(b) == DATA)
            && let Err(e) = fsutil::punch_hole(&self.work, first * BS, n * BS)
        {
            tracing::debug!("punching blocks {first}+{n} of the work file: {e}");
        }
        for b in first..first + n {
            if self.state(b) == PENDING {
                side.pending.remove(&b);
            }
            self.set_state(b, ZERO);
        }
    }

    /// Handles one write request: whole zero blocks become zero, whole data
    /// blocks go to the work file in one syscall per run, partial blocks are
    /// completed from the current content first.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut side = self.lock();
        let end = offset + data.len() as u64;
        let mut first_err: Option<io::Error> = None;
        // Runs of whole blocks, (first block, count); at most one is open.
        let mut data_run: Option<(u64, u64)> = None;
        let mut zero_run: Option<(u64, u64)> = None;
        let slice = |(b, n): (u64, u64)| {
            &data[(b * BS - offset) as usize..((b + n) * BS - offset) as usize]
        };
        let mut pos = offset;
        while pos < end {
            let block = pos / BS;
            let bstart = block * BS;
            let bend = bstart + BS;
            if pos == bstart && end >= bend {
                if fsutil::is_zero(slice((block, 1))) {
                    if let Some(r) = data_run.take() {
                        self.store_data_or_keep(&mut side, r.0, slice(r));
                    }
                    zero_run = Some(zero_run.map_or((block, 1), |(s, n)| (s, n + 1)));
                } else {
                    if let Some((s, n)) = zero_run.take() {
                        self.store_zero(&mut side, s, n);
                    }
                    data_run = Some(data_run.map_or((block, 1), |(s, n)| (s, n + 1)));
                }
            } else {
                if let Some(r) = data_run.take() {
                    self.store_data_or_keep(&mut side, r.0, slice(r));
                }
                if let Some((s, n)) = zero_run.take() {
                    self.store_zero(&mut side, s, n);
                }
                let mut blk = [0u8; BS as usize];
                match self.read_into(bstart, &mut blk, Some(&side)) {
                    Ok(()) => {
                        let (from, to) = (pos, end.min(bend));
                        blk[(from - bstart) as usize..(to - bstart) as usize].copy_from_slice(
                            &data[(from - offset) as usize..(to - offset) as usize],
                        );
                        if fsutil::is_zero(&blk) {
                            self.store_zero(&mut side, block, 1);
                        } else {
                            self.store_data_or_keep(&mut side, block, &blk);
                        }
                    }
                    Err(e) => {
                        side.lost += 1;
                        let msg = format!(
                            "reading block {block} to complete a partial write: {e}; the write is lost"
                        );
                        self.note_error(&mut side, msg, e.raw_os_error().unwrap_or(libc::EIO));
                        first_err.get_or_insert(e);
                    }
                }
            }
            pos = bend.min(end);
        }
        if let Some(r) = data_run.take() {
            self.store_data_or_keep(&mut side, r.0, slice(r));
        }
        if let Some((s, n)) = zero_run.take() {
            self.store_zero(&mut side, s, n);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Makes `[offset, offset + len)` read as zeros: whole blocks become
    /// zero blocks (their work-file space is freed), partial edge blocks are
    /// zero-filled by read-modify-write. This is what QEMU's RAM discard
    /// (balloon, free page reporting) does to the file with PUNCH_HOLE.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        const ZEROS: [u8; BS as usize] = [0; BS as usize];
        let end = offset + len;
        let first_full = offset.div_ceil(BS);
        let last_full = end / BS;
        if first_full > last_full {
            // Inside one block.
            return self.write_at(offset, &ZEROS[..len as usize]);
        }
        if offset < first_full * BS {
            self.write_at(offset, &ZEROS[..(first_full * BS - offset) as usize])?;
        }
        if first_full < last_full {
            let mut side = self.lock();
            self.store_zero(&mut side, first_full, last_full - first_full);
        }
        if last_full * BS < end {
            self.write_at(last_full * BS, &ZEROS[..(end - last_full * BS) as usize])?;
        }
        Ok(())
    }

    /// Tries again to store pending blocks (space may have been freed).
    /// Returns whether none is left.
    fn retry_pending(&self, side: &mut WriteSide) -> bool {
        while let Some((&b, data)) = side.pending.first_key_value() {
            match self.work.write_all_at(data, b * BS) {
                Ok(()) => {
                    side.pending.remove(&b);
                    self.set_state(b, DATA);
                }
                Err(e) => {
                    let msg = format!(
                        "retrying {} pending blocks of {}: {e}",
                        side.pending.len(),
                        self.work_path.display()
                    );
                    self.note_error(side, msg, e.raw_os_error().unwrap_or(libc::EIO));
                    return false;
                }
            }
        }
        true
    }

    /// Retries pending blocks and syncs the work file: what both fsync and
    /// shutdown need before the work file can be trusted.
    fn sync(&self, side: &mut WriteSide) -> Result<(), Errno> {
        let stored = self.retry_pending(side);
        let synced = self.work.sync_data();
        if !stored {
            return Err(Errno::from_i32(side.last_errno));
        }
        if let Err(e) = synced {
            let msg = format!("syncing {}: {e}", self.work_path.display());
            self.note_error(side, msg, e.raw_os_error().unwrap_or(libc::EIO));
            return Err(errno_of(&e));
        }
        Ok(())
    }

    fn report(&self, side: &WriteSide) -> DirtyReport {
        let mut report = DirtyReport {
            write_errors: side.lost + side.pending.len() as u64,
            first_error: side.first_error.clone(),
            ..DirtyReport::default()
        };
        let mut cur: Option<(u8, u64, u64)> = None;
        let close = |run: Option<(u8, u64, u64)>, report: &mut DirtyReport| match run {
            Some((DATA, s, n)) => report.data_runs.push((s, n)),
            Some((ZERO, s, n)) => report.zero_runs.push((s, n)),
            _ => {}
        };
        for (b, s) in self.states.iter().enumerate() {
            let s = s.load(Ordering::Acquire);
            match &mut cur {
                Some((cs, _, n)) if *cs == s => *n += 1,
                _ => {
                    close(cur.take(), &mut report);
                    cur = Some((s, b as u64, 1));
                }
            }
        }
        close(cur, &mut report);
        report
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match ino {
            ROOT_INO => (FileType::Directory, 0, 0o755, 2),
            MEMORY_INO => (FileType::RegularFile, self.size, 0o600, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BS as u32,
            flags: 0,
        })
    }
}

/// The FUSE side: translates requests into [`Shared`] calls.
struct MemFs {
    shared: Arc<Shared>,
}

impl Filesystem for MemFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Big requests: fewer round trips when QEMU migrates or the guest
        // touches large areas. The kernel caps readahead at what it offered.
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.shared.attr(MEMORY_INO) {
            Some(attr) if parent.0 == ROOT_INO && name == MEMORY_FILE => {
                reply.entry(&TTL, &attr, fuser::Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.shared.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // QEMU may ftruncate to the size it expects; anything else would
        // change guest RAM size, which a snapshot cannot express.
        let Some(attr) = self.shared.attr(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if ino.0 == MEMORY_INO && size.is_some_and(|s| s != self.shared.size) {
            return reply.error(Errno::EINVAL);
        }
        reply.attr(&TTL, &attr)
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            // Keep the page cache across opens: the content only changes
            // through this mount.
            MEMORY_INO => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            ROOT_INO => reply.error(Errno::from_i32(libc::EISDIR)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 != MEMORY_INO {
            return reply.error(Errno::from_i32(libc::EISDIR));
        }
        let end = offset.saturating_add(u64::from(size)).min(self.shared.size);
        if offset >= end {
            return reply.data(&[]);
        }
        let len = (end - offset) as usize;
        tracing::trace!(offset, len, "read");
        READ_BUF.with_borrow_mut(|buf| {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let out = &mut buf[..len];
            match self.shared.read_into(offset, out, None) {
                Ok(()) => reply.data(out),
                Err(e) => {
                    tracing::error!("read of {len} bytes at {offset} failed: {e}");
                    reply.error(errno_of(&e))
                }
            }
        })
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 != MEMORY_INO {
            return reply.error(Errno::from_i32(libc::EISDIR));
        }
        let fits = offset
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= self.shared.size);
        if !fits {
            return reply.error(Errno::from_i32(libc::EFBIG));
        }
        tracing::trace!(offset, len = data.len(), "write");
        match self.shared.write_at(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut side = self.shared.lock();
        match self.shared.sync(&mut side) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino.0 != MEMORY_INO {
            return reply.error(Errno::from_i32(libc::EISDIR));
        }
        let fits = offset
            .checked_add(length)
            .is_some_and(|e| e <= self.shared.size);
        let zeroing = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        let known = zeroing | libc::FALLOC_FL_KEEP_SIZE;
        if mode & !known != 0 || !fits {
            // The size is fixed and nothing else is meaningful here.
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        if mode & zeroing == 0 {
            // Plain allocation: every block already "exists".
            return reply.ok();
        }
        tracing::trace!(offset, length, "discard");
        match self.shared.discard(offset, length) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::from_i32(libc::ENOTDIR));
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (MEMORY_INO, FileType::RegularFile, MEMORY_FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // ENOSYS (quietly): the kernel then stops asking, including the
        // security.capability lookup it would otherwise do on every write.
        reply.error(Errno::ENOSYS)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.shared.size / BS;
        reply.statfs(blocks, 0, 0, 2, 0, BS as u32, 255, BS as u32)
    }
}

/// Opens the snapshot's generation files once, checking each is long
/// enough for the blocks the map takes from it, so a broken snapshot fails
/// at start and not as a guest memory error later.
fn open_chain(dir: &Path, size: u64) -> anyhow::Result<Chain> {
    let header = read_header(dir)?;
    if header.memory_bytes != size {
        bail!(
            "snapshot {} holds {} bytes of memory, but --size is {size}",
            dir.display(),
            header.memory_bytes
        );
    }
    let mut needed: BTreeMap<u32, u64> = BTreeMap::new();
    for e in header.map.extents() {
        if let BlockSource::Gen(g) = e.source {
            let n = needed.entry(g).or_default();
            *n = (*n).max(e.end() * BS);
        }
    }
    let mut files = Vec::with_capacity(header.generations.len());
    for g in &header.generations {
        let path = header.resolve(dir, &g.file);
        let need = needed.get(&g.id).copied().unwrap_or(0);
        let file = crate::ops::open_generation(&path, g, need, size / BS).with_context(|| {
            format!("opening generation {} of snapshot {}", g.id, dir.display())
        })?;
        files.push((g.id, file));
    }
    files.sort_by_key(|f| f.0);
    Ok(Chain {
        map: header.map,
        files,
    })
}

/// Blocks the termination signals in this thread (and so in every thread
/// spawned after), so one thread can wait for them with `sigwait`.
fn block_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("blocking signals: {}", io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Lazy unmount: the mount disappears now, the session ends when the last
/// user (QEMU's mapping) goes away.
fn detach(mount: &Path) {
    let Ok(c) = CString::new(mount.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        tracing::warn!(
            "lazy unmount of {}: {}",
            mount.display(),
            io::Error::last_os_error()
        );
    }
}

/// Waits for SIGTERM/SIGINT/SIGHUP and unmounts, which ends the session
/// loop; the main thread then writes the report as after an external
/// unmount. A busy mount (the file still mapped) is detached instead, and
/// the daemon finishes when its last user is gone.
fn spawn_signal_thread(set: libc::sigset_t, mut unmounter: SessionUnmounter, mount: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is an initialized signal set, `sig` a valid out pointer.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    tracing::error!("sigwait: {}", io::Error::from_raw_os_error(rc));
                    return;
                }
                tracing::info!(signal = sig, "unmounting {}", mount.display());
                let res = if first {
                    first = false;
                    unmounter.unmount()
                } else {
                    Err(io::Error::other("unmount already attempted"))
                };
                if let Err(e) = res {
                    tracing::warn!(
                        "unmounting {}: {e}; detaching it, the daemon exits when the file is no longer used",
                        mount.display()
                    );
                    detach(&mount);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the signal thread: {e}; only an unmount stops the daemon");
    }
}

/// Runs the daemon until the file system is unmounted (externally or after
/// SIGTERM), then syncs the work file and writes the [`DirtyReport`] next
/// to it. Prints `ready` on stdout once the mount serves requests. Errors
/// (bad snapshot, mount failure, report not written) are returned for the
/// binary to print and exit nonzero.
pub fn run(config: &MemfsConfig) -> anyhow::Result<()> {
    let size = config.size;
    if size == 0 || !size.is_multiple_of(BS) {
        bail!("--size {size} is not a positive multiple of {BS}");
    }
    let blocks = usize::try_from(size / BS).context("--size too large")?;
    let chain = match &config.snapshot {
        Some(dir) => Some(open_chain(dir, size)?),
        None => None,
    };
    let report_path = dirty_report_path(&config.work);
    match std::fs::remove_file(&report_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => bail!("removing the stale report {}: {e}", report_path.display()),
    }
    let work = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&config.work)
        .with_context(|| format!("creating the work file {}", config.work.display()))?;
    work.set_len(size)
        .with_context(|| format!("sizing the work file {}", config.work.display()))?;
    let mount = std::fs::canonicalize(&config.mount)
        .with_context(|| format!("mount point {}", config.mount.display()))?;

    let shared = Arc::new(Shared {
        size,
        chain,
        work,
        work_path: config.work.clone(),
        states: (0..blocks).map(|_| AtomicU8::new(UNTOUCHED)).collect(),
        writes: Mutex::new(WriteSide::default()),
        // SAFETY: geteuid/getegid cannot fail.
        uid: unsafe { libc::geteuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getegid() },
        started: SystemTime::now(),
    });

    let signals = block_signals()?;
    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::FSName("warren-memfs".into()),
        MountOption::Subtype("warren-memfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    let threads = config.threads.max(1);
    options.n_threads = Some(threads);
    options.clone_fd = threads > 1;
    let fs = MemFs {
        shared: shared.clone(),
    };
    let mut session = Session::new(fs, &mount, &options)
        .with_context(|| format!("mounting FUSE at {}", mount.display()))?;
    spawn_signal_thread(signals, session.unmount_callable(), mount.clone());

    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .context("writing the ready line")?;
    drop(stdout);
    tracing::info!(
        mount = %mount.display(),
        work = %config.work.display(),
        size,
        "serving guest memory"
    );

    let served = session.run();
    if let Err(e) = &served {
        // The kernel may still hold the mount; make sure it goes away.
        tracing::error!("FUSE session failed: {e}");
        detach(&mount);
    }

    let mut side = shared.lock();
    let synced = shared.sync(&mut side);
    if let Err(e) = &served {
        side.lost += 1;
        let msg = format!("FUSE session failed: {e}");
        shared.note_error(&mut side, msg, libc::EIO);
    }
    let report = shared.report(&side);
    drop(side);
    write_dirty_report(&report_path, &report)
        .with_context(|| format!("writing the dirty report {}", report_path.display()))?;
    tracing::info!(
        data_blocks = report.data_runs.iter().map(|r| r.1).sum::<u64>(),
        zero_blocks = report.zero_runs.iter().map(|r| r.1).sum::<u64>(),
        write_errors = report.write_errors,
        "unmounted; dirty report written"
    );
    if let Err(e) = served {
        bail!("FUSE session failed: {e}");
    }
    if synced.is_err() {
        tracing::warn!(
            "the work file is incomplete: {}",
            report.first_error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(())
}
