//! Supervising the host processes warren starts and outlives: QEMU and the
//! snapshot memory daemon (`warren-memfs`).
//!
//! Both are started the same way (from one long-lived thread, each in its
//! own process group, with a pid file), found again the same way after a
//! restart of warren (pid file, checked against the process's command line
//! because pids are reused) and ended the same way (SIGKILL to the whole
//! group). This module is that one way; the QEMU backend and the memory
//! daemon's host side both use it, so they cannot drift apart.
//!
//! "Is it alive" has two meanings here, and each has its own function:
//! [`is_running`] (the process exists and is not a zombie: the test for a
//! VM or daemon that must still be doing its work) and [`exists`] (the pid
//! is taken, zombies included: the test for an owner process that may not
//! have been reaped yet). [`live_pid_from_file`] adds the identity check.
//!
//! Spawning is done from a dedicated thread because `PR_SET_PDEATHSIG`
//! fires when the *thread* that forked the child exits, not the process.
//! Async runtimes fork from whatever worker or blocking thread runs the
//! task, and blocking threads are retired after idling, which would kill
//! healthy VMs. Forking from a thread that lives as long as the process
//! makes "die with the parent" mean exactly that.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long [`kill_group`] waits for a SIGKILLed process to vanish.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// Why a pid file gave no pid.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// The file could not be read (most often: it does not exist, because
    /// the process was never started or was ended cleanly).
    #[error("reading the pid file {path} failed")]
    Read {
        /// The pid file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a pid (a torn or foreign file).
    #[error("the pid file {path} holds {content:?}, not a pid")]
    Malformed {
        /// The pid file.
        path: PathBuf,
        /// What it holds (trimmed).
        content: String,
        /// The parse error.
        #[source]
        source: std::num::ParseIntError,
    },
}

/// Why a process did not go away.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// SIGKILL was sent but the process still ran when the wait ended (a
    /// process stuck in uninterruptible sleep, such as a hung FUSE call).
    #[error("process {pid} still runs {waited:?} after SIGKILL")]
    StillRunning {
        /// The process.
        pid: u32,
        /// How long it was waited for.
        waited: Duration,
    },
}

/// What to start with [`spawn`].
#[derive(Debug)]
pub struct SpawnRequest {
    /// The program.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Receives the process's stdout and stderr.
    pub log: File,
    /// Deliver SIGKILL to the child when this process dies (ephemeral use);
    /// a durable process must outlive warren and leaves this false.
    pub die_with_parent: bool,
    /// Descriptors the child inherits under the same numbers (a VM's TAP
    /// device). Every other descriptor of warren's is close-on-exec.
    pub inherit: Vec<std::sync::Arc<std::os::fd::OwnedFd>>,
}

type Job = (SpawnRequest, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vmm-spawner".into())
            .spawn(move || {
                for (request, reply) in rx {
                    let _ = reply.send(spawn_here(request));
                }
            })
            .expect("start the VMM spawner thread");
        tx
    })
}

/// Starts a process in its own process group (a terminal's signals never
/// reach it, and [`kill_group`] takes all of it) from the spawner thread,
/// and returns its handle. The error is the OS error of the fork or exec
/// (or an `Other` error if the spawner thread is gone); callers add which
/// program it was.
pub fn spawn(request: SpawnRequest) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .send((request, tx))
        .map_err(|_| std::io::Error::other("VMM spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("VMM spawner thread is gone"))?
}

fn spawn_here(request: SpawnRequest) -> std::io::Result<Child> {
    let stderr = request.log.try_clone()?;
    let mut command = Command::new(&request.binary);
    command
        .args(&request.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(request.log))
        .stderr(Stdio::from(stderr))
        // Own process group: a terminal's signals never reach it, and
        // killpg takes the whole process down.
        .process_group(0);
    let inherit: Vec<libc::c_int> = request
        .inherit
        .iter()
        .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&**fd))
        .collect();
    if !inherit.is_empty() {
        // SAFETY: fcntl is async-signal-safe, and `inherit` was built before
        // fork, so the closure allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for &fd in &inherit {
                    // Clear close-on-exec in the child only: the parent's
                    // descriptor stays close-on-exec for every other spawn.
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    if request.die_with_parent {
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
    }
    command.spawn()
}

/// The command-line argument that names a VM as warren's VM `id`
/// (`-name warren-<id>`): how a VM process is told apart from any other,
/// and from a VM of another sandbox, when its pid is read back.
pub fn vm_marker(id: &str) -> String {
    format!("warren-{id}")
}

/// The sandbox id in a [`vm_marker`] argument, if it is one.
pub fn id_of_vm_marker(arg: &str) -> Option<&str> {
    arg.strip_prefix("warren-")
}

/// The arguments of process `pid` (None if it is gone, a zombie, or
/// unreadable): the identity check behind [`live_pid_from_file`], since a
/// pid alone may have been reused by an unrelated process.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if bytes.is_empty() {
        return None;
    }
    Some(
        bytes
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` exists and is not a zombie: the test for a VM or daemon
/// that must still be doing its work. A process that outlived its parent is
/// reaped by init, but not every container's init reaps, so a zombie counts
/// as gone here.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself
    // contain parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Whether the pid is taken at all (signal 0 succeeds, or is refused for
/// lack of permission), zombies included: the test for an owner process
/// that has died only once nothing holds its pid any more.
pub fn exists(pid: u32) -> bool {
    match kill(Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Reads the pid a pid file records (see [`write_pid_file`]).
pub fn read_pid_file(path: &Path) -> Result<u32, PidFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PidFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let content = text.trim();
    content
        .parse::<u32>()
        .map_err(|source| PidFileError::Malformed {
            path: path.to_path_buf(),
            content: content.to_string(),
            source,
        })
}

/// Records `pid` in `path` atomically, so that a restarted warren can find
/// (adopt or end) the process it started.
pub fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    write_atomic(path, format!("{pid}\n").as_bytes())
}

/// The pid recorded in `pid_file` if that process still runs
/// ([`is_running`]) and its arguments pass `is_ours` (pids are reused: the
/// command line tells whether it is still the process that was recorded).
pub fn live_pid_from_file(pid_file: &Path, is_ours: impl Fn(&[String]) -> bool) -> Option<u32> {
    let pid = read_pid_file(pid_file).ok()?;
    let ours = is_ours(&cmdline(pid)?);
    (ours && is_running(pid)).then_some(pid)
}

/// Running processes (pid, arguments) whose program (first argument)
/// passes `program`: what really runs on this host, for the reconciler,
/// which trusts no record.
pub fn find_running(program: impl Fn(&str) -> bool) -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, cmdline(pid)?)))
        .filter(|(pid, args)| args.first().is_some_and(|a| program(a)) && is_running(*pid))
        .collect()
}

/// Ends process `pid` and its process group (SIGKILL to both: the group
/// takes any helper with it, the pid covers a process that left its
/// group), then waits up to [`KILL_WAIT`] for it to stop running. Signal
/// errors are ignored: a process that is already gone is what was asked.
pub fn kill_group(pid: u32) -> Result<(), KillError> {
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let step = Duration::from_millis(10);
    for _ in 0..(KILL_WAIT.as_millis() / step.as_millis()) {
        if !is_running(pid) {
            return Ok(());
        }
        std::thread::sleep(step);
    }
    Err(KillError::StillRunning {
        pid,
        waited: KILL_WAIT,
    })
}

/// Writes a small file atomically (temp file, fsync, rename, fsync of the
/// directory), so a crash leaves the old contents or the new, never a torn
/// file: pid files, and the metadata and records that crash recovery reads.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The last `max` bytes of a log file, trimmed to whole lines (empty if it
/// cannot be read): what an error report or a kept log shows of a
/// process's (or a guest console's) output.
pub fn tail_of(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let text = if start > 0 {
        text.split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or(text)
    } else {
        text
    };
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(tail_of(&path, 15), "third");
        assert_eq!(tail_of(&path, 1000), "first line\nsecond line\nthird");
        assert_eq!(tail_of(&dir.path().join("missing"), 10), "");
    }

    #[test]
    fn atomic_write_replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn pid_files_round_trip_and_say_why_they_give_no_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        assert!(matches!(
            read_pid_file(&path),
            Err(PidFileError::Read { .. })
        ));
        write_pid_file(&path, 42).unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), 42);
        std::fs::write(&path, "4x2\n").unwrap();
        let error = read_pid_file(&path).unwrap_err();
        assert!(matches!(&error, PidFileError::Malformed { content, .. } if content == "4x2"));
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn this_process_is_running_and_found_from_its_pid_file() {
        let me = std::process::id();
        assert!(is_running(me));
        assert!(exists(me));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("me.pid");
        write_pid_file(&path, me).unwrap();
        assert_eq!(live_pid_from_file(&path, |_| true), Some(me));
        assert_eq!(live_pid_from_file(&path, |_| false), None);
        assert_eq!(live_pid_from_file(&dir.path().join("none"), |_| true), None);
    }

    #[test]
    fn a_killed_group_is_gone_and_a_reaped_pid_does_not_exist() {
        let log = tempfile::tempfile().unwrap();
        let mut child = spawn(SpawnRequest {
            binary: "sleep".into(),
            args: vec!["60".into()],
            log,
            die_with_parent: true,
            inherit: Vec::new(),
        })
        .unwrap();
        let pid = child.id();
        assert!(is_running(pid));
        assert!(cmdline(pid).unwrap().contains(&"60".to_string()));
        kill_group(pid).unwrap();
        assert!(!is_running(pid), "a zombie is not running");
        assert!(exists(pid), "but its pid is taken until it is reaped");
        child.wait().unwrap();
        assert!(!exists(pid));
    }

    #[test]
    fn the_vm_marker_names_the_sandbox() {
        assert_eq!(id_of_vm_marker(&vm_marker("sb-1")), Some("sb-1"));
        assert_eq!(id_of_vm_marker("qemu"), None);
    }
}
