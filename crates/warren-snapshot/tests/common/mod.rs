//! Builders for real snapshot chains on disk, shared by the integration tests.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use warren_snapshot::{BLOCK_SIZE, BlockMap, BlockSource, SnapshotHeader};

pub const BS: usize = BLOCK_SIZE as usize;

/// Recognizable nonzero content of `block` as written by generation `seed`.
pub fn pattern(block: u64, seed: u32) -> Vec<u8> {
    let mut out = vec![0u8; BS];
    let mut x = block
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(seed) * 0x1234_5678 + 1);
    for chunk in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

/// Creates a sparse `memory_bytes` file with `pattern(b, seed)` at every
/// listed block and explicit zeros (allocated) at every `zero` block.
pub fn write_sparse(path: &Path, memory_bytes: u64, data: &[u64], zero: &[u64], seed: u32) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(memory_bytes).unwrap();
    for &b in data {
        f.write_all_at(&pattern(b, seed), b * BLOCK_SIZE).unwrap();
    }
    for &b in zero {
        f.write_all_at(&[0u8; BS], b * BLOCK_SIZE).unwrap();
    }
    f.sync_all().unwrap();
}

/// What the chain reads as, computed the slow and obvious way: block by
/// block through the map.
pub fn chain_content(dir: &Path, header: &SnapshotHeader) -> Vec<u8> {
    let mut out = vec![0u8; header.memory_bytes as usize];
    for b in 0..header.map.blocks() {
        if let Some(BlockSource::Gen(g)) = header.map.lookup(b) {
            let gen_file = header.generations.iter().find(|x| x.id == g).unwrap();
            let f = std::fs::File::open(header.resolve(dir, &gen_file.file)).unwrap();
            let at = (b * BLOCK_SIZE) as usize;
            f.read_exact_at(&mut out[at..at + BS], b * BLOCK_SIZE)
                .unwrap();
        }
    }
    out
}

/// Map with `blocks` pointed at `Gen(g)` on top of `base`.
pub fn with_blocks(base: &BlockMap, blocks: &[u64], src: BlockSource) -> BlockMap {
    let mut m = base.clone();
    for &b in blocks {
        m.set_range(b, 1, src).unwrap();
    }
    m
}
