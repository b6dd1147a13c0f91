//! Running processes in a sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use warren_proto::pb;

use crate::agent::{Classified, SandboxShared};
use crate::error::{ExecError, GuestError, GuestErrorKind, Unavailable};

/// A process to start in a sandbox. Built like `std::process::Command`.
#[derive(Debug, Clone, Default)]
pub struct Command {
    argv: Vec<String>,
    shell: Option<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
    timeout: Option<Duration>,
    stdin: bool,
    pty: Option<PtySize>,
    background: bool,
    tag: Option<String>,
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Command {
    /// Runs `program` (looked up in the guest's PATH).
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            argv: vec![program.into()],
            ..Self::default()
        }
    }

    /// Runs a shell command line with `/bin/sh -c`.
    pub fn shell(line: impl Into<String>) -> Self {
        Self {
            shell: Some(line.into()),
            ..Self::default()
        }
    }

    /// Runs a full argv.
    pub fn from_argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (on top of the sandbox's).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Working directory (default: the user's home).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// User to run as (default: root).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Kills the process group after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Gives the process a stdin pipe (default: /dev/null).
    pub fn stdin(mut self, piped: bool) -> Self {
        self.stdin = piped;
        self
    }

    /// Runs under a pseudo-terminal of this size.
    pub fn pty(mut self, rows: u16, cols: u16) -> Self {
        self.pty = Some(PtySize { rows, cols });
        self
    }

    /// Keeps running when the caller goes away; output is buffered.
    pub fn background(mut self) -> Self {
        self.background = true;
        self
    }

    /// A label listed with the process.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// The argv, if this is not a shell command.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    pub(crate) fn validate(&self) -> Result<(), ExecError> {
        match (&self.shell, self.argv.is_empty()) {
            (Some(_), false) => {
                return Err(ExecError::InvalidCommand(
                    "give either a program with arguments or a shell line, not both".into(),
                ));
            }
            (None, true) => return Err(ExecError::InvalidCommand("no program given".into())),
            (None, false) if self.argv[0].is_empty() => {
                return Err(ExecError::InvalidCommand(
                    "the program name is empty".into(),
                ));
            }
            _ => {}
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(ExecError::InvalidCommand(format!(
                    "invalid environment variable {key:?}: names must be non-empty without '=' or NUL"
                )));
            }
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(ExecError::InvalidCommand(
                "arguments must not contain NUL bytes".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn to_start(&self, sandbox_env: &BTreeMap<String, String>) -> pb::ExecStart {
        let mut env: std::collections::HashMap<String, String> = sandbox_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        pb::ExecStart {
            argv: if self.shell.is_some() {
                Vec::new()
            } else {
                self.argv.clone()
            },
            shell: self.shell.clone().unwrap_or_default(),
            env,
            cwd: self.cwd.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64).unwrap_or(0),
            pty: self.pty.map(|size| pb::PtySize {
                rows: size.rows.into(),
                cols: size.cols.into(),
            }),
            background: self.background,
            stdin: self.stdin || self.pty.is_some(),
            tag: self.tag.clone().unwrap_or_default(),
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitStatus {
    /// Exit code, if it exited normally.
    pub code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// It was killed because its timeout elapsed.
    pub timed_out: bool,
}

impl ExitStatus {
    /// Exit code 0 and no signal.
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }

    /// The status a shell would report: the code, 128 + signal, or 124 for
    /// a timeout (as `timeout(1)` does).
    pub fn shell_code(&self) -> i32 {
        if self.timed_out {
            return 124;
        }
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        }
    }

    pub(crate) fn from_pb(exited: &pb::ExecExited) -> Self {
        Self {
            code: exited.exit_code,
            signal: exited.signal,
            timed_out: exited.timed_out,
        }
    }
}

/// One thing a process did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Bytes on stdout (or the terminal, for a PTY).
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
    /// It ended; no more events follow.
    Exited(ExitStatus),
}

/// Everything a finished process printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) UTF-8.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Sends input to a running process; cheap to clone, usable from another
/// task while the owner reads events.
#[derive(Clone)]
pub struct ProcessInput {
    tx: mpsc::Sender<pb::ExecInput>,
    shared: Arc<SandboxShared>,
}

impl ProcessInput {
    async fn send(&self, input: pb::exec_input::Input) -> Result<(), ExecError> {
        self.tx
            .send(pb::ExecInput { input: Some(input) })
            .await
            .map_err(|_| match self.shared.unavailable() {
                Some(unavailable) => ExecError::Unavailable(unavailable),
                None => ExecError::Guest(GuestError {
                    kind: GuestErrorKind::FailedPrecondition,
                    message: "the process has exited; it takes no more input".into(),
                }),
            })
    }

    /// Writes bytes to the process's stdin (backpressure applies).
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), ExecError> {
        self.send(pb::exec_input::Input::Stdin(data.into())).await
    }

    /// Closes stdin (the process sees end of file).
    pub async fn close(&self) -> Result<(), ExecError> {
        self.send(pb::exec_input::Input::CloseStdin(pb::StdinClose {}))
            .await
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ExecError> {
        self.send(pb::exec_input::Input::Resize(pb::PtySize {
            rows: rows.into(),
            cols: cols.into(),
        }))
        .await
    }

    /// Sends a signal to the process group.
    pub async fn signal(&self, signal: i32) -> Result<(), ExecError> {
        self.send(pb::exec_input::Input::Signal(signal)).await
    }
}

/// A started process: read its events, feed its input.
///
/// Dropping it before the process exits kills a foreground process (the
/// agent ends its process group when the stream closes).
pub struct Process {
    pid: u32,
    events: tonic::Streaming<pb::ExecEvent>,
    input: Option<ProcessInput>,
    shared: Arc<SandboxShared>,
    finished: bool,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// Starts a process over an open agent client.
    pub(crate) async fn start(
        mut client: warren_proto::pb::agent_client::AgentClient<tonic::transport::Channel>,
        shared: Arc<SandboxShared>,
        start: pb::ExecStart,
    ) -> Result<Self, ExecError> {
        let (tx, rx) = mpsc::channel::<pb::ExecInput>(16);
        tx.send(pb::ExecInput {
            input: Some(pb::exec_input::Input::Start(start)),
        })
        .await
        .expect("receiver alive");
        let response = client
            .exec(ReceiverStream::new(rx))
            .await
            .map_err(|status| status_to_exec_error_sync(&shared, status));
        let mut events = match response {
            Ok(response) => response.into_inner(),
            Err(pending) => return Err(pending.resolve().await),
        };
        let first = events.message().await;
        let pid = match first {
            Ok(Some(pb::ExecEvent {
                event: Some(pb::exec_event::Event::Started(started)),
            })) => started.pid,
            Ok(Some(_)) => {
                return Err(ExecError::Guest(GuestError {
                    kind: GuestErrorKind::Internal,
                    message: "the agent did not report the process start first".into(),
                }));
            }
            Ok(None) => {
                return Err(ExecError::Guest(GuestError {
                    kind: GuestErrorKind::Internal,
                    message: "the agent closed the process stream before it started".into(),
                }));
            }
            Err(status) => return Err(status_to_exec_error_sync(&shared, status).resolve().await),
        };
        Ok(Self {
            pid,
            events,
            input: Some(ProcessInput {
                tx,
                shared: shared.clone(),
            }),
            shared,
            finished: false,
        })
    }

    /// Wraps an Attach stream (no input channel).
    pub(crate) fn attached(
        pid: u32,
        events: tonic::Streaming<pb::ExecEvent>,
        shared: Arc<SandboxShared>,
    ) -> Self {
        Self {
            pid,
            events,
            input: None,
            shared,
            finished: false,
        }
    }

    /// The guest pid (also the handle for attach/input/signal calls).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle to send input from another task. `None` for attached
    /// processes (use the sandbox's `send_input` instead).
    pub fn input(&self) -> Option<ProcessInput> {
        self.input.clone()
    }

    /// The next event, or `None` after `Exited` was returned.
    pub async fn next_event(&mut self) -> Result<Option<ProcessEvent>, ExecError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            match self.events.message().await {
                Ok(Some(pb::ExecEvent { event: Some(event) })) => {
                    return Ok(Some(match event {
                        pb::exec_event::Event::Stdout(data) => ProcessEvent::Stdout(data),
                        pb::exec_event::Event::Stderr(data) => ProcessEvent::Stderr(data),
                        pb::exec_event::Event::Exited(exited) => {
                            self.finished = true;
                            self.input = None;
                            ProcessEvent::Exited(ExitStatus::from_pb(&exited))
                        }
                        pb::exec_event::Event::Started(_) => continue,
                    }));
                }
                Ok(Some(pb::ExecEvent { event: None })) => continue,
                Ok(None) => {
                    self.finished = true;
                    return Err(match self.shared.unavailable() {
                        Some(unavailable) => ExecError::Unavailable(unavailable),
                        None => ExecError::Unavailable(Unavailable::Channel {
                            id: self.shared.id.clone(),
                            detail: "the process stream ended before the process exited".into(),
                        }),
                    });
                }
                Err(status) => {
                    self.finished = true;
                    return Err(status_to_exec_error_sync(&self.shared, status)
                        .resolve()
                        .await);
                }
            }
        }
    }

    /// Writes to stdin.
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<(), ExecError> {
        self.require_input()?.write(data).await
    }

    /// Closes stdin.
    pub async fn close_stdin(&self) -> Result<(), ExecError> {
        self.require_input()?.close().await
    }

    /// Resizes the terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ExecError> {
        self.require_input()?.resize(rows, cols).await
    }

    /// Signals the process group.
    pub async fn signal(&self, signal: i32) -> Result<(), ExecError> {
        self.require_input()?.signal(signal).await
    }

    fn require_input(&self) -> Result<&ProcessInput, ExecError> {
        self.input.as_ref().ok_or_else(|| {
            ExecError::Guest(GuestError {
                kind: GuestErrorKind::FailedPrecondition,
                message: "this process handle takes no input (it exited, or was attached)".into(),
            })
        })
    }

    /// Reads events until exit and collects the output.
    pub async fn wait_with_output(mut self) -> Result<Output, ExecError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        // Dropping our input sender lets the agent see stdin end only when
        // the caller closes it explicitly; keep it open until exit.
        loop {
            match self.next_event().await? {
                Some(ProcessEvent::Stdout(data)) => stdout.extend_from_slice(&data),
                Some(ProcessEvent::Stderr(data)) => stderr.extend_from_slice(&data),
                Some(ProcessEvent::Exited(status)) => {
                    return Ok(Output {
                        status,
                        stdout,
                        stderr,
                    });
                }
                None => {
                    return Err(ExecError::Guest(GuestError {
                        kind: GuestErrorKind::Internal,
                        message: "process events ended without an exit status".into(),
                    }));
                }
            }
        }
    }
}

/// A status whose classification may need to wait briefly for the VM's
/// exit to be noticed.
pub(crate) struct PendingExecError<'a> {
    shared: &'a SandboxShared,
    status: tonic::Status,
}

impl PendingExecError<'_> {
    pub(crate) async fn resolve(self) -> ExecError {
        let not_found_on_start = self.status.code() == tonic::Code::NotFound;
        match self.shared.classify(self.status).await {
            Classified::Guest(error)
                if not_found_on_start && error.message.starts_with("command not found") =>
            {
                ExecError::CommandNotFound(error.message)
            }
            Classified::Guest(error) => ExecError::Guest(error),
            Classified::Unavailable(unavailable) => ExecError::Unavailable(unavailable),
        }
    }
}

pub(crate) fn status_to_exec_error_sync(
    shared: &SandboxShared,
    status: tonic::Status,
) -> PendingExecError<'_> {
    PendingExecError { shared, status }
}

/// A process the agent knows about (running, or exited in the background).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessInfo {
    /// Guest pid.
    pub pid: u32,
    /// Its argv.
    pub argv: Vec<String>,
    /// Caller's label.
    pub tag: String,
    /// Started in the background.
    pub background: bool,
    /// Runs under a PTY.
    pub pty: bool,
    /// Set once it exited.
    pub exit: Option<ExitStatus>,
    /// Start time, ms since the epoch (guest clock).
    pub started_unix_ms: i64,
}

impl From<pb::ProcessInfo> for ProcessInfo {
    fn from(info: pb::ProcessInfo) -> Self {
        Self {
            pid: info.pid,
            argv: info.argv,
            tag: info.tag,
            background: info.background,
            pty: info.pty,
            exit: info.exited.as_ref().map(ExitStatus::from_pb),
            started_unix_ms: info.started_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_commands() {
        assert!(Command::new("ls").validate().is_ok());
        assert!(Command::shell("echo hi").validate().is_ok());
        assert!(Command::new("").validate().is_err());
        assert!(Command::default().validate().is_err());
        assert!(Command::new("x").env("A=B", "1").validate().is_err());
        assert!(Command::new("x").arg("a\0b").validate().is_err());
    }

    #[test]
    fn sandbox_env_is_overridden_by_command_env() {
        let mut sandbox_env = BTreeMap::new();
        sandbox_env.insert("A".to_string(), "sandbox".to_string());
        sandbox_env.insert("B".to_string(), "sandbox".to_string());
        let start = Command::new("env")
            .env("B", "command")
            .to_start(&sandbox_env);
        assert_eq!(start.env["A"], "sandbox");
        assert_eq!(start.env["B"], "command");
        assert!(!start.stdin);
        assert!(Command::new("sh").pty(24, 80).to_start(&sandbox_env).stdin);
    }

    #[test]
    fn shell_codes() {
        let exit = |code, signal, timed_out| ExitStatus {
            code,
            signal,
            timed_out,
        };
        assert_eq!(exit(Some(3), None, false).shell_code(), 3);
        assert_eq!(exit(None, Some(9), false).shell_code(), 137);
        assert_eq!(exit(None, Some(9), true).shell_code(), 124);
        assert!(exit(Some(0), None, false).success());
    }
}
