//! Committing a pause once its VM is gone: the RAM becomes a generation,
//! the disk layer is frozen, a chain past the merge cap is flattened, and
//! the header is written last. Also the completion of a pause a crash of
//! warren cut off after its material was durable.

use std::path::{Path, PathBuf};

use warren_snapshot::{Generation, SnapshotHeader};
use warren_vmm::disk;

use crate::chain::{ChainMeta, now_ms, remove_unreferenced};
use crate::dir::{SandboxDir, fsync_dir};
use crate::error::{StepCause, StepError, with_causes};
use crate::manager::SandboxMeta;
use crate::memfs::MemFs;

/// The content of [`SandboxDir::PENDING_PAUSE`]: what a restarted warren needs to
/// finish the commit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingPause {
    /// The generation being written.
    pub(crate) generation: u32,
    /// Its device state file.
    pub(crate) state: String,
    /// The merge cap the pause ran with.
    pub(crate) merge_cap: usize,
}

/// Reads `dir`'s pending-pause record, if there is a readable one.
pub(crate) fn pending_pause(dir: &Path) -> Option<PendingPause> {
    let bytes = std::fs::read(SandboxDir::new(dir).pending_pause()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Completes a pause that a crash of warren cut off after its material was
/// durable ([`SandboxDir::PENDING_PAUSE`] exists) but before `SNAPSHOT` named it.
/// The VM must be gone. Returns the committed header; an error means the
/// material is not all there and the previous snapshot (if any) stands.
/// The pending record is removed either way.
pub(crate) fn finish_interrupted_pause(
    dir: &Path,
    meta: &SandboxMeta,
    previous: Option<SnapshotHeader>,
) -> Result<SnapshotHeader, StepError> {
    let inconsistent =
        |what: String| StepError::new("finishing the pause", StepCause::Inconsistent(what));
    let result = (|| {
        let pending = pending_pause(dir)
            .ok_or_else(|| inconsistent("its pause record is unreadable".into()))?;
        if let Some(header) = &previous {
            if header.device_state == pending.state {
                // Committed already; only the record was left.
                return Ok(header.clone());
            }
            if header.next_generation_id() != pending.generation {
                return Err(inconsistent(format!(
                    "the pause record names generation {} but the snapshot expects {}",
                    pending.generation,
                    header.next_generation_id()
                )));
            }
        } else if pending.generation != 0 {
            return Err(inconsistent(
                "the pause record names a diff but there is no snapshot".into(),
            ));
        }
        if !dir.join(&pending.state).is_file() {
            return Err(inconsistent(format!(
                "its device state {} is missing",
                pending.state
            )));
        }
        let ram = match previous {
            None => RamSource::Full,
            Some(_) => {
                let work = SandboxDir::new(dir).memory_work(pending.generation);
                match MemFs::adopt(&SandboxDir::new(dir).memfs_mount(), &work) {
                    Some(memfs) => RamSource::Daemon(memfs),
                    None => RamSource::Report,
                }
            }
        };
        let memory_bytes = u64::from(meta.spec.memory_mib) << 20;
        commit_pause(CommitPause {
            dir: dir.to_path_buf(),
            previous,
            generation: pending.generation,
            ram,
            memory_bytes,
            state_name: pending.state,
            vcpus: meta.spec.vcpus,
            memory_mib: meta.spec.memory_mib,
            merge_cap: pending.merge_cap,
        })
        .map(|committed| committed.header)
    })();
    let _ = std::fs::remove_file(SandboxDir::new(dir).pending_pause());
    let _ = fsync_dir(dir);
    result
}

/// Where a pause's RAM comes from.
pub(crate) enum RamSource {
    /// A cold-booted VM's `memory` file (or, when an interrupted commit is
    /// finished, the `mem.<g>` it was already renamed to): a full generation.
    Full,
    /// The memory daemon of a resumed VM: its report of dirtied blocks.
    Daemon(MemFs),
    /// The report the daemon left next to the work file when it ended
    /// (it is gone; a crash came between its end and the commit).
    Report,
}

/// Everything [`commit_pause`] needs (the VM is gone).
pub(crate) struct CommitPause {
    pub(crate) dir: PathBuf,
    pub(crate) previous: Option<SnapshotHeader>,
    pub(crate) generation: u32,
    pub(crate) ram: RamSource,
    pub(crate) memory_bytes: u64,
    pub(crate) state_name: String,
    pub(crate) vcpus: u32,
    pub(crate) memory_mib: u32,
    pub(crate) merge_cap: usize,
}

/// What [`commit_pause`] committed.
pub(crate) struct CommittedPause {
    /// The header now on disk.
    pub(crate) header: SnapshotHeader,
    /// A full snapshot rather than a diff.
    pub(crate) full: bool,
    /// The chain was merged.
    pub(crate) merged: bool,
    /// Bytes the new (or merged) generation file takes on disk.
    pub(crate) written: u64,
    /// Guest memory this pause stored before compression (nonzero blocks of
    /// a full snapshot, blocks written since the resume for a diff).
    pub(crate) dirty: u64,
}

/// Steps 5-8 of a pause (the VM is gone): turn the RAM into a generation,
/// freeze the disk layer, merge if the chain is too long, commit.
/// Returns what was committed, or the step that failed.
pub(crate) fn commit_pause(job: CommitPause) -> Result<CommittedPause, StepError> {
    let CommitPause {
        dir,
        previous,
        generation,
        ram,
        memory_bytes,
        state_name,
        vcpus,
        memory_mib,
        merge_cap,
    } = job;
    let mem_name = SandboxDir::memory_name(generation);
    let mem_path = dir.join(&mem_name);
    let op = |e: warren_snapshot::OpError| StepError::new("storing guest memory failed", e);
    let io = |what: &str, e: std::io::Error| StepError::new(format!("{what} failed"), e);
    let inconsistent =
        |what: String| StepError::new("committing the pause", StepCause::Inconsistent(what));
    // A step repeated after a crash finds its output where its input was:
    // each rename below is skipped when only the target exists.
    let keep = |from: &Path, what: &str| -> Result<(), StepError> {
        match std::fs::rename(from, &mem_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && mem_path.is_file() => Ok(()),
            Err(e) => Err(io(what, e)),
        }
    };

    // 5. Memory.
    let work = SandboxDir::new(&dir).memory_work(generation);
    let report_path = warren_snapshot::dirty_report_path(&work);
    // A first pause stores everything; later ones store a diff (the
    // mismatched cases are refused below).
    let full = previous.is_none();
    // `packed`: how the new generation file stores its blocks.
    let (map, packed, dirty) = match (ram, &previous) {
        (RamSource::Full, None) => {
            let ram = SandboxDir::new(&dir).ram();
            let source = if ram.exists() { &ram } else { &mem_path };
            let map =
                warren_snapshot::full_generation(source, memory_bytes, generation).map_err(op)?;
            keep(&ram, "keeping the memory file")?;
            let dirty = map.nonzero_blocks() * warren_snapshot::BLOCK_SIZE;
            (map, false, dirty)
        }
        (ram @ (RamSource::Daemon(_) | RamSource::Report), Some(previous)) => {
            let report = match ram {
                RamSource::Daemon(memfs) => memfs
                    .finish()
                    .map_err(|e| StepError::new("ending the memory daemon failed", e))?,
                _ => warren_snapshot::read_dirty_report(&report_path).map_err(|e| {
                    StepError::new(
                        "its memory daemon is gone and left no report of dirtied memory",
                        e,
                    )
                })?,
            };
            if report.write_errors > 0 {
                let _ = std::fs::remove_file(&work);
                let _ = std::fs::remove_file(&report_path);
                return Err(StepError::new(
                    "storing guest memory failed",
                    StepCause::LostWrites {
                        blocks: report.write_errors,
                        first_error: report.first_error.unwrap_or_default(),
                    },
                ));
            }
            let map =
                warren_snapshot::apply_dirty(&previous.map, &report, generation).map_err(op)?;
            // The diff is packed (compressed) into the generation file; a
            // repeat after a crash finds the packed file and no work file.
            let blocks = memory_bytes / warren_snapshot::BLOCK_SIZE;
            let packed = if work.exists() {
                warren_snapshot::pack(&work, &report.data_runs, blocks, &mem_path).map_err(op)?;
                let _ = std::fs::remove_file(&work);
                true
            } else if mem_path.is_file() {
                // Packed by the interrupted run; or, if a warren from
                // before packed diffs renamed the work file there, sparse.
                warren_snapshot::PackedGeneration::open(&mem_path, blocks).is_ok()
            } else {
                return Err(inconsistent(format!(
                    "the memory diff {} is gone",
                    work.display()
                )));
            };
            let dirty =
                report.data_runs.iter().map(|run| run.1).sum::<u64>() * warren_snapshot::BLOCK_SIZE;
            (map, packed, dirty)
        }
        (RamSource::Full, Some(_)) => {
            return Err(inconsistent(
                "a resumed sandbox's RAM has no memory daemon".into(),
            ));
        }
        (_, None) => {
            return Err(inconsistent(
                "a resumed sandbox has no previous snapshot".into(),
            ));
        }
    };

    // 6. Disk: the running layer becomes a frozen one (a second name now;
    //    the old name goes once the header is committed).
    let layer = SandboxDir::frozen_disk_name(generation);
    let _ = std::fs::remove_file(dir.join(&layer));
    std::fs::hard_link(SandboxDir::new(&dir).disk(), dir.join(&layer))
        .map_err(|e| io("freezing the disk layer", e))?;
    let mut chain_meta: ChainMeta = previous
        .as_ref()
        .and_then(|h| serde_json::from_value(h.meta.clone()).ok())
        .unwrap_or_default();
    chain_meta.disk_layers.push(layer.clone());
    chain_meta.vcpus = vcpus;
    chain_meta.memory_mib = memory_mib;

    // 7. The header: generations still referenced, plus the new one.
    let used: std::collections::BTreeSet<u32> = map
        .blocks_per_generation()
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    let mut generations: Vec<Generation> = previous
        .as_ref()
        .map(|h| h.generations.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|g| used.contains(&g.id))
        .collect();
    if used.contains(&generation) {
        generations.push(if packed {
            Generation::packed(generation, mem_name.clone())
        } else {
            Generation::sparse(generation, mem_name.clone())
        });
    }
    let mut header = SnapshotHeader {
        memory_bytes,
        generations,
        map,
        device_state: state_name,
        disk: layer,
        created_unix_ms: now_ms(),
        meta: serde_json::Value::Null,
    };
    let mut merged = false;
    if header.generations.len() > merge_cap {
        // Merge into generation + 1 (ids only grow, so no file is reused).
        let merged_id = generation + 1;
        let merged_name = SandboxDir::memory_name(merged_id);
        let (map, _) = warren_snapshot::flatten(&dir, &header, &dir.join(&merged_name), merged_id)
            .map_err(|e| StepError::new("merging the memory generations failed", e))?;
        header.map = map;
        header.generations = vec![Generation::sparse(merged_id, merged_name)];
        merged = true;
        // The disk chain (one layer per resume) is flattened with it, so
        // neither chain grows without bound. A failure keeps the chain.
        if chain_meta.disk_layers.len() > 1 {
            let flattened = SandboxMeta::read(&dir)
                .map_err(StepCause::from)
                .and_then(|meta| {
                    flatten_disk(&dir, &header.disk, &meta, generation).map_err(StepCause::from)
                });
            match flattened {
                Ok(flat) => {
                    header.disk = flat.clone();
                    chain_meta.disk_layers = vec![flat];
                }
                Err(error) => {
                    let error = with_causes(&error);
                    tracing::warn!(dir = %dir.display(), %error, "flattening the disk layers failed; keeping the chain");
                }
            }
        }
    }
    header.meta = serde_json::to_value(&chain_meta).expect("chain meta serializes");
    warren_snapshot::write_header_atomic(&dir, &header)
        .map_err(|e| StepError::new("recording the snapshot failed", e))?;

    // 8. Garbage: files the committed header does not reference.
    let _ = std::fs::remove_file(SandboxDir::new(&dir).pending_pause());
    let _ = std::fs::remove_file(&report_path);
    let _ = std::fs::remove_file(SandboxDir::new(&dir).disk());
    remove_unreferenced(&dir, &header, &chain_meta.disk_layers);
    // The file this pause wrote: the new generation, or the merged one. A
    // pause that dirtied nothing has no generation of its own.
    let written = header
        .generations
        .iter()
        .find(|g| g.id == generation || merged)
        .map_or(0, |g| {
            warren_snapshot::allocated_bytes(&header.resolve(&dir, &g.file))
        });
    let _ = fsync_dir(&dir);
    Ok(CommittedPause {
        header,
        full,
        merged,
        written,
        dirty,
    })
}

/// Writes the disk chain ending in `top` as one qcow2 layer over the
/// sandbox's base disk (`qemu-img convert -B` copies only what differs from
/// the base); returns its file name.
fn flatten_disk(
    dir: &Path,
    top: &str,
    meta: &SandboxMeta,
    generation: u32,
) -> Result<String, disk::DiskError> {
    let name = SandboxDir::flat_disk_name(generation);
    disk::flatten_durably(
        &meta.base_disk,
        &meta.base_disk_format,
        &dir.join(top),
        &dir.join(&name),
    )?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use warren_snapshot::{BLOCK_SIZE, BlockSource, DirtyReport};

    use super::*;
    use crate::chain::read_existing_header;

    const MIB: u32 = 4;

    fn meta() -> SandboxMeta {
        let mut meta = SandboxMeta::for_test("sb-test", false, 1);
        meta.spec.memory_mib = MIB;
        meta
    }

    fn block_of(dir: &Path, header: &SnapshotHeader, block: u64) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        if let Some(BlockSource::Gen(g)) = header.map.lookup(block) {
            let generation = header.generations.iter().find(|x| x.id == g).unwrap();
            let f = warren_snapshot::ops::open_generation(
                &header.resolve(dir, &generation.file),
                generation,
                0,
                header.map.blocks(),
            )
            .unwrap();
            f.read_exact_at(&mut buf, block * BLOCK_SIZE).unwrap();
        }
        buf
    }

    /// The pause record for generation `generation` (state `state.<g>`).
    fn record_pause(dir: &Path, generation: u32) {
        let pending = PendingPause {
            generation,
            state: SandboxDir::state_name(generation),
            merge_cap: 10,
        };
        std::fs::write(
            SandboxDir::new(dir).pending_pause(),
            serde_json::to_vec(&pending).unwrap(),
        )
        .unwrap();
    }

    /// The files a first pause leaves once its RAM and state are durable:
    /// RAM with two marked blocks, a device state, a disk layer, the record.
    fn interrupted_first_pause(dir: &Path) {
        let ram = std::fs::File::create(SandboxDir::new(dir).ram()).unwrap();
        ram.set_len(u64::from(MIB) << 20).unwrap();
        ram.write_all_at(&[7u8; 4096], 3 * BLOCK_SIZE).unwrap();
        ram.write_all_at(&[9u8; 4096], 200 * BLOCK_SIZE).unwrap();
        std::fs::write(dir.join("state.0"), b"device state").unwrap();
        std::fs::write(SandboxDir::new(dir).disk(), b"disk layer").unwrap();
        record_pause(dir, 0);
    }

    #[test]
    fn a_first_pause_cut_off_after_its_ram_was_durable_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let header = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        assert_eq!(header.device_state, "state.0");
        assert_eq!(read_existing_header(dir.path()).unwrap().unwrap(), header);
        assert_eq!(block_of(dir.path(), &header, 3), vec![7u8; 4096]);
        assert_eq!(block_of(dir.path(), &header, 200), vec![9u8; 4096]);
        assert_eq!(block_of(dir.path(), &header, 4), vec![0u8; 4096]);
        assert!(!dir.path().join(SandboxDir::PENDING_PAUSE).exists());
        assert!(dir.path().join(&header.disk).exists());
    }

    #[test]
    fn a_commit_cut_off_after_the_ram_rename_is_finished_the_same() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        // The crash came after `memory` became `mem.0`.
        std::fs::rename(SandboxDir::new(dir.path()).ram(), dir.path().join("mem.0")).unwrap();
        let header = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        assert_eq!(block_of(dir.path(), &header, 200), vec![9u8; 4096]);
    }

    /// How far an interrupted diff pause got with its work file.
    #[derive(Clone, Copy, PartialEq)]
    enum WorkFile {
        /// Still there.
        Left,
        /// Packed into `mem.1` and deleted.
        Packed,
        /// Renamed to `mem.1` (a warren from before packed diffs).
        RenamedSparse,
    }

    /// A resumed run rewrote block 3 and zeroed block 200, then the daemon
    /// wrote its report and warren died before the commit, with the work
    /// file in state `work_file`.
    fn diff_pause_committed_after_a_crash(work_file: WorkFile) {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let first = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        let work = dir.path().join("mem.1.work");
        let file = std::fs::File::create(&work).unwrap();
        file.set_len(u64::from(MIB) << 20).unwrap();
        file.write_all_at(&[5u8; 4096], 3 * BLOCK_SIZE).unwrap();
        let report = DirtyReport {
            data_runs: vec![(3, 1)],
            zero_runs: vec![(200, 1)],
            ..DirtyReport::default()
        };
        warren_snapshot::write_dirty_report(&warren_snapshot::dirty_report_path(&work), &report)
            .unwrap();
        std::fs::write(dir.path().join("state.1"), b"device state 1").unwrap();
        std::fs::write(dir.path().join(SandboxDir::DISK), b"disk layer 1").unwrap();
        record_pause(dir.path(), 1);

        let blocks = (u64::from(MIB) << 20) / BLOCK_SIZE;
        match work_file {
            WorkFile::Left => {}
            WorkFile::Packed => {
                warren_snapshot::pack(&work, &report.data_runs, blocks, &dir.path().join("mem.1"))
                    .unwrap();
                std::fs::remove_file(&work).unwrap();
            }
            WorkFile::RenamedSparse => std::fs::rename(&work, dir.path().join("mem.1")).unwrap(),
        }

        let header = finish_interrupted_pause(dir.path(), &meta(), Some(first)).unwrap();
        assert_eq!(header.device_state, "state.1");
        assert_eq!(block_of(dir.path(), &header, 3), vec![5u8; 4096]);
        assert_eq!(block_of(dir.path(), &header, 200), vec![0u8; 4096]);
        let diff = header.generations.iter().find(|g| g.id == 1).unwrap();
        assert_eq!(
            diff.packed,
            work_file != WorkFile::RenamedSparse,
            "{header:?}"
        );
        assert!(!work.exists());
        assert!(!warren_snapshot::dirty_report_path(&work).exists());
        assert!(!dir.path().join(SandboxDir::PENDING_PAUSE).exists());
    }

    #[test]
    fn a_diff_pause_whose_daemon_ended_is_committed_from_its_report() {
        diff_pause_committed_after_a_crash(WorkFile::Left);
    }

    #[test]
    fn a_diff_pause_that_crashed_after_packing_is_committed_from_the_packed_diff() {
        diff_pause_committed_after_a_crash(WorkFile::Packed);
    }

    #[test]
    fn a_diff_an_older_warren_left_sparse_is_committed_as_sparse() {
        diff_pause_committed_after_a_crash(WorkFile::RenamedSparse);
    }

    #[test]
    fn a_pause_without_its_memory_is_not_committed_and_the_old_snapshot_stands() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let first = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        std::fs::write(dir.path().join("state.1"), b"device state 1").unwrap();
        record_pause(dir.path(), 1);
        let error = finish_interrupted_pause(dir.path(), &meta(), Some(first.clone())).unwrap_err();
        let error = with_causes(&error);
        assert!(error.contains("memory daemon is gone"), "{error}");
        assert_eq!(read_existing_header(dir.path()).unwrap().unwrap(), first);
        assert!(!dir.path().join(SandboxDir::PENDING_PAUSE).exists());
    }

    #[test]
    fn a_record_left_after_the_commit_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_first_pause(dir.path());
        let pending = std::fs::read(dir.path().join(SandboxDir::PENDING_PAUSE)).unwrap();
        let header = finish_interrupted_pause(dir.path(), &meta(), None).unwrap();
        std::fs::write(dir.path().join(SandboxDir::PENDING_PAUSE), pending).unwrap();
        let again = finish_interrupted_pause(dir.path(), &meta(), Some(header.clone())).unwrap();
        assert_eq!(again, header);
        assert!(!dir.path().join(SandboxDir::PENDING_PAUSE).exists());
    }
}
