//! What a committed snapshot is on disk, shared by pause, commit, resume,
//! templates and recovery.
//!
//! Only `SNAPSHOT` decides what a paused sandbox is (the files are listed
//! in [`crate::dir`]); it is replaced atomically as the last step of a
//! pause, so a pause (or merge) that dies at any point leaves the previous
//! snapshot as it was. Files it does not reference are garbage from an
//! interrupted operation and are removed by the next one. One exception
//! keeps acknowledged work: once the device state and the RAM are durable,
//! `PAUSE-PENDING` is written before the VM is ended, and a restarted
//! warren that finds it completes the commit
//! (`commit::finish_interrupted_pause`, which builds on this module) instead of falling back.

use std::path::Path;
use std::time::SystemTime;

use warren_snapshot::SnapshotHeader;

use crate::dir::SandboxDir;

/// Snapshot bookkeeping kept in the header's `meta`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChainMeta {
    /// Disk layers of this sandbox's own, oldest first (relative names).
    #[serde(default)]
    pub(crate) disk_layers: Vec<String>,
    /// vCPUs the state was saved with.
    pub(crate) vcpus: u32,
    /// Guest RAM.
    pub(crate) memory_mib: u32,
}

/// Now, in ms since the epoch (snapshot and template timestamps).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Runs blocking file work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking snapshot task panicked")
}

/// Reads `dir/SNAPSHOT` if there is one.
pub(crate) fn read_existing_header(
    dir: &Path,
) -> Result<Option<SnapshotHeader>, warren_snapshot::FormatError> {
    if !SandboxDir::new(dir).has_snapshot() {
        return Ok(None);
    }
    warren_snapshot::read_header(dir).map(Some)
}

/// Allocated bytes of the files in a directory tree (st_blocks * 512).
pub fn dir_allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Makes a paused sandbox's directory hold its committed snapshot and
/// nothing else of note: the writable disk layer of a run that ended without
/// a pause (resume makes a fresh one), a cold-boot RAM file, generations and
/// states no header references.
pub(crate) fn tidy_paused_dir(dir: &Path, header: &SnapshotHeader) {
    let sandbox = SandboxDir::new(dir);
    let _ = std::fs::remove_file(sandbox.disk());
    let _ = std::fs::remove_file(sandbox.restore_kernel());
    let _ = std::fs::remove_file(sandbox.resume_disk_temp());
    if !header.generations.iter().any(|g| g.file == SandboxDir::RAM) {
        let _ = std::fs::remove_file(sandbox.ram());
    }
    let chain: ChainMeta = serde_json::from_value(header.meta.clone()).unwrap_or_default();
    remove_unreferenced(dir, header, &chain.disk_layers);
}

/// Removes memory generations, device states, work files and disk layers
/// that the committed snapshot does not reference (leftovers of earlier
/// generations or of interrupted operations). `disk_layers` is the
/// sandbox's own disk chain, every layer of which stays.
pub(crate) fn remove_unreferenced(dir: &Path, header: &SnapshotHeader, disk_layers: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if SandboxDir::is_disk_layer(name) {
            if !disk_layers.iter().any(|layer| layer == name) && header.disk != name {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        if !SandboxDir::is_snapshot_file(name) {
            continue;
        }
        let referenced =
            header.device_state == name || header.generations.iter().any(|g| g.file == name);
        if !referenced {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
