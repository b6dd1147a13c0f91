//! Incremental memory snapshots (see FORMAT.md).
pub mod map;
