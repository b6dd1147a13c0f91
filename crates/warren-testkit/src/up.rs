//! `warren up` as a child process: the one way tests and benchmarks start
//! the service and wait until it answers.
//!
//! The child gets its own data directory (`WARREN_HOME`), the shared image
//! cache, an explicit loopback `--listen` address, and none of the
//! environment that would point it elsewhere (`WARREN_URL`,
//! `WARREN_API_KEY`, `WARREN_DATABASE_URL`, `WARREN_LISTEN`); its output
//! is appended to `service.log` in the data directory, so several starts
//! over one directory keep one log. Dropping a [`WarrenUp`] kills the
//! child (SIGKILL): a failing test must not leave a service behind.
//! Callers that want a graceful stop call [`WarrenUp::terminate`].

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where `warren up` keeps its admin key, relative to the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// The service's log in the data directory (stdout and stderr).
pub const LOG_FILE: &str = "service.log";

/// Why `warren up` could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// No free loopback port, or the log could not be opened.
    #[error("preparing `warren up` in {home} failed")]
    Prepare {
        /// The data directory.
        home: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The executable could not be started.
    #[error("starting `{exe} up` failed")]
    Spawn {
        /// The `warren` executable.
        exe: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The service exited before it answered.
    #[error("`warren up` exited ({status}) while starting; its log ends with:\n{log}")]
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The service did not answer `/health` (with its admin key written)
    /// in time.
    #[error("`warren up` did not answer /health within {} s; its log ends with:\n{log}", .timeout.as_secs())]
    NotReady {
        /// How long it was given.
        timeout: Duration,
        /// The end of its log.
        log: String,
    },
    /// [`WarrenUp::wait_ready`] on a service that was stopped.
    #[error("`warren up` is not running")]
    NotRunning,
}

/// A free TCP port on 127.0.0.1 (free when asked: another process may take
/// it before the service binds it, which then fails loudly).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `GET /health` at `url` (`http://host:port`) answers 200, asked
/// over a plain HTTP/1.0 connection so that no HTTP client library sits
/// between the test and the service.
pub fn health_ok(url: &str) -> bool {
    let address = url.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// How to start `warren up`: built once, [`UpCommand::spawn`]ed as often
/// as a test restarts the service (same directory, same port).
#[derive(Debug, Clone)]
pub struct UpCommand {
    exe: PathBuf,
    home: PathBuf,
    listen: String,
    image_cache: PathBuf,
    global_args: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log_header: Option<String>,
    own_process_group: bool,
}

impl UpCommand {
    /// `exe up --listen 127.0.0.1:<free port>` over the data directory
    /// `home`, with the shared image cache ([`crate::image_cache`]).
    pub fn new(exe: impl Into<PathBuf>, home: impl Into<PathBuf>) -> Result<Self, UpError> {
        let home = home.into();
        let port = free_port().map_err(|source| UpError::Prepare {
            home: home.clone(),
            source,
        })?;
        Ok(Self {
            exe: exe.into(),
            home,
            listen: format!("127.0.0.1:{port}"),
            image_cache: crate::image_cache(),
            global_args: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            log_header: None,
            own_process_group: false,
        })
    }

    /// Listens on `address` (`host:port`) instead of a free port.
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        self.listen = address.into();
        self
    }

    /// Uses `cache` as the image cache.
    pub fn image_cache(mut self, cache: impl Into<PathBuf>) -> Self {
        self.image_cache = cache.into();
        self
    }

    /// Arguments before `up` (`--accel tcg`).
    pub fn global_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.global_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Arguments of `up` after `--listen` (`--on-shutdown kill`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// One more environment variable of the service.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// A line written to the log before each start, so the starts of one
    /// log can be told apart (`{n}` becomes the start's number).
    pub fn log_header(mut self, header: impl Into<String>) -> Self {
        self.log_header = Some(header.into());
        self
    }

    /// Starts the service in its own process group, so a Ctrl-C meant for
    /// the caller does not reach it before the caller has cleaned up.
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// The service's base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The data directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Starts the service (without waiting for it: see
    /// [`WarrenUp::wait_ready`]).
    pub fn spawn(&self) -> Result<WarrenUp, UpError> {
        self.spawn_numbered(1)
    }

    /// Starts the service; `start` numbers the log header.
    pub fn spawn_numbered(&self, start: u32) -> Result<WarrenUp, UpError> {
        let prepare = |source| UpError::Prepare {
            home: self.home.clone(),
            source,
        };
        let log_path = self.home.join(LOG_FILE);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(prepare)?;
        if let Some(header) = &self.log_header {
            writeln!(log, "{}", header.replace("{n}", &start.to_string())).map_err(prepare)?;
        }
        let mut command = Command::new(&self.exe);
        command
            .args(&self.global_args)
            .args(["up", "--listen", &self.listen])
            .args(&self.args)
            .env("WARREN_HOME", &self.home)
            .env("WARREN_IMAGE_CACHE", &self.image_cache)
            .env_remove("WARREN_URL")
            .env_remove("WARREN_API_KEY")
            .env_remove("WARREN_LISTEN")
            .env_remove("WARREN_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(prepare)?)
            .stderr(log);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        if self.own_process_group {
            command.process_group(0);
        }
        let child = command.spawn().map_err(|source| UpError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        Ok(WarrenUp {
            child: Some(child),
            url: self.url(),
            home: self.home.clone(),
        })
    }
}

/// How [`WarrenUp::terminate`] ended the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited on its own after SIGTERM.
    Exited(ExitStatus),
    /// It did not exit in time and was killed (SIGKILL).
    Killed(Option<ExitStatus>),
    /// It was not running (never started, or already stopped).
    NotRunning,
}

/// A running `warren up` child; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct WarrenUp {
    child: Option<Child>,
    url: String,
    home: PathBuf,
}

impl WarrenUp {
    /// The service's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its data directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The whole service log (every start over this directory).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join(LOG_FILE)).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The admin key the service wrote, once it exists.
    pub fn admin_key(&self) -> Option<String> {
        std::fs::read_to_string(self.home.join(ADMIN_KEY_FILE))
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
    }

    /// Waits until the service answers `/health` and its admin key is
    /// written, and returns the key; fails as soon as the service exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String, UpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(UpError::NotRunning);
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(UpError::Exited {
                    status,
                    log: self.log_tail(30),
                });
            }
            if health_ok(&self.url)
                && let Some(key) = self.admin_key()
            {
                return Ok(key);
            }
            if Instant::now() > deadline {
                return Err(UpError::NotReady {
                    timeout,
                    log: self.log_tail(30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as in a crash: no shutdown work at all. Waits for the
    /// child.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (the configured `--on-shutdown` work), waiting up to
    /// `timeout` for the service to exit; SIGKILL after that.
    pub fn terminate(&mut self, timeout: Duration) -> Stopped {
        let Some(mut child) = self.child.take() else {
            return Stopped::NotRunning;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Stopped::Exited(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        Stopped::Killed(child.wait().ok())
    }
}

impl Drop for WarrenUp {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `warren`: a shell script that records its arguments
    /// and environment, writes an admin key and serves `/health` once.
    fn fake_warren(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let exe = dir.join("fake-warren");
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    #[test]
    fn a_service_that_exits_while_starting_fails_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let exe = fake_warren(
            dir.path(),
            "echo \"args: $*\"; echo \"home: $WARREN_HOME\"; exit 3",
        );
        let command = UpCommand::new(&exe, dir.path())
            .unwrap()
            .global_args(["--accel", "tcg"])
            .args(["--on-shutdown", "kill"])
            .log_header("== start {n} ==");
        let mut up = command.spawn_numbered(7).unwrap();
        let error = up.wait_ready(Duration::from_secs(30)).unwrap_err();
        let UpError::Exited { status, log } = &error else {
            panic!("{error}");
        };
        assert_eq!(status.code(), Some(3));
        assert!(log.contains("== start 7 =="), "{log}");
        assert!(
            log.contains(&format!(
                "args: --accel tcg up --listen {} --on-shutdown kill",
                command.url().trim_start_matches("http://")
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("home: {}", dir.path().display())),
            "{log}"
        );
        assert_eq!(
            up.wait_ready(Duration::from_secs(1))
                .unwrap_err()
                .to_string(),
            "`warren up` is not running"
        );
    }

    #[test]
    fn a_silent_service_times_out_and_terminate_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        // An ignored SIGTERM stays ignored across exec.
        let exe = fake_warren(dir.path(), "trap '' TERM; exec sleep 60");
        let mut up = UpCommand::new(&exe, dir.path()).unwrap().spawn().unwrap();
        let error = up.wait_ready(Duration::from_millis(300)).unwrap_err();
        assert!(matches!(error, UpError::NotReady { .. }), "{error}");
        assert!(up.pid().is_some());
        assert!(matches!(
            up.terminate(Duration::from_millis(500)),
            Stopped::Killed(_)
        ));
        assert_eq!(up.terminate(Duration::from_secs(1)), Stopped::NotRunning);
    }

    #[test]
    fn terminate_reports_a_service_that_exits_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let exe = fake_warren(dir.path(), "exec sleep 60");
        let mut up = UpCommand::new(&exe, dir.path()).unwrap().spawn().unwrap();
        assert!(matches!(
            up.terminate(Duration::from_secs(30)),
            Stopped::Exited(_)
        ));
    }

    #[test]
    fn health_is_not_ok_where_nothing_listens() {
        let port = free_port().unwrap();
        assert!(!health_ok(&format!("http://127.0.0.1:{port}")));
    }
}
