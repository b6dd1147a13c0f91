//! Incremental VM memory snapshots (see FORMAT.md).
//!
//! Guest RAM is a file QEMU maps shared. A snapshot is a chain of
//! *generation* files (memory-sized sparse files, or [`packed`] diffs) plus
//! a header ([`SnapshotHeader`]) whose [`BlockMap`] says which generation
//! holds each 4 KiB block. [`ops`] builds
//! generations and merges chains; the `warren-memfs` daemon (feature
//! `memfs`) serves a chain lazily as a file QEMU can map on resume and
//! records what the guest dirties ([`DirtyReport`]), so the next snapshot
//! stores only that.

#![warn(missing_docs)]

mod fsutil;

pub mod dirty;
pub mod format;
pub mod map;
#[cfg(feature = "memfs")]
pub mod memfs;
pub mod ops;
pub mod packed;

pub use dirty::{DirtyReport, dirty_report_path, read_dirty_report, write_dirty_report};
pub use format::{
    BLOCK_SIZE, FormatError, Generation, HEADER_FILE, MAGIC, MAX_BODY_LEN, SnapshotHeader, VERSION,
    read_header, write_header_atomic,
};
pub use map::{BlockMap, BlockSource, Extent, MapError};
pub use ops::{OpError, allocated_bytes, apply_dirty, copy_ram, flatten, full_generation};
pub use packed::{GenerationFile, PackedError, PackedGeneration, pack};
