//! Packed generations: the blocks of a diff stored one after the other, each
//! LZ4-compressed when that makes it smaller, with an index at the end (see
//! FORMAT.md, "Packed generation files").
//!
//! A diff is mostly guest-kernel bookkeeping around what a program really
//! dirtied: slab and page-table pages, stacks, per-CPU data, `struct page`
//! arrays. Those blocks are largely zeros and small integers; stored sparse
//! at their offsets, every one costs a whole 4 KiB block of disk. Packed, a
//! diff shrinks to a fraction (measured: an idle resume-pause cycle dirties
//! ~800 KiB of blocks, packed ~170 KiB), while data that does not compress
//! (random, already compressed) is stored as is.
//!
//! The index is decoded from bytes on disk, so [`PackedIndex::from_file_bytes`]
//! is bounded, never panics, and is fuzzed
//! (`fuzz/fuzz_targets/packed_index.rs`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::format::BLOCK_SIZE;
use crate::ops::OpError;

/// First bytes of the footer (the last 24 bytes of a packed file).
pub const PACKED_MAGIC: [u8; 8] = *b"WRNPACK1";
/// Footer: magic, entry count (u64), CRC32 of the index, CRC32 of the
/// footer's first 20 bytes.
pub const FOOTER_LEN: usize = 24;
/// Index entry: block number (u64), stored length (u32).
pub const ENTRY_LEN: usize = 12;

const BS: usize = BLOCK_SIZE as usize;
/// Blocks read from the source per syscall while packing.
const READ_BLOCKS: usize = 256;

/// Why a packed generation's index is not acceptable. The file is then not
/// used at all: a resume from it fails instead of serving wrong memory.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PackedError {
    /// Shorter than a footer.
    #[error("{len} bytes is too short for a packed generation ({FOOTER_LEN}-byte footer)")]
    TooShort {
        /// File length.
        len: u64,
    },
    /// The footer does not start with [`PACKED_MAGIC`].
    #[error("no packed-generation footer (wrong magic)")]
    BadMagic,
    /// The footer's checksum does not match.
    #[error("the footer checksum does not match (damaged file)")]
    FooterChecksum,
    /// The index's checksum does not match.
    #[error("the index checksum does not match (damaged file)")]
    IndexChecksum,
    /// Index and data do not add up to the file's length.
    #[error("{entries} index entries with {data} data bytes do not fill a {len}-byte file")]
    LengthMismatch {
        /// Entries in the footer.
        entries: u64,
        /// Data bytes the index describes (saturating).
        data: u64,
        /// File length.
        len: u64,
    },
    /// An entry is out of order, out of range or of impossible length.
    #[error("index entry {entry} is invalid: {reason}")]
    BadEntry {
        /// Position in the index.
        entry: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Where one stored block is inside a packed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    block: u64,
    offset: u64,
    /// [`BLOCK_SIZE`]: stored raw; less: an LZ4 block.
    len: u32,
}

/// The decoded index of a packed generation: which blocks it holds and
/// where their bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedIndex {
    /// Sorted by block, blocks unique.
    entries: Vec<Entry>,
}

impl PackedIndex {
    /// Decodes and checks the index of a whole packed file given as bytes
    /// (`blocks`: blocks of guest memory, which every entry must be below).
    pub fn from_file_bytes(file: &[u8], blocks: u64) -> Result<Self, PackedError> {
        let len = file.len() as u64;
        let footer = file
            .len()
            .checked_sub(FOOTER_LEN)
            .map(|at| &file[at..])
            .ok_or(PackedError::TooShort { len })?;
        let count = Self::entry_count(footer, len)?;
        let index_at = file.len() - FOOTER_LEN - (count as usize) * ENTRY_LEN;
        Self::from_parts(
            footer,
            &file[index_at..file.len() - FOOTER_LEN],
            len,
            blocks,
        )
    }

    /// Checks the footer's magic and checksum; returns how many entries the
    /// index has, after checking they fit in a file of `file_len` bytes.
    fn entry_count(footer: &[u8], file_len: u64) -> Result<u64, PackedError> {
        if footer.len() != FOOTER_LEN {
            return Err(PackedError::TooShort { len: file_len });
        }
        if footer[0..8] != PACKED_MAGIC {
            return Err(PackedError::BadMagic);
        }
        if crc32fast::hash(&footer[0..20]).to_le_bytes() != footer[20..24] {
            return Err(PackedError::FooterChecksum);
        }
        let count = u64::from_le_bytes(footer[8..16].try_into().expect("8 bytes"));
        let room = (file_len - FOOTER_LEN as u64) / ENTRY_LEN as u64;
        if count > room {
            return Err(PackedError::LengthMismatch {
                entries: count,
                data: 0,
                len: file_len,
            });
        }
        Ok(count)
    }

    /// Decodes the index bytes that precede `footer` in a file of
    /// `file_len` bytes.
    fn from_parts(
        footer: &[u8],
        index: &[u8],
        file_len: u64,
        blocks: u64,
    ) -> Result<Self, PackedError> {
        if crc32fast::hash(index).to_le_bytes() != footer[16..20] {
            return Err(PackedError::IndexChecksum);
        }
        let mut entries = Vec::with_capacity(index.len() / ENTRY_LEN);
        let mut offset = 0u64;
        for (i, raw) in index.chunks_exact(ENTRY_LEN).enumerate() {
            let block = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
            let bad = |reason: String| PackedError::BadEntry {
                entry: i as u64,
                reason,
            };
            if block >= blocks {
                return Err(bad(format!(
                    "block {block} is beyond the memory's {blocks} blocks"
                )));
            }
            if let Some(previous) = entries.last().map(|e: &Entry| e.block)
                && block <= previous
            {
                return Err(bad(format!("block {block} follows block {previous}")));
            }
            if len == 0 || len as usize > BS {
                return Err(bad(format!("stored length {len} is not 1..={BS}")));
            }
            entries.push(Entry { block, offset, len });
            offset = offset.saturating_add(u64::from(len));
        }
        let expected = offset
            .saturating_add(index.len() as u64)
            .saturating_add(FOOTER_LEN as u64);
        if expected != file_len {
            return Err(PackedError::LengthMismatch {
                entries: entries.len() as u64,
                data: offset,
                len: file_len,
            });
        }
        Ok(Self { entries })
    }

    /// Blocks stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no block is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, block: u64) -> Option<Entry> {
        self.entries
            .binary_search_by_key(&block, |e| e.block)
            .ok()
            .map(|i| self.entries[i])
    }
}

/// Writes the blocks of `runs` (`(start_block, count)`, sorted, disjoint,
/// below `blocks`), read from `source` at their offsets, as a packed
/// generation at `dest`: crash-safely (`dest.tmp`, fsync, rename, fsync the
/// directory). Returns the bytes written.
pub fn pack(source: &Path, runs: &[(u64, u64)], blocks: u64, dest: &Path) -> Result<u64, OpError> {
    crate::ops::check_runs(blocks, runs, "packed")?;
    let src = File::open(source).map_err(|e| OpError::io("opening", source, e))?;
    crate::ops::write_then_rename(dest, |tmp| {
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(|e| OpError::io("creating", tmp, e))?;
        let write_err = |e: io::Error| OpError::io("writing", tmp, e);
        let mut writer = BufWriter::with_capacity(READ_BLOCKS * BS, &out);
        let mut index = Vec::new();
        let mut data = vec![0u8; READ_BLOCKS * BS];
        let mut compressed = vec![0u8; lz4_flex::block::get_maximum_output_size(BS)];
        let mut written = 0u64;
        for &(start, count) in runs {
            let mut block = start;
            while block < start + count {
                let n = (start + count - block).min(READ_BLOCKS as u64);
                let chunk = &mut data[..n as usize * BS];
                src.read_exact_at(chunk, block * BLOCK_SIZE)
                    .map_err(|e| OpError::io("reading", source, e))?;
                for (i, bytes) in chunk.chunks_exact(BS).enumerate() {
                    let stored = match lz4_flex::block::compress_into(bytes, &mut compressed) {
                        Ok(len) if len < BS => &compressed[..len],
                        _ => bytes,
                    };
                    writer.write_all(stored).map_err(write_err)?;
                    index.extend_from_slice(&(block + i as u64).to_le_bytes());
                    index.extend_from_slice(&(stored.len() as u32).to_le_bytes());
                    written += stored.len() as u64;
                }
                block += n;
            }
        }
        let mut footer = [0u8; FOOTER_LEN];
        footer[0..8].copy_from_slice(&PACKED_MAGIC);
        footer[8..16].copy_from_slice(&((index.len() / ENTRY_LEN) as u64).to_le_bytes());
        footer[16..20].copy_from_slice(&crc32fast::hash(&index).to_le_bytes());
        let footer_crc = crc32fast::hash(&footer[0..20]);
        footer[20..24].copy_from_slice(&footer_crc.to_le_bytes());
        writer.write_all(&index).map_err(write_err)?;
        writer.write_all(&footer).map_err(write_err)?;
        writer.flush().map_err(write_err)?;
        drop(writer);
        out.sync_all().map_err(|e| OpError::io("syncing", tmp, e))?;
        Ok(written + index.len() as u64 + FOOTER_LEN as u64)
    })
}

/// An open packed generation: reads decompress block by block.
#[derive(Debug)]
pub struct PackedGeneration {
    file: File,
    path: PathBuf,
    index: PackedIndex,
}

impl PackedGeneration {
    /// Opens `path` and checks its index against a memory of `blocks`
    /// blocks. A damaged file is refused here, before any guest reads it.
    pub fn open(path: &Path, blocks: u64) -> Result<Self, OpError> {
        let file = File::open(path).map_err(|e| OpError::io("opening generation file", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| OpError::io("inspecting", path, e))?
            .len();
        let bad = |source: PackedError| OpError::BadPacked {
            path: path.to_path_buf(),
            source,
        };
        if len < FOOTER_LEN as u64 {
            return Err(bad(PackedError::TooShort { len }));
        }
        let mut footer = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut footer, len - FOOTER_LEN as u64)
            .map_err(|e| OpError::io("reading", path, e))?;
        let count = PackedIndex::entry_count(&footer, len).map_err(bad)?;
        let index_len = count as usize * ENTRY_LEN;
        let mut index = vec![0u8; index_len];
        file.read_exact_at(&mut index, len - (FOOTER_LEN + index_len) as u64)
            .map_err(|e| OpError::io("reading", path, e))?;
        let index = PackedIndex::from_parts(&footer, &index, len, blocks).map_err(bad)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            index,
        })
    }

    /// The decoded index.
    pub fn index(&self) -> &PackedIndex {
        &self.index
    }

    /// Fills `out` with the memory bytes at `pos`; every block touched must
    /// be one this generation holds (the map says so before anyone asks).
    pub fn read_exact_at(&self, out: &mut [u8], pos: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let at = pos + done as u64;
            let block = at / BLOCK_SIZE;
            let within = (at % BLOCK_SIZE) as usize;
            let take = (BS - within).min(out.len() - done);
            if take == BS {
                self.read_block(block, &mut out[done..done + BS])?;
            } else {
                let mut whole = [0u8; BS];
                self.read_block(block, &mut whole)?;
                out[done..done + take].copy_from_slice(&whole[within..within + take]);
            }
            done += take;
        }
        Ok(())
    }

    fn read_block(&self, block: u64, out: &mut [u8]) -> io::Result<()> {
        let damaged = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("packed generation {}: {what}", self.path.display()),
            )
        };
        let entry = self
            .index
            .find(block)
            .ok_or_else(|| damaged(format!("block {block} is not stored here")))?;
        if entry.len as usize == BS {
            return self.file.read_exact_at(out, entry.offset);
        }
        let mut stored = [0u8; BS];
        let stored = &mut stored[..entry.len as usize];
        self.file.read_exact_at(stored, entry.offset)?;
        match lz4_flex::block::decompress_into(stored, out) {
            Ok(n) if n == BS => Ok(()),
            _ => Err(damaged(format!(
                "block {block} does not decompress to {BS} bytes"
            ))),
        }
    }
}

/// An open generation file, whichever way it stores its blocks.
#[derive(Debug)]
pub enum GenerationFile {
    /// Memory-sized sparse file, blocks at their offsets.
    Sparse(File),
    /// Packed blocks with an index ([`PackedGeneration`]).
    Packed(PackedGeneration),
}

impl GenerationFile {
    /// Fills `out` with the memory bytes at `pos`.
    pub fn read_exact_at(&self, out: &mut [u8], pos: u64) -> io::Result<()> {
        match self {
            Self::Sparse(file) => file.read_exact_at(out, pos),
            Self::Packed(packed) => packed.read_exact_at(out, pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fsutil;

    /// A work file of `blocks` blocks where block b holds `content(b)`.
    fn work_file(dir: &Path, blocks: u64, content: impl Fn(u64) -> Vec<u8>) -> PathBuf {
        let path = dir.join("work");
        let f = File::create(&path).unwrap();
        f.set_len(blocks * BLOCK_SIZE).unwrap();
        for b in 0..blocks {
            let bytes = content(b);
            if !bytes.is_empty() {
                f.write_all_at(&bytes, b * BLOCK_SIZE).unwrap();
            }
        }
        path
    }

    fn kernelish(b: u64) -> Vec<u8> {
        let mut v = vec![0u8; BS];
        for i in (0..BS).step_by(64) {
            v[i..i + 8].copy_from_slice(&(b * 1000 + i as u64).to_le_bytes());
        }
        v
    }

    fn random(b: u64) -> Vec<u8> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(b);
        (0..BS).map(|_| rng.random()).collect()
    }

    #[test]
    fn packed_blocks_read_back_exactly_and_compressible_ones_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let content = |b: u64| {
            if b.is_multiple_of(3) {
                random(b)
            } else {
                kernelish(b)
            }
        };
        let work = work_file(dir.path(), 64, content);
        let dest = dir.path().join("mem.1");
        let runs = [(2, 5), (10, 1), (30, 20)];
        let written = pack(&work, &runs, 64, &dest).unwrap();
        assert_eq!(written, std::fs::metadata(&dest).unwrap().len());
        let stored_blocks: u64 = runs.iter().map(|r| r.1).sum();
        assert!(
            written < stored_blocks * BLOCK_SIZE * 2 / 3,
            "{written} bytes for {stored_blocks} blocks"
        );
        assert!(!fsutil::with_suffix(&dest, ".tmp").exists());

        let packed = PackedGeneration::open(&dest, 64).unwrap();
        assert_eq!(packed.index().len() as u64, stored_blocks);
        for &(start, count) in &runs {
            // One read across the whole run, and unaligned pieces.
            let mut all = vec![0u8; (count * BLOCK_SIZE) as usize];
            packed.read_exact_at(&mut all, start * BLOCK_SIZE).unwrap();
            for (i, block) in all.chunks_exact(BS).enumerate() {
                assert_eq!(
                    block,
                    &content(start + i as u64)[..],
                    "block {}",
                    start + i as u64
                );
            }
            let mut piece = vec![0u8; 100];
            let at = start * BLOCK_SIZE + BLOCK_SIZE - 40;
            if count > 1 {
                packed.read_exact_at(&mut piece, at).unwrap();
                let expected = [&content(start)[BS - 40..], &content(start + 1)[..60]].concat();
                assert_eq!(piece, expected);
            }
        }
        // A block the map would never send here is an error, not zeros.
        let mut block = vec![0u8; BS];
        let err = packed.read_exact_at(&mut block, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("block 0 is not stored here"),
            "{err}"
        );
    }

    #[test]
    fn bad_runs_are_refused_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let work = work_file(dir.path(), 8, kernelish);
        let dest = dir.path().join("mem.1");
        for runs in [vec![(4, 2), (3, 1)], vec![(6, 3)], vec![(1, 0)]] {
            let err = pack(&work, &runs, 8, &dest).unwrap_err();
            assert!(matches!(err, OpError::InvalidDirty { .. }), "{err}");
        }
        let err = pack(&dir.path().join("missing"), &[(0, 1)], 8, &dest).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!dest.exists());
        assert!(!fsutil::with_suffix(&dest, ".tmp").exists());
    }

    #[test]
    fn an_empty_diff_packs_to_a_bare_footer() {
        let dir = tempfile::tempdir().unwrap();
        let work = work_file(dir.path(), 4, |_| Vec::new());
        let dest = dir.path().join("mem.1");
        assert_eq!(pack(&work, &[], 4, &dest).unwrap(), FOOTER_LEN as u64);
        assert!(PackedGeneration::open(&dest, 4).unwrap().index().is_empty());
    }

    fn packed_bytes() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let work = work_file(dir.path(), 16, |b| {
            if b == 3 { random(b) } else { kernelish(b) }
        });
        let dest = dir.path().join("mem.1");
        pack(&work, &[(1, 4), (9, 2)], 16, &dest).unwrap();
        std::fs::read(dest).unwrap()
    }

    #[test]
    fn damage_anywhere_in_the_index_or_footer_is_refused() {
        let good = packed_bytes();
        assert_eq!(PackedIndex::from_file_bytes(&good, 16).unwrap().len(), 6);
        let tail = FOOTER_LEN + 6 * ENTRY_LEN;
        for at in good.len() - tail..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x41;
            assert!(
                PackedIndex::from_file_bytes(&bad, 16).is_err(),
                "flip at {at}"
            );
        }
        for cut in 0..good.len() {
            assert!(
                PackedIndex::from_file_bytes(&good[..cut], 16).is_err(),
                "cut at {cut}"
            );
        }
        // Entries must lie inside the memory.
        assert!(matches!(
            PackedIndex::from_file_bytes(&good, 10),
            Err(PackedError::BadEntry { .. })
        ));
    }

    #[test]
    fn a_damaged_file_is_refused_at_open_and_damaged_data_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = packed_bytes();
        let path = dir.path().join("mem.1");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = PackedGeneration::open(&path, 16).unwrap_err();
        assert!(err.to_string().contains("mem.1"), "{err}");
        // Data bytes are not checksummed, but a compressed block that no
        // longer decodes to a whole block is an error.
        bytes[0..64].fill(0xff);
        std::fs::write(&path, &bytes).unwrap();
        let packed = PackedGeneration::open(&path, 16).unwrap();
        let mut block = vec![0u8; BS];
        let err = packed.read_exact_at(&mut block, BLOCK_SIZE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), blocks in 0u64..64) {
            let _ = PackedIndex::from_file_bytes(&bytes, blocks);
        }

        #[test]
        fn a_valid_footer_over_garbage_never_panics(
            entries in proptest::collection::vec((any::<u64>(), any::<u32>()), 0..8),
            data in 0usize..64,
            count in any::<u64>(),
        ) {
            let mut file = vec![7u8; data];
            let mut index = Vec::new();
            for (block, len) in entries {
                index.extend_from_slice(&(block % 32).to_le_bytes());
                index.extend_from_slice(&(len % 5000).to_le_bytes());
            }
            file.extend_from_slice(&index);
            let mut footer = [0u8; FOOTER_LEN];
            footer[0..8].copy_from_slice(&PACKED_MAGIC);
            footer[8..16].copy_from_slice(&(count % 12).to_le_bytes());
            footer[16..20].copy_from_slice(&crc32fast::hash(&index).to_le_bytes());
            let crc = crc32fast::hash(&footer[0..20]);
            footer[20..24].copy_from_slice(&crc.to_le_bytes());
            file.extend_from_slice(&footer);
            let _ = PackedIndex::from_file_bytes(&file, 32);
        }
    }
}
