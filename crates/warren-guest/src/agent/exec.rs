//! Starting processes: request validation, user and environment set-up,
//! spawning (pipes or a terminal), and the tasks that pump output, enforce
//! the timeout and publish the exit.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use warren_proto::pb;

use super::fdio::{self, FdIo};
use super::process::{Proc, ProcInit, ProcessTable, StdinHandle, output_event};
use super::pty;
use super::ring::OutKind;
use crate::errors::ExecError;
use crate::users::{User, UserDb};

/// PATH of every process (the request's env may override it).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// LANG of every process (the request's env may override it).
pub const DEFAULT_LANG: &str = "C.UTF-8";
/// How long output is still collected after the process exited, if some
/// other process (a daemon it started) keeps its pipes open.
pub const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// Most bytes read from a pipe after the grace period (what was already
/// in it when the process exited; a pipe holds 64 KiB by default).
const DRAIN_LIMIT: usize = 1024 * 1024;
/// Read size of the output pumps (the default pipe capacity; a terminal
/// returns far less per read).
const READ_BYTES: usize = 64 * 1024;

/// A validated, resolved Exec request.
#[derive(Debug)]
pub struct ExecSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// argv as given (argv[0] as the caller wrote it).
    pub argv: Vec<String>,
    /// Complete environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// User to run as.
    pub user: User,
    /// All its group ids.
    pub groups: Vec<u32>,
    /// Terminal size, if on a terminal.
    pub pty: Option<pb::PtySize>,
    /// Give it a stdin pipe.
    pub stdin: bool,
    /// Survives the end of its Exec stream.
    pub background: bool,
    /// Kill it after this long.
    pub timeout: Option<Duration>,
    /// Caller's label.
    pub tag: String,
}

fn invalid(message: impl Into<String>) -> ExecError {
    ExecError::Invalid(message.into())
}

/// Validates `start` and resolves user, environment, working directory
/// and program.
pub fn prepare(start: pb::ExecStart, users: &UserDb) -> Result<ExecSpec, ExecError> {
    let argv = match (start.argv.is_empty(), start.shell.is_empty()) {
        (false, true) => start.argv,
        (true, false) => vec!["/bin/sh".into(), "-c".into(), start.shell],
        (false, false) => {
            return Err(invalid(
                "set either argv or shell in the Exec start message, not both",
            ));
        }
        (true, true) => {
            return Err(invalid(
                "the Exec start message needs a command: set argv (program and arguments) or shell",
            ));
        }
    };
    if argv[0].is_empty() {
        return Err(invalid("argv[0] (the program) is empty"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("argv contains a NUL byte"));
    }
    let user = users
        .resolve(&start.user)
        .ok_or_else(|| ExecError::UnknownUser(start.user.clone()))?;
    let groups = users.group_ids(&user);

    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert("HOME".to_string(), user.home.clone());
    env.insert("USER".to_string(), user.name.clone());
    env.insert("LOGNAME".to_string(), user.name.clone());
    let shell = if user.shell.is_empty() {
        "/bin/sh".to_string()
    } else {
        user.shell.clone()
    };
    env.insert("SHELL".to_string(), shell);
    env.insert("LANG".to_string(), DEFAULT_LANG.to_string());
    if start.pty.is_some() {
        env.insert("TERM".to_string(), "xterm-256color".to_string());
    }
    for (key, value) in start.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(format!(
                "environment variable name {key:?} is invalid (empty, or contains '=' or NUL)"
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!(
                "environment variable {key} contains a NUL byte"
            )));
        }
        env.insert(key, value);
    }

    let cwd = if start.cwd.is_empty() {
        if Path::new(&user.home).is_dir() {
            PathBuf::from(&user.home)
        } else {
            PathBuf::from("/")
        }
    } else {
        let cwd = warren_proto::paths::normalize(&start.cwd)
            .map_err(|e| invalid(format!("working directory: {e}")))?;
        match std::fs::metadata(&cwd) {
            Ok(meta) if meta.is_dir() => PathBuf::from(cwd),
            Ok(_) => {
                return Err(invalid(format!(
                    "working directory {cwd} is not a directory"
                )));
            }
            Err(_) => return Err(ExecError::MissingCwd(cwd)),
        }
    };

    let path_var = env.get("PATH").cloned().unwrap_or_default();
    let program = resolve_program(&argv[0], &path_var, &cwd)?;
    let timeout = (start.timeout_ms > 0).then(|| Duration::from_millis(start.timeout_ms));
    Ok(ExecSpec {
        program,
        argv,
        env,
        cwd,
        user,
        groups,
        pty: start.pty,
        stdin: start.stdin,
        background: start.background,
        timeout,
        tag: start.tag,
    })
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// Finds the program like `execvp` does, but before forking, so "not
/// found" and "not executable" come back as clear errors instead of an
/// exit status 127 from somewhere.
fn resolve_program(name: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, ExecError> {
    if name.contains('/') {
        let path = cwd.join(name);
        return match std::fs::metadata(&path) {
            Ok(meta) if is_executable(&meta) => Ok(path),
            Ok(_) => Err(ExecError::PermissionDenied(name.to_string())),
            Err(_) => Err(ExecError::NotFound(name.to_string())),
        };
    }
    let mut found_unexecutable = false;
    for dir in path_var.split(':') {
        // An empty PATH entry means the current directory.
        let dir = if dir.is_empty() { cwd } else { Path::new(dir) };
        let candidate = cwd.join(dir).join(name);
        match std::fs::metadata(&candidate) {
            Ok(meta) if is_executable(&meta) => return Ok(candidate),
            Ok(meta) if meta.is_file() => found_unexecutable = true,
            _ => {}
        }
    }
    if found_unexecutable {
        Err(ExecError::PermissionDenied(name.to_string()))
    } else {
        Err(ExecError::NotFound(name.to_string()))
    }
}

/// Where a foreground process's output goes without loss.
pub type EventSender = mpsc::Sender<Result<pb::ExecEvent, tonic::Status>>;

/// A spawned process whose supervising tasks are not running yet, so the
/// caller can queue its `started` event before any output.
pub struct Started {
    /// Its record (also in the table).
    pub proc: Arc<Proc>,
    supervised: Supervised,
}

impl Started {
    /// Starts the tasks that pump output, enforce the timeout and reap.
    pub fn run(self) -> Arc<Proc> {
        tokio::spawn(supervise(self.supervised));
        self.proc
    }
}

/// Spawns the process, registers it and starts its tasks. For a
/// foreground process, `primary` receives its output with backpressure
/// (a slow reader slows the process down instead of losing output) and
/// then its exit.
pub fn spawn(
    spec: ExecSpec,
    table: Arc<ProcessTable>,
    primary: Option<EventSender>,
) -> Result<Started, ExecError> {
    let spawn_error = |source: std::io::Error| ExecError::Spawn {
        program: spec.argv[0].clone(),
        source,
    };
    let mut command = Command::new(&spec.program);
    command
        .arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .kill_on_drop(false);

    // Parent ends: output readers and the stdin writer.
    let mut outputs: Vec<(OutKind, FdIo)> = Vec::new();
    let mut stdin_io: Option<Arc<FdIo>> = None;
    let mut pty_master: Option<Arc<FdIo>> = None;
    if let Some(size) = &spec.pty {
        let terminal = pty::open(size).map_err(spawn_error)?;
        let slave = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        command
            .stdin(slave(&terminal.slave).map_err(spawn_error)?)
            .stdout(slave(&terminal.slave).map_err(spawn_error)?)
            .stderr(Stdio::from(terminal.slave));
        let reader =
            FdIo::new(terminal.master.try_clone().map_err(spawn_error)?).map_err(spawn_error)?;
        outputs.push((OutKind::Stdout, reader));
        let master = Arc::new(FdIo::new(terminal.master).map_err(spawn_error)?);
        stdin_io = Some(master.clone());
        pty_master = Some(master);
    } else {
        for kind in [OutKind::Stdout, OutKind::Stderr] {
            let (read, write) = fdio::pipe().map_err(spawn_error)?;
            match kind {
                OutKind::Stdout => command.stdout(Stdio::from(write)),
                OutKind::Stderr => command.stderr(Stdio::from(write)),
            };
            outputs.push((kind, FdIo::new(read).map_err(spawn_error)?));
        }
        if spec.stdin {
            let (read, write) = fdio::pipe().map_err(spawn_error)?;
            command.stdin(Stdio::from(read));
            stdin_io = Some(Arc::new(FdIo::new(write).map_err(spawn_error)?));
        } else {
            command.stdin(Stdio::null());
        }
    }

    let pty_mode = spec.pty.is_some();
    let gids: Vec<nix::unistd::Gid> = spec
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    let (uid, gid) = (spec.user.uid, spec.user.gid);
    // Changing identity needs root; an unprivileged development agent can
    // only run processes as itself.
    let change_identity =
        nix::unistd::geteuid().is_root() || uid != nix::unistd::geteuid().as_raw();
    let reset_oom = super::oom_protected();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if pty_mode {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else {
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
            }
            if reset_oom {
                // Processes must not inherit the agent's protection from
                // the OOM killer. Best effort: nothing to report here.
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            if change_identity {
                nix::unistd::setgroups(&gids)?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            }
            Ok(())
        });
    }

    let child = command.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ExecError::NotFound(spec.argv[0].clone()),
        std::io::ErrorKind::PermissionDenied => ExecError::PermissionDenied(spec.argv[0].clone()),
        _ => spawn_error(source),
    })?;
    // Our copies of the child's ends must go now, or end of file would
    // never be seen on the pipes and the terminal would never hang up.
    drop(command);
    let Some(pid) = child.id() else {
        return Err(spawn_error(std::io::Error::other(
            "the process exited before its pid was known",
        )));
    };

    let (stdin_handle, stdin_task) = match stdin_io {
        Some(io) => {
            let (handle, rx) = StdinHandle::new();
            let task = tokio::spawn(super::process::stdin_writer(io, rx, pty_mode));
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let proc = Arc::new(Proc::new(ProcInit {
        pid,
        argv: spec.argv,
        tag: spec.tag,
        background: spec.background,
        stdin: stdin_handle,
        pty: pty_master,
    }));
    table.insert(proc.clone());
    tracing::debug!(pid, program = %spec.program.display(), "started");
    Ok(Started {
        supervised: Supervised {
            proc: proc.clone(),
            child,
            outputs,
            primary,
            timeout: spec.timeout,
            stdin_task,
            table,
        },
        proc,
    })
}

/// What the supervising task of one process owns.
struct Supervised {
    proc: Arc<Proc>,
    child: tokio::process::Child,
    outputs: Vec<(OutKind, FdIo)>,
    primary: Option<EventSender>,
    timeout: Option<Duration>,
    stdin_task: Option<tokio::task::JoinHandle<()>>,
    table: Arc<ProcessTable>,
}

/// Waits for the process (killing it at its deadline), collects the rest
/// of its output, and publishes its exit.
async fn supervise(mut s: Supervised) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let pumps: Vec<_> = s
        .outputs
        .drain(..)
        .map(|(kind, io)| {
            tokio::spawn(pump(
                s.proc.clone(),
                kind,
                io,
                s.primary.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    let mut timed_out = false;
    let status = match s.timeout {
        Some(limit) => {
            tokio::select! {
                status = s.child.wait() => status,
                _ = tokio::time::sleep(limit) => {
                    timed_out = s.proc.kill();
                    s.child.wait().await
                }
            }
        }
        None => s.child.wait().await,
    };
    s.proc.mark_reaped();

    let all_pumps = async {
        for pump in pumps {
            let _ = pump.await;
        }
    };
    tokio::pin!(all_pumps);
    tokio::select! {
        _ = &mut all_pumps => {}
        _ = tokio::time::sleep(DRAIN_GRACE) => {
            let _ = stop_tx.send(true);
            all_pumps.await;
        }
    }
    if let Some(task) = s.stdin_task.take() {
        task.abort();
    }

    let mut exited = pb::ExecExited {
        timed_out,
        ..Default::default()
    };
    match status {
        Ok(status) => {
            exited.exit_code = status.code();
            exited.signal = status.signal();
        }
        Err(error) => {
            tracing::warn!(pid = s.proc.pid, %error, "waiting for a process failed");
            exited.signal = Some(libc::SIGKILL);
        }
    }
    tracing::debug!(pid = s.proc.pid, ?exited, "exited");
    s.proc.finish(exited);
    if let Some(primary) = s.primary.take() {
        let _ = primary.send(Ok(super::process::exit_event(exited))).await;
    }
    s.table.on_exit(&s.proc);
}

/// Moves one output stream into the ring (and to the foreground caller).
/// After the process exited plus [`DRAIN_GRACE`] (`stop`), it only takes
/// what is already buffered and ends, so a daemon holding the pipe cannot
/// hold up the exit.
async fn pump(
    proc: Arc<Proc>,
    kind: OutKind,
    io: FdIo,
    mut primary: Option<EventSender>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_BYTES];
    let mut drained = 0usize;
    loop {
        let n = if *stop.borrow_and_update() {
            if drained >= DRAIN_LIMIT {
                break;
            }
            match io.try_read(&mut buf) {
                Ok(n) => {
                    drained += n;
                    n
                }
                Err(_) => 0,
            }
        } else {
            tokio::select! {
                read = io.read(&mut buf) => match read {
                    Ok(n) => n,
                    Err(error) => {
                        tracing::debug!(%error, "output read failed");
                        0
                    }
                },
                _ = stop.changed() => continue,
            }
        };
        if n == 0 {
            break;
        }
        let data = Bytes::copy_from_slice(&buf[..n]);
        proc.push_output(kind, data.clone());
        if let Some(tx) = &primary
            && tx.send(Ok(output_event(kind, data))).await.is_err()
        {
            // The caller went away (the process is being killed); keep
            // draining into the ring only.
            primary = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{parse_group, parse_passwd};

    fn db() -> UserDb {
        UserDb::new(
            parse_passwd(
                "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
            ),
            parse_group("root:x:0:\n"),
        )
    }

    fn start(argv: &[&str]) -> pb::ExecStart {
        pb::ExecStart {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn validates_command_shape() {
        let db = db();
        let both = pb::ExecStart {
            argv: vec!["ls".into()],
            shell: "ls".into(),
            ..Default::default()
        };
        assert!(matches!(prepare(both, &db), Err(ExecError::Invalid(_))));
        assert!(matches!(
            prepare(pb::ExecStart::default(), &db),
            Err(ExecError::Invalid(_))
        ));
        let shell = pb::ExecStart {
            shell: "echo hi".into(),
            ..Default::default()
        };
        let spec = prepare(shell, &db).unwrap();
        assert_eq!(spec.argv, ["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn builds_environment_and_cwd() {
        let db = db();
        let mut req = start(&["sh"]);
        req.env.insert("FOO".into(), "bar".into());
        req.env.insert("PATH".into(), "/bin".into());
        req.user = "nobody".into();
        req.pty = Some(pb::PtySize { rows: 1, cols: 1 });
        let spec = prepare(req, &db).unwrap();
        assert_eq!(spec.env["FOO"], "bar");
        assert_eq!(spec.env["PATH"], "/bin");
        assert_eq!(spec.env["USER"], "nobody");
        assert_eq!(spec.env["TERM"], "xterm-256color");
        assert_eq!(spec.env["LANG"], "C.UTF-8");
        // The home directory does not exist: "/".
        assert_eq!(spec.cwd, Path::new("/"));
        assert_eq!(spec.user.uid, 65534);
    }

    #[test]
    fn reports_bad_users_cwds_and_programs() {
        let db = db();
        let mut req = start(&["sh"]);
        req.user = "mallory".into();
        assert!(matches!(prepare(req, &db), Err(ExecError::UnknownUser(u)) if u == "mallory"));
        let mut req = start(&["sh"]);
        req.cwd = "/no/such/dir".into();
        assert!(matches!(prepare(req, &db), Err(ExecError::MissingCwd(_))));
        let req = start(&["warren-no-such-command"]);
        assert!(
            matches!(prepare(req, &db), Err(ExecError::NotFound(n)) if n == "warren-no-such-command")
        );
        let req = start(&["/etc/passwd"]);
        assert!(matches!(
            prepare(req, &db),
            Err(ExecError::PermissionDenied(_))
        ));
        let mut req = start(&["sh"]);
        req.env.insert("A=B".into(), "x".into());
        assert!(matches!(prepare(req, &db), Err(ExecError::Invalid(_))));
    }

    #[test]
    fn resolves_programs_in_path() {
        let cwd = Path::new("/");
        assert_eq!(
            resolve_program("sh", "/nonexistent:/bin", cwd).unwrap(),
            Path::new("/bin/sh")
        );
        assert!(resolve_program("sh", "/nonexistent", cwd).is_err());
        assert_eq!(
            resolve_program("./bin/sh", "", cwd).unwrap(),
            Path::new("/./bin/sh")
        );
    }
}
