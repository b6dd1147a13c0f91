//! The per-sandbox memory daemon (`warren-memfs`) seen from the host side.
//!
//! A resumed sandbox's RAM is the file `memory` of a FUSE mount served by
//! its own `warren-memfs` process: reads come lazily from the snapshot
//! chain, writes land in a work file. This module starts that process,
//! waits until the mount answers, and ends it: either cleanly
//! ([`MemFs::finish`], which yields the list of blocks the guest dirtied) or
//! by force ([`MemFs::abort`], also what dropping does).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use warren_snapshot::DirtyReport;
use warren_vmm::process;

/// Environment variable naming the `warren-memfs` binary explicitly.
pub const MEMFS_ENV: &str = "WARREN_MEMFS";
const MEMFS_NAME: &str = "warren-memfs";
/// How long the daemon may take to mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to write its report after the unmount.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the memory daemon could not be started or ended cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MemFsError {
    /// The binary was not found.
    #[error(
        "the snapshot memory daemon `warren-memfs` was not found (looked in {searched:?}); build it with `cargo build -p warren-snapshot` or set {MEMFS_ENV}"
    )]
    NotFound {
        /// Places looked at.
        searched: Vec<PathBuf>,
    },
    /// It could not be started.
    #[error("starting warren-memfs failed")]
    Spawn(#[source] std::io::Error),
    /// It exited or did not mount in time.
    #[error("warren-memfs did not serve guest memory: {detail}{}", log_hint(log))]
    NotReady {
        /// What happened.
        detail: String,
        /// The end of its log.
        log: String,
    },
    /// Unmounting failed.
    #[error("unmounting the guest memory at {path} failed")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// OS error.
        #[source]
        source: nix::Error,
    },
    /// It ended without a usable report of dirtied blocks.
    #[error(
        "warren-memfs ended without a report of dirtied memory: {detail}{}",
        log_hint(log)
    )]
    NoReport {
        /// What happened.
        detail: String,
        /// The end of its log.
        log: String,
    },
}

fn log_hint(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; its log ends with: {}", log.trim())
    }
}

/// Finds `warren-memfs`: `$WARREN_MEMFS`, else next to the current
/// executable or one directory up (test binaries live in `deps/`).
pub fn find_memfs_binary() -> Result<PathBuf, MemFsError> {
    if let Some(path) = std::env::var_os(MEMFS_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let searched = vec![dir.join(MEMFS_NAME), dir.join("..").join(MEMFS_NAME)];
    searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(MemFsError::NotFound { searched })
}

/// A running memory daemon and its mount.
#[derive(Debug)]
pub struct MemFs {
    child: Option<Daemon>,
    mount: PathBuf,
    work: PathBuf,
    log: PathBuf,
}

/// The daemon process: started by this warren, or adopted after a restart
/// (then it is not our child and its exit status cannot be collected).
#[derive(Debug)]
enum Daemon {
    Child(Child),
    Adopted(u32),
}

impl Daemon {
    fn id(&self) -> u32 {
        match self {
            Self::Child(child) => child.id(),
            Self::Adopted(pid) => *pid,
        }
    }

    /// `Some(success)` once it has ended.
    fn try_wait(&mut self) -> Option<bool> {
        match self {
            Self::Child(child) => child.try_wait().ok().flatten().map(|s| s.success()),
            // Its report file decides whether it ended well.
            Self::Adopted(pid) => (!process::is_running(*pid)).then_some(true),
        }
    }

    fn kill(&mut self) {
        match self {
            Self::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Self::Adopted(pid) => {
                let _ = process::kill_group(*pid);
            }
        }
    }
}

/// Every live `warren-memfs` whose mount is `<sandboxes>/<id>/memfs`, as
/// (pid, sandbox id): the reconciler's view of which daemons run.
pub fn daemons_under(sandboxes: &Path) -> Vec<(u32, String)> {
    let prefix = format!("{}/", sandboxes.to_string_lossy());
    process::find_running(|program| program.ends_with(MEMFS_NAME))
        .into_iter()
        .filter_map(|(pid, args)| {
            let id = args
                .windows(2)
                .find(|w| w[0] == "--mount")?
                .get(1)?
                .strip_prefix(&prefix)?
                .strip_suffix("/memfs")?
                .to_string();
            Some((pid, id))
        })
        .collect()
}

/// Ends a memory daemon found on the host without a [`MemFs`] handle
/// (reconciler, recovery): SIGKILL to its process group, then a wait of a
/// few seconds. Returns whether it is gone.
pub fn end_daemon(pid: u32) -> bool {
    process::kill_group(pid).is_ok()
}

/// The pid file of the daemon serving `mount`.
fn pid_file(mount: &Path) -> PathBuf {
    mount.with_extension("pid")
}

/// The pid of a live `warren-memfs` serving `mount`, from its pid file and
/// checked against its command line.
pub fn running_daemon(mount: &Path) -> Option<u32> {
    let mount_arg = mount.to_string_lossy();
    process::live_pid_from_file(&pid_file(mount), |args| {
        args.windows(2)
            .any(|w| w[0] == "--mount" && w[1] == *mount_arg)
    })
}

impl MemFs {
    /// Starts the daemon serving `size` bytes at `mount/memory`, reading
    /// from the snapshot in `snapshot_dir` (none: all zero) and writing to
    /// `work`. Returns once the file is served.
    pub fn start(
        binary: &Path,
        mount: &Path,
        work: &Path,
        size: u64,
        snapshot_dir: Option<&Path>,
        die_with_parent: bool,
    ) -> Result<Self, MemFsError> {
        // A daemon killed earlier may have left a dead mount behind.
        let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        std::fs::create_dir_all(mount).map_err(MemFsError::Spawn)?;
        let log = mount.with_extension("log");
        let log_file = std::fs::File::create(&log).map_err(MemFsError::Spawn)?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "--mount".into(),
            mount.into(),
            "--work".into(),
            work.into(),
            "--size".into(),
            size.to_string().into(),
        ];
        if let Some(dir) = snapshot_dir {
            args.push("--snapshot".into());
            args.push(dir.into());
        }
        let child = process::spawn(process::SpawnRequest {
            binary: binary.to_path_buf(),
            args,
            log: log_file,
            die_with_parent,
            inherit: Vec::new(),
        })
        .map_err(MemFsError::Spawn)?;
        // Recorded so that a restarted warren can adopt (or end) it.
        let _ = process::write_pid_file(&pid_file(mount), child.id());
        let mut memfs = Self {
            child: Some(Daemon::Child(child)),
            mount: mount.to_path_buf(),
            work: work.to_path_buf(),
            log,
        };
        let file = memfs.memory_file();
        let started = Instant::now();
        loop {
            if std::fs::metadata(&file).is_ok_and(|m| m.len() == size) {
                return Ok(memfs);
            }
            if let Some(Some(_)) = memfs.child.as_mut().map(Daemon::try_wait) {
                let detail = "it exited before serving".to_string();
                let log = memfs.log_tail();
                memfs.abort();
                return Err(MemFsError::NotReady { detail, log });
            }
            if started.elapsed() > MOUNT_TIMEOUT {
                let log = memfs.log_tail();
                memfs.abort();
                return Err(MemFsError::NotReady {
                    detail: format!("not mounted after {MOUNT_TIMEOUT:?}"),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Takes charge of the daemon an earlier warren process started for
    /// `mount` (writing to `work`) and that outlived it, if it still runs.
    pub fn adopt(mount: &Path, work: &Path) -> Option<Self> {
        let pid = running_daemon(mount)?;
        Some(Self {
            child: Some(Daemon::Adopted(pid)),
            mount: mount.to_path_buf(),
            work: work.to_path_buf(),
            log: mount.with_extension("log"),
        })
    }

    /// Lets the daemon outlive this handle (and this process), as the VM
    /// it serves does when warren stops without stopping sandboxes.
    pub fn detach(&mut self) {
        self.child = None;
    }

    /// The file QEMU maps as guest RAM.
    pub fn memory_file(&self) -> PathBuf {
        self.mount.join("memory")
    }

    /// The daemon's pid (host memory accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Daemon::id)
    }

    fn log_tail(&self) -> String {
        process::tail_of(&self.log, 1000)
    }

    /// Flushes every dirty page of the mapping to the daemon and the daemon's
    /// work file to disk. Called while the VM is stopped but still alive,
    /// so a failure (a full disk) can still be answered by resuming it.
    pub fn flush(&self) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.memory_file())?;
        file.sync_all()
    }

    /// Unmounts (the VM must be gone) and waits for the daemon's report of
    /// the blocks written since it started. The report file stays until the
    /// caller has committed what it describes: a crash before that commit
    /// can still finish it from the file.
    pub fn finish(mut self) -> Result<DirtyReport, MemFsError> {
        if let Err(source) = nix::mount::umount2(&self.mount, nix::mount::MntFlags::empty())
            && source != nix::errno::Errno::EINVAL
        {
            return Err(MemFsError::Unmount {
                path: self.mount.clone(),
                source,
            });
        }
        let mut child = self.child.take().expect("child present until finished");
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Some(success) => break Some(success),
                None if started.elapsed() < FINISH_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                None => {
                    child.kill();
                    break None;
                }
            }
        };
        let _ = std::fs::remove_file(pid_file(&self.mount));
        let report_path = warren_snapshot::dirty_report_path(&self.work);
        let result = match status {
            Some(true) => {
                warren_snapshot::read_dirty_report(&report_path).map_err(|e| MemFsError::NoReport {
                    detail: e.to_string(),
                    log: self.log_tail(),
                })
            }
            Some(false) => Err(MemFsError::NoReport {
                detail: "it exited with a failure".into(),
                log: self.log_tail(),
            }),
            None => Err(MemFsError::NoReport {
                detail: format!("it did not finish within {FINISH_TIMEOUT:?}"),
                log: self.log_tail(),
            }),
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&report_path);
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.log);
        result
    }

    /// Ends the daemon now: lazy unmount, SIGKILL, work file removed. The
    /// snapshot it read from is untouched.
    pub fn abort(&mut self) {
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        let _ = std::fs::remove_file(pid_file(&self.mount));
        let _ = std::fs::remove_file(&self.work);
        let _ = std::fs::remove_file(warren_snapshot::dirty_report_path(&self.work));
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Drop for MemFs {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.abort();
        }
    }
}
