//! Pausing a sandbox: the steps that run while its VM exists (flush,
//! stop, device state, RAM made durable, the pending record) and the
//! fallback of a sandbox whose VM died to its snapshot. The commit that
//! follows the VM's end is [`crate::commit`].

use std::path::Path;
use std::time::{Duration, Instant};

use warren_snapshot::SnapshotHeader;
use warren_vmm::disk::create_overlay_durably;
use warren_vmm::process;

use crate::chain::{blocking, read_existing_header, tidy_paused_dir};
use crate::commit::{CommitPause, PendingPause, RamSource, commit_pause};
use crate::dir::{SandboxDir, write_atomic};
use crate::error::{PauseError, StepCause, StepError, with_causes};
use crate::sandbox::Sandbox;

/// Default number of memory generations after which they are merged.
pub const DEFAULT_MERGE_CAP: usize = 10;

/// How a pause runs.
#[derive(Debug, Clone)]
pub struct PauseOptions {
    /// Merge the memory generations into one when there are more than this.
    pub merge_cap: usize,
    /// Bound on each step that waits for the guest or QEMU.
    pub timeout: Duration,
    /// How long to wait for transfers in flight ([`Sandbox::hold_off_pause`])
    /// to end before pausing anyway (and cutting them).
    pub drain: Duration,
}

impl Default for PauseOptions {
    fn default() -> Self {
        Self {
            merge_cap: DEFAULT_MERGE_CAP,
            timeout: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

/// What a pause did, for callers and benchmarks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PauseReport {
    /// The generation written.
    pub generation: u32,
    /// A full snapshot (first pause) rather than a diff.
    pub full: bool,
    /// Bytes of memory written to disk by this pause (allocated bytes of
    /// the new generation file; diffs are compressed).
    pub memory_bytes: u64,
    /// Guest memory the pause had to store, before compression: nonzero
    /// blocks of a full snapshot, blocks written since the resume for a
    /// diff.
    pub dirty_bytes: u64,
    /// Size of the device state.
    pub state_bytes: u64,
    /// Generations in the chain after the pause.
    pub chain_length: usize,
    /// Whether the chain was merged.
    pub merged: bool,
    /// How long the vCPUs were running-but-unreachable (the whole pause).
    pub duration_ms: u64,
}

/// Whether the filesystem of `dir` has (almost) no space left: QEMU's
/// migration errors do not always carry the errno.
fn nearly_full(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size() < 4 << 20)
        .unwrap_or(false)
}

/// What a pause step that failed before the VM was released leaves: a VM
/// that went away on its own (`vm_gone`) means the sandbox falls back to its
/// snapshot, if it has one; otherwise the VM runs on (the step answered with
/// `cont`), and the error says so, with whether the disk is full.
fn failure_before_release(
    id: &str,
    vm_gone: bool,
    has_snapshot: bool,
    step: StepError,
    no_space: bool,
) -> PauseError {
    if vm_gone {
        PauseError::VmEnded {
            id: id.to_string(),
            source: step,
            previous_kept: has_snapshot,
        }
    } else {
        PauseError::StillRunning {
            id: id.to_string(),
            source: step,
            no_space,
        }
    }
}

impl Sandbox {
    /// Pauses the sandbox to disk: the guest flushes its filesystems, the
    /// vCPUs stop, the device state is saved, guest RAM already lives in
    /// files (the first pause keeps the RAM file, sparse; later ones keep
    /// only the blocks written since the resume), and the VM process ends
    /// so its memory returns to the host. On success the handle is
    /// unusable (operations fail with "paused"); resume with
    /// [`Manager::resume`](crate::manager::Manager::resume).
    pub async fn pause(&self, options: &PauseOptions) -> Result<PauseReport, PauseError> {
        // One pause at a time; one that waited may find the sandbox paused.
        let _pause_running = self.shared().pause_running.lock().await;
        if let Some(unavailable) = self.shared().unavailable() {
            return Err(unavailable.into());
        }
        let started = Instant::now();
        let id = self.id().to_string();
        let dir = self.dir().to_path_buf();
        let vm = self.vm();
        // No new transfer starts from here; the ones in flight may finish.
        let transfers = self.shared().transfers.clone();
        let _drained = match tokio::time::timeout(options.drain, transfers.write_owned()).await {
            Ok(guard) => Some(guard),
            Err(_) => {
                tracing::warn!(%id, drain = ?options.drain, "transfers still running; pausing anyway");
                None
            }
        };
        // A step failed while the VM should still exist: it runs on, unless
        // it is the VM that went away (then the exit watcher takes over).
        let failed = |step: StepError, no_space: bool| {
            let vm_gone = vm.exit().is_some() || !process::is_running(vm.pid());
            let has_snapshot = SandboxDir::new(&dir).has_snapshot();
            failure_before_release(&id, vm_gone, has_snapshot, step, no_space)
        };

        // 1. The guest writes its dirty filesystem data to the disk layer.
        match tokio::time::timeout(options.timeout, self.sync_filesystems(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(failed(
                    StepError::new("the guest could not flush its filesystems", error),
                    false,
                ));
            }
            Err(_) => {
                return Err(failed(
                    StepError::new(
                        "the guest did not flush its filesystems",
                        StepCause::Timeout(options.timeout),
                    ),
                    false,
                ));
            }
        }
        let previous = {
            let dir = dir.clone();
            blocking(move || read_existing_header(&dir)).await
        }
        .map_err(|error| {
            failed(
                StepError::new("its previous snapshot is unreadable", error),
                false,
            )
        })?;
        let generation = previous
            .as_ref()
            .map_or(0, SnapshotHeader::next_generation_id);

        // 2. Stop the vCPUs and save the device state.
        let state_name = SandboxDir::state_name(generation);
        let state_path = SandboxDir::new(&dir).state_file(generation);
        let saved = match vm.save_device_state(&state_path, options.timeout).await {
            Ok(saved) => saved,
            Err(error) => {
                let _ = std::fs::remove_file(&state_path);
                let what = match vm.cont().await {
                    Ok(()) => "saving the device state failed".to_string(),
                    Err(cont) => format!(
                        "saving the device state failed (and restarting its vCPUs failed too: {})",
                        with_causes(&cont)
                    ),
                };
                let step = StepError::new(what, error);
                let no_space = step.no_space() || nearly_full(&dir);
                return Err(failed(step, no_space));
            }
        };

        // 3. Make guest RAM durable while the VM can still be continued,
        //    then record that everything a commit needs is on disk: from
        //    here a restart completes this pause instead of dropping it.
        let daemon_flush = self
            .memfs_handle()
            .lock()
            .expect("memfs lock")
            .as_ref()
            .map(|memfs| memfs.flush());
        // A cold-booted VM whose RAM lives in host memory gets a copy in its
        // directory; the copy goes again if the VM goes on running.
        let ram_in_memory = vm.volatile_memory().map(Path::to_path_buf);
        let on_disk = SandboxDir::new(&dir).ram();
        let memory_failed =
            |cause: StepCause| StepError::new("writing guest memory to disk failed", cause);
        let made_durable = match (daemon_flush, ram_in_memory.clone()) {
            (Some(flushed), _) => flushed.map_err(|e| memory_failed(e.into())),
            (None, Some(source)) => {
                let dest = on_disk.clone();
                blocking(move || warren_snapshot::copy_ram(&source, &dest))
                    .await
                    .map(drop)
                    .map_err(|e| memory_failed(e.into()))
            }
            (None, None) => std::fs::File::open(&on_disk)
                .and_then(|f| f.sync_all())
                .map_err(|e| memory_failed(e.into())),
        };
        let flushed = made_durable.and_then(|()| {
            let pending = PendingPause {
                generation,
                state: state_name.clone(),
                merge_cap: options.merge_cap.max(1),
            };
            write_atomic(
                &SandboxDir::new(&dir).pending_pause(),
                &serde_json::to_vec(&pending).expect("pending pause serializes"),
            )
            .map_err(|e| StepError::new("recording the pause failed", e))
        });
        if let Err(step) = flushed {
            let no_space = step.no_space();
            let _ = std::fs::remove_file(&state_path);
            if ram_in_memory.is_some() {
                let _ = std::fs::remove_file(&on_disk);
            }
            let _ = vm.cont().await;
            return Err(failed(step, no_space || nearly_full(&dir)));
        }

        // 4. Release the VM. From here the old snapshot (if any) is the
        //    fallback until the new one is committed.
        self.mark_paused();
        vm.keep_memory_file();
        if let Err(error) = vm.kill().await {
            tracing::warn!(%id, %error, "ending the paused VM failed");
        }
        let ram = match self.memfs_handle().lock().expect("memfs lock").take() {
            Some(memfs) => RamSource::Daemon(memfs),
            None => RamSource::Full,
        };
        let previous_kept = previous.is_some();
        let job = CommitPause {
            dir: dir.clone(),
            previous,
            generation,
            ram,
            memory_bytes: u64::from(self.spec().memory_mib) << 20,
            state_name,
            vcpus: self.spec().vcpus,
            memory_mib: self.spec().memory_mib,
            merge_cap: options.merge_cap.max(1),
        };
        let outcome = blocking(move || commit_pause(job)).await;
        let committed = match outcome {
            Ok(done) => {
                prepare_resume_overlay(&dir, &done.header).await;
                done
            }
            Err(step) => {
                let no_space = step.no_space();
                // The previous snapshot stands; this pause's files go.
                let work = SandboxDir::new(&dir).memory_work(generation);
                let _ = std::fs::remove_file(warren_snapshot::dirty_report_path(&work));
                let _ = std::fs::remove_file(&work);
                let _ = std::fs::remove_file(&state_path);
                let _ = std::fs::remove_file(SandboxDir::new(&dir).pending_pause());
                return Err(PauseError::Committed {
                    id,
                    source: step,
                    previous_kept,
                    no_space,
                });
            }
        };
        Ok(PauseReport {
            generation,
            full: committed.full,
            memory_bytes: committed.written,
            dirty_bytes: committed.dirty,
            state_bytes: saved.bytes,
            chain_length: committed.header.generations.len(),
            merged: committed.merged,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// Creates the empty disk layer the next resume will run on, so that a
/// resume need not wait for `qemu-img` (about 20 ms, a tenth of a resume
/// here). Best effort: without it, the resume creates the layer itself.
async fn prepare_resume_overlay(dir: &Path, header: &SnapshotHeader) {
    let frozen = header.resolve(dir, &header.disk);
    let prepared = SandboxDir::new(dir).resume_disk();
    if let Err(error) = create_overlay_durably(&frozen, "qcow2", &prepared).await {
        tracing::debug!(dir = %dir.display(), %error, "preparing the next disk layer failed");
    }
}

impl Sandbox {
    /// After its VM died on its own: if the sandbox has a snapshot (it was
    /// paused and resumed before, or a pause running when the VM died
    /// completed), it falls back to it, paused, instead of being lost; what
    /// ran since the resume is gone. Returns whether it did. The memory
    /// daemon is ended and the dead run's files removed.
    pub async fn fall_back_to_snapshot(&self) -> bool {
        // A pause that was running when the VM died decides first: its
        // snapshot may be complete (the VM died stopped, after its state was
        // saved), and then the sandbox is paused at it.
        let _pause_done = self.shared().pause_running.lock().await;
        if self.is_paused() {
            return true;
        }
        let dir = self.dir().to_path_buf();
        let header = {
            let dir = dir.clone();
            blocking(move || read_existing_header(&dir)).await
        };
        let Ok(Some(header)) = header else {
            return false;
        };
        self.mark_paused();
        let _ = self.vm().kill().await;
        if let Some(mut memfs) = self.memfs_handle().lock().expect("memfs lock").take() {
            memfs.abort();
        }
        blocking(move || tidy_paused_dir(&dir, &header)).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(cause: StepCause) -> StepError {
        StepError::new("saving the device state failed", cause)
    }

    #[test]
    fn a_failed_step_leaves_a_running_vm_running_and_a_dead_one_to_its_snapshot() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let error = failure_before_release("sb-1", false, true, step(full.into()), true);
        assert!(error.still_running() && error.no_space(), "{error:?}");
        assert!(error.to_string().contains("keeps running"), "{error}");
        assert!(error.to_string().contains("full"), "{error}");
        let source = std::error::Error::source(&error).expect("the step is the source");
        assert_eq!(source.to_string(), "saving the device state failed");

        let error = failure_before_release(
            "sb-1",
            true,
            true,
            step(StepCause::Timeout(Duration::from_secs(1))),
            true,
        );
        assert!(!error.still_running() && !error.no_space(), "{error:?}");
        assert!(
            matches!(
                error,
                PauseError::VmEnded {
                    previous_kept: true,
                    ..
                }
            ),
            "{error:?}"
        );
        let error = failure_before_release(
            "sb-1",
            true,
            false,
            step(StepCause::Inconsistent("x".into())),
            false,
        );
        assert!(error.to_string().contains("is lost"), "{error}");
    }

    #[test]
    fn a_full_disk_is_told_by_the_type_of_the_cause_not_its_text() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(step(enospc().into()).no_space());
        assert!(step(std::io::Error::from_raw_os_error(libc::EDQUOT).into()).no_space());
        // Wrapped in another io::Error, as tasks and helpers do.
        assert!(step(std::io::Error::other(enospc()).into()).no_space());
        // A message that merely says so is not a full disk.
        assert!(!step(std::io::Error::other("No space left on device").into()).no_space());
        assert!(!step(std::io::Error::from_raw_os_error(libc::EIO).into()).no_space());
        assert!(
            step(StepCause::LostWrites {
                blocks: 1,
                first_error: String::new()
            })
            .no_space()
        );
    }
}
