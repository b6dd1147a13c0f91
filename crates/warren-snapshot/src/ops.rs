//! Snapshot operations on generation files: turning a RAM file into a
//! generation, applying the daemon's dirty report, and flattening a chain
//! into one file. All synchronous and file-bound (callers use
//! `spawn_blocking`); every cost is proportional to the data, never to the
//! guest RAM size, so a mostly-idle 8 GiB guest snapshots fast.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::dirty::DirtyReport;
use crate::format::{BLOCK_SIZE, FormatError, Generation, SnapshotHeader};
use crate::fsutil::{self, PathIo};
use crate::map::{BlockMap, BlockSource};
use crate::packed::{GenerationFile, PackedGeneration};

/// Bytes moved per read/write syscall: large enough to amortize syscalls,
/// small enough to keep memory flat.
const CHUNK: usize = 1 << 20;
const CHUNK_BLOCKS: u64 = CHUNK as u64 / BLOCK_SIZE;
const BS: usize = BLOCK_SIZE as usize;

/// Why a snapshot operation failed. Messages name the file involved.
#[derive(Debug, Error)]
pub enum OpError {
    /// The disk (or quota) holding `path` is full: distinct so callers can
    /// tell the user "disk full" instead of a generic I/O error.
    #[error("no space left on the device holding {}", .path.display())]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("{op} {} failed", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The header is unreadable or inconsistent.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A RAM or generation file does not have the memory size.
    #[error("{} is {len} bytes long, expected {expected}", .path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The memory size.
        expected: u64,
    },
    /// A generation file ends before blocks the map says it holds.
    #[error("generation {id} file {} is {len} bytes long, but the map needs {needed}", .path.display())]
    ShortGeneration {
        /// Generation id.
        id: u32,
        /// Its file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// Bytes the map needs.
        needed: u64,
    },
    /// The memory size is not a positive multiple of [`BLOCK_SIZE`].
    #[error("memory size {bytes} is not a positive multiple of {BLOCK_SIZE}")]
    BadSize {
        /// The size given.
        bytes: u64,
    },
    /// The header's fields contradict each other.
    #[error("inconsistent snapshot header: {reason}")]
    InvalidHeader {
        /// What is wrong.
        reason: String,
    },
    /// The dirty report does not fit the map it is applied to.
    #[error("dirty report does not fit a map of {blocks} blocks: {reason}")]
    InvalidDirty {
        /// Blocks in the map.
        blocks: u64,
        /// What is wrong.
        reason: String,
    },
    /// The daemon could not store some writes, so its work file does not
    /// hold the guest's memory and must not become a generation.
    #[error(
        "the memory daemon could not store {count} written blocks (first error: {first}); the work file is incomplete"
    )]
    LostWrites {
        /// Blocks whose latest content is missing.
        count: u64,
        /// The daemon's first error message.
        first: String,
    },
    /// A packed generation file is damaged (or not one).
    #[error("packed generation {} is damaged (or not one)", .path.display())]
    BadPacked {
        /// The generation file.
        path: PathBuf,
        /// What is wrong with it.
        source: crate::packed::PackedError,
    },
    /// A dirty report file is not valid JSON of a [`DirtyReport`].
    #[error("dirty report {} is not valid JSON of a dirty report", .path.display())]
    BadReport {
        /// The report file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl OpError {
    /// Wraps an I/O error, turning ENOSPC/EDQUOT into [`OpError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if fsutil::is_no_space(&source) {
            OpError::NoSpace {
                path: path.to_path_buf(),
            }
        } else {
            OpError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

impl From<PathIo> for OpError {
    fn from(e: PathIo) -> Self {
        OpError::io(e.op, &e.path, e.source)
    }
}

/// Produces `dest` crash-safely: `write` creates, fills and fsyncs the
/// temporary file it is given (`dest.tmp`), which then replaces `dest`
/// (rename, fsync of the directory). On any failure the temporary file is
/// removed and `dest` is untouched.
pub(crate) fn write_then_rename<T>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<T, OpError>,
) -> Result<T, OpError> {
    let tmp = fsutil::with_suffix(dest, ".tmp");
    let value = write(&tmp)
        .and_then(|value| {
            std::fs::rename(&tmp, dest).map_err(|e| OpError::io("renaming to", dest, e))?;
            Ok(value)
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    fsutil::sync_parent_dir(dest)?;
    Ok(value)
}

fn check_size(bytes: u64) -> Result<u64, OpError> {
    if bytes == 0 || !bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(OpError::BadSize { bytes });
    }
    Ok(bytes / BLOCK_SIZE)
}

/// Appends block run `(start, len)` to sorted `runs`, merging with the last.
fn push_run(runs: &mut Vec<(u64, u64)>, start: u64, len: u64) {
    if let Some(last) = runs.last_mut()
        && last.0 + last.1 == start
    {
        last.1 += len;
        return;
    }
    runs.push((start, len));
}

/// Copies the RAM file of a cold-booted VM that lives outside its sandbox
/// directory (in host memory: see `warren_vmm::qemu::volatile`) to `dest`,
/// the file a first pause turns into a generation with [`full_generation`].
/// Only non-zero blocks of the allocated ranges are written, so the copy is
/// as sparse as that generation will be. Crash-safe: `dest.tmp`, fsync,
/// rename, fsync of the directory; on error `dest` is untouched and the
/// temporary file removed. Returns the bytes written.
pub fn copy_ram(source: &Path, dest: &Path) -> Result<u64, OpError> {
    let input = File::open(source).map_err(|e| OpError::io("opening", source, e))?;
    let len = input
        .metadata()
        .map_err(|e| OpError::io("inspecting", source, e))?
        .len();
    let ranges = fsutil::data_ranges(&input, len)
        .map_err(|e| OpError::io("finding the data of", source, e))?;
    write_then_rename(dest, |temp| {
        let output = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)
            .map_err(|e| OpError::io("creating", temp, e))?;
        output
            .set_len(len)
            .map_err(|e| OpError::io("sizing", temp, e))?;
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        for (start, end) in ranges {
            let mut offset = start;
            while offset < end {
                let n = (end - offset).min(CHUNK as u64) as usize;
                input
                    .read_exact_at(&mut buf[..n], offset)
                    .map_err(|e| OpError::io("reading", source, e))?;
                let mut at = offset;
                for block in buf[..n].chunks(BS) {
                    if !fsutil::is_zero(block) {
                        output
                            .write_all_at(block, at)
                            .map_err(|e| OpError::io("writing", temp, e))?;
                        written += block.len() as u64;
                    }
                    at += block.len() as u64;
                }
                offset += n as u64;
            }
        }
        output
            .sync_all()
            .map_err(|e| OpError::io("syncing", temp, e))?;
        Ok(written)
    })
}

/// Turns a RAM file written in full by a running VM (sparse, `memory_bytes`
/// long) into generation `gen_id`: walks only its allocated ranges
/// (SEEK_DATA/SEEK_HOLE), punches holes over all-zero blocks (guests zero
/// freed memory, and those blocks need not take disk space) and fsyncs it.
/// Returns the map: nonzero blocks → `Gen(gen_id)`, the rest `Zero`.
/// File systems without hole punching keep the zero blocks allocated; the
/// map is the same.
pub fn full_generation(file: &Path, memory_bytes: u64, gen_id: u32) -> Result<BlockMap, OpError> {
    let blocks = check_size(memory_bytes)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(|e| OpError::io("opening", file, e))?;
    let len = f
        .metadata()
        .map_err(|e| OpError::io("inspecting", file, e))?
        .len();
    if len != memory_bytes {
        return Err(OpError::SizeMismatch {
            path: file.to_path_buf(),
            len,
            expected: memory_bytes,
        });
    }
    let ranges = fsutil::data_ranges(&f, memory_bytes)
        .map_err(|e| OpError::io("finding the data of", file, e))?;

    let mut buf = vec![0u8; CHUNK];
    let mut nonzero: Vec<(u64, u64)> = Vec::new();
    // Zero blocks to punch as one block run; it may span unscanned holes,
    // since punching a hole over a hole is a no-op.
    let mut punch: Option<(u64, u64)> = None;
    let mut can_punch = true;
    let do_punch = |run: (u64, u64), can_punch: &mut bool| -> Result<(), OpError> {
        if !*can_punch {
            return Ok(());
        }
        match fsutil::punch_hole(&f, run.0 * BLOCK_SIZE, (run.1 - run.0) * BLOCK_SIZE) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(file = %file.display(), "file system cannot punch holes; zero blocks stay allocated");
                *can_punch = false;
                Ok(())
            }
            Err(e) => Err(OpError::io("punching holes in", file, e)),
        }
    };
    let mut scanned_to = 0u64;
    for (start, end) in ranges {
        let first = (start / BLOCK_SIZE).max(scanned_to);
        let last = end.div_ceil(BLOCK_SIZE).min(blocks);
        let mut b = first;
        while b < last {
            let n = (last - b).min(CHUNK_BLOCKS);
            let chunk = &mut buf[..n as usize * BS];
            f.read_exact_at(chunk, b * BLOCK_SIZE)
                .map_err(|e| OpError::io("reading", file, e))?;
            for (i, block) in chunk.chunks_exact(BS).enumerate() {
                let blk = b + i as u64;
                if fsutil::is_zero(block) {
                    punch = Some(match punch {
                        Some((s, _)) => (s, blk + 1),
                        None => (blk, blk + 1),
                    });
                } else {
                    if let Some(run) = punch.take() {
                        do_punch(run, &mut can_punch)?;
                    }
                    push_run(&mut nonzero, blk, 1);
                }
            }
            b += n;
        }
        scanned_to = scanned_to.max(last);
    }
    if let Some(run) = punch.take() {
        do_punch(run, &mut can_punch)?;
    }
    f.sync_all().map_err(|e| OpError::io("syncing", file, e))?;
    BlockMap::new_zero(blocks)
        .overlay(nonzero, BlockSource::Gen(gen_id))
        .map_err(|e| OpError::InvalidHeader {
            reason: e.to_string(),
        })
}

/// Checks that `runs` are non-empty, sorted, non-overlapping and inside
/// `blocks`.
pub(crate) fn check_runs(blocks: u64, runs: &[(u64, u64)], what: &str) -> Result<(), OpError> {
    let bad = |reason: String| OpError::InvalidDirty { blocks, reason };
    let mut pos = 0u64;
    for &(s, l) in runs {
        if l == 0 {
            return Err(bad(format!("{what} run ({s}, {l}) is empty")));
        }
        let end = s
            .checked_add(l)
            .filter(|&e| e <= blocks)
            .ok_or_else(|| bad(format!("{what} run ({s}, {l}) is out of range")))?;
        if s < pos {
            return Err(bad(format!(
                "{what} runs are not sorted and disjoint at block {s}"
            )));
        }
        pos = end;
    }
    Ok(())
}

/// Applies a dirty report from the memory daemon to the map the VM resumed
/// from: blocks written with data → `Gen(gen_id)` (the work file becomes
/// that generation), blocks written with zeros → `Zero`. Refuses a report
/// with write errors, since its work file misses some of the guest's writes.
pub fn apply_dirty(map: &BlockMap, dirty: &DirtyReport, gen_id: u32) -> Result<BlockMap, OpError> {
    if dirty.write_errors > 0 {
        return Err(OpError::LostWrites {
            count: dirty.write_errors,
            first: dirty
                .first_error
                .clone()
                .unwrap_or_else(|| "unknown".to_string()),
        });
    }
    let blocks = map.blocks();
    check_runs(blocks, &dirty.data_runs, "data")?;
    check_runs(blocks, &dirty.zero_runs, "zero")?;
    let mut all: Vec<(u64, u64)> = dirty
        .data_runs
        .iter()
        .chain(&dirty.zero_runs)
        .copied()
        .filter(|r| r.1 > 0)
        .collect();
    all.sort_unstable();
    if let Some(w) = all.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
        return Err(OpError::InvalidDirty {
            blocks,
            reason: format!("a data run and a zero run overlap at block {}", w[1].0),
        });
    }
    let to_err = |e: crate::map::MapError| OpError::InvalidDirty {
        blocks,
        reason: e.to_string(),
    };
    map.overlay(dirty.data_runs.iter().copied(), BlockSource::Gen(gen_id))
        .map_err(to_err)?
        .overlay(dirty.zero_runs.iter().copied(), BlockSource::Zero)
        .map_err(to_err)
}

/// Accumulates consecutive blocks of a chain in one buffer, then writes
/// their nonzero parts to the destination with as few syscalls as possible.
struct Copier<'a> {
    out: &'a File,
    path: &'a Path,
    buf: Vec<u8>,
    start: u64,
    len: u64,
    nonzero: Vec<(u64, u64)>,
    written: u64,
}

impl Copier<'_> {
    /// Room for `b` to be appended: flushes if `b` does not continue the
    /// buffered run or the buffer is full. Returns how many blocks fit.
    fn make_room(&mut self, b: u64, want: u64) -> Result<u64, OpError> {
        if self.len > 0 && (self.start + self.len != b || self.len == CHUNK_BLOCKS) {
            self.flush()?;
        }
        if self.len == 0 {
            self.start = b;
        }
        Ok(want.min(CHUNK_BLOCKS - self.len))
    }

    fn slot(&mut self, n: u64) -> &mut [u8] {
        let from = (self.len * BLOCK_SIZE) as usize;
        &mut self.buf[from..from + (n * BLOCK_SIZE) as usize]
    }

    fn flush(&mut self) -> Result<(), OpError> {
        let data = &self.buf[..(self.len * BLOCK_SIZE) as usize];
        let mut i = 0u64;
        while i < self.len {
            let block = |j: u64| &data[(j * BLOCK_SIZE) as usize..((j + 1) * BLOCK_SIZE) as usize];
            if fsutil::is_zero(block(i)) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < self.len && !fsutil::is_zero(block(j)) {
                j += 1;
            }
            let bytes = &data[(i * BLOCK_SIZE) as usize..(j * BLOCK_SIZE) as usize];
            self.out
                .write_all_at(bytes, (self.start + i) * BLOCK_SIZE)
                .map_err(|e| OpError::io("writing", self.path, e))?;
            self.written += bytes.len() as u64;
            push_run(&mut self.nonzero, self.start + i, j - i);
            i = j;
        }
        self.len = 0;
        Ok(())
    }
}

/// Opens `generation`'s file at `path` (its name resolved): a packed file
/// with its index checked against `blocks`, a sparse one checked to reach
/// `need` bytes (the end of the last block the map reads from it).
pub fn open_generation(
    path: &Path,
    generation: &Generation,
    need: u64,
    blocks: u64,
) -> Result<GenerationFile, OpError> {
    if generation.packed {
        return PackedGeneration::open(path, blocks).map(GenerationFile::Packed);
    }
    let f = File::open(path).map_err(|e| OpError::io("opening generation file", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| OpError::io("inspecting", path, e))?
        .len();
    if len < need {
        return Err(OpError::ShortGeneration {
            id: generation.id,
            path: path.to_path_buf(),
            len,
            needed: need,
        });
    }
    Ok(GenerationFile::Sparse(f))
}

/// Writes `dest` holding every nonzero block of the chain at its offset
/// (sparse elsewhere), crash-safely (`dest.tmp`, fsync, rename, fsync dir).
/// Returns the new map (nonzero → `Gen(new_gen_id)`) and the bytes written.
/// Merging a long chain into one generation bounds read amplification and
/// open files; flattening a template lets clones share one file.
pub fn flatten(
    dir: &Path,
    header: &SnapshotHeader,
    dest: &Path,
    new_gen_id: u32,
) -> Result<(BlockMap, u64), OpError> {
    let blocks = check_size(header.memory_bytes)?;
    if header.map.blocks() != blocks {
        return Err(OpError::InvalidHeader {
            reason: format!(
                "map covers {} blocks but memory is {} bytes",
                header.map.blocks(),
                header.memory_bytes
            ),
        });
    }
    let mut needed: BTreeMap<u32, u64> = BTreeMap::new();
    for e in header.map.extents() {
        if let BlockSource::Gen(g) = e.source {
            let n = needed.entry(g).or_default();
            *n = (*n).max(e.end() * BLOCK_SIZE);
        }
    }
    let mut files: BTreeMap<u32, (GenerationFile, PathBuf)> = BTreeMap::new();
    for (&id, &need) in &needed {
        let g = header
            .generations
            .iter()
            .find(|g| g.id == id)
            .ok_or(FormatError::UnlistedGeneration { path: None, id })?;
        let path = header.resolve(dir, &g.file);
        let file = open_generation(&path, g, need, blocks)?;
        files.insert(id, (file, path));
    }

    let (nonzero, written) = write_then_rename(dest, |tmp| {
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(|e| OpError::io("creating", tmp, e))?;
        out.set_len(header.memory_bytes)
            .map_err(|e| OpError::io("sizing", tmp, e))?;
        let mut c = Copier {
            out: &out,
            path: tmp,
            buf: vec![0u8; CHUNK],
            start: 0,
            len: 0,
            nonzero: Vec::new(),
            written: 0,
        };
        for e in header.map.extents() {
            let BlockSource::Gen(g) = e.source else {
                continue;
            };
            let Some((src, src_path)) = files.get(&g) else {
                continue; // unreachable: every Gen in the map was opened above
            };
            let mut b = e.start;
            while b < e.end() {
                let n = c.make_room(b, e.end() - b)?;
                src.read_exact_at(c.slot(n), b * BLOCK_SIZE)
                    .map_err(|e| OpError::io("reading", src_path, e))?;
                c.len += n;
                b += n;
            }
        }
        c.flush()?;
        out.sync_all().map_err(|e| OpError::io("syncing", tmp, e))?;
        Ok((c.nonzero, c.written))
    })?;
    let map = BlockMap::new_zero(blocks)
        .overlay(nonzero, BlockSource::Gen(new_gen_id))
        .map_err(|e| OpError::InvalidHeader {
            reason: e.to_string(),
        })?;
    Ok((map, written))
}

/// Disk space a file really uses (`st_blocks * 512`), 0 if it is missing:
/// sparse generation files are much smaller than their length, and this is
/// what quotas and "disk used" reports should count.
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}
