//! The dirty report: what the memory daemon hands back when it stops, so
//! the next snapshot stores only the blocks the guest changed since resume.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::ops::OpError;

/// Blocks written while a VM ran on `warren-memfs`, as sorted, disjoint
/// `(start_block, len)` runs. Zero runs are separate from data runs because
/// a block the guest zeroed must shadow older generations' data without
/// being stored anywhere.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DirtyReport {
    /// Blocks whose latest content is not in the work file (the write
    /// failed, e.g. disk full, and a later retry did not succeed either).
    /// Nonzero means the work file cannot become a generation.
    pub write_errors: u64,
    /// The first write failure seen, even one a retry later repaired, so
    /// the caller can explain what happened (e.g. "No space left on device").
    pub first_error: Option<String>,
    /// Blocks written with data: their content is at the same offset in the
    /// work file.
    pub data_runs: Vec<(u64, u64)>,
    /// Blocks written with all zeros: they read as zero and are not stored.
    pub zero_runs: Vec<(u64, u64)>,
}

impl DirtyReport {
    /// Total number of dirtied blocks (data and zero), for logs and metrics.
    pub fn dirty_blocks(&self) -> u64 {
        self.data_runs
            .iter()
            .chain(&self.zero_runs)
            .map(|r| r.1)
            .sum()
    }
}

/// Where the daemon leaves its report for `work_file`: next to it, so both
/// live and die together (`work` → `work.dirty`).
pub fn dirty_report_path(work_file: &Path) -> PathBuf {
    fsutil::with_suffix(work_file, ".dirty")
}

/// Loads a report written by the daemon. Does not validate the runs; that
/// happens in [`crate::apply_dirty`], against the map they apply to.
pub fn read_dirty_report(path: &Path) -> Result<DirtyReport, OpError> {
    let bytes = std::fs::read(path).map_err(|e| OpError::io("reading", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| OpError::BadReport {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a report crash-safely (tmp, fsync, rename, fsync dir), so a
/// reader sees either no report or a complete one.
pub fn write_dirty_report(path: &Path, report: &DirtyReport) -> Result<(), OpError> {
    let bytes = serde_json::to_vec(report).map_err(|source| OpError::BadReport {
        path: path.to_path_buf(),
        source,
    })?;
    fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_round_trip() {
        assert_eq!(
            dirty_report_path(Path::new("/a/work.mem")),
            PathBuf::from("/a/work.mem.dirty")
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.dirty");
        let r = DirtyReport {
            write_errors: 1,
            first_error: Some("disk full".into()),
            data_runs: vec![(1, 2), (10, 1)],
            zero_runs: vec![(3, 4)],
        };
        write_dirty_report(&p, &r).unwrap();
        assert_eq!(read_dirty_report(&p).unwrap(), r);
        assert_eq!(r.dirty_blocks(), 7);
        std::fs::write(&p, b"{").unwrap();
        let err = read_dirty_report(&p).unwrap_err();
        assert!(err.to_string().contains("w.dirty"), "{err}");
    }
}
