//! Feeds arbitrary bytes, as a whole file, to the packed-generation index
//! decoder: packed diffs are read back from disk after crashes and copies,
//! so decoding must never panic, and an accepted index must describe blocks
//! inside the memory and bytes inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_snapshot::packed::PackedIndex;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the memory size, so in-range and out-of-range
    // blocks are both reachable.
    let Some((&blocks, file)) = data.split_first() else {
        return;
    };
    if let Ok(index) = PackedIndex::from_file_bytes(file, u64::from(blocks)) {
        assert!(index.len() <= file.len() / warren_snapshot::packed::ENTRY_LEN);
    }
});
