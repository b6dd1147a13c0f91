//! `warren run`: boot a sandbox, run one command attached to this
//! terminal, exit with its status, destroy the sandbox.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use warren_sandbox::{Command, ExecError, GuestErrorKind, Manager, ProcessEvent, SandboxSpec};

use warren_cmdline::SpinnerProgress;

/// Exit status when warren itself failed (as `docker run` does).
pub const EXIT_WARREN_FAILED: i32 = 125;
/// Exit status when the command could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit status when the command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Options of `warren run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Virtual CPUs.
    #[arg(long, default_value_t = warren_sandbox::spec::DEFAULT_VCPUS)]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = warren_sandbox::spec::DEFAULT_MEMORY_MIB)]
    pub memory: u32,
    /// Image to boot (see `warren images`).
    #[arg(long, default_value = warren_sandbox::spec::DEFAULT_IMAGE)]
    pub image: String,
    /// Environment variable for the command (KEY=VALUE), repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User to run as inside the sandbox.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Kill the command after this many seconds (exit status 124).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Allocate a terminal even if stdin/stdout are not terminals.
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never allocate a terminal.
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// Print image-build details.
    #[arg(short, long)]
    pub verbose: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Parses KEY=VALUE pairs.
pub fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("environment variable {pair:?} is not KEY=VALUE"))?;
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// Runs the command; returns the exit status for the process.
pub async fn run(manager: Manager, args: RunArgs) -> Result<i32> {
    let env = parse_env(&args.env)?;
    let spec = SandboxSpec {
        image: args.image.clone(),
        vcpus: args.cpus,
        memory_mib: args.memory,
        ..SandboxSpec::default()
    };
    let progress = Arc::new(SpinnerProgress::new(args.verbose));
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let use_tty = !args.no_tty && (args.tty || interactive);

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let sandbox = tokio::select! {
        created = manager.create(spec, progress.clone()) => {
            progress.clear();
            created?
        }
        _ = term.recv() => { progress.clear(); return Ok(128 + libc::SIGTERM) }
        _ = hangup.recv() => { progress.clear(); return Ok(128 + libc::SIGHUP) }
        _ = interrupt.recv() => { progress.clear(); return Ok(128 + libc::SIGINT) }
    };

    let mut command = Command::from_argv(args.command.iter().cloned()).envs(env);
    if let Some(user) = &args.user {
        command = command.user(user.clone());
    }
    if let Some(dir) = &args.workdir {
        command = command.cwd(dir.clone());
    }
    if let Some(seconds) = args.timeout {
        command = command.timeout(Duration::from_secs(seconds));
    }
    let status = if use_tty {
        let (rows, cols) = terminal_size().unwrap_or((24, 80));
        run_tty(&sandbox, command.pty(rows, cols), &mut term, &mut hangup).await
    } else {
        run_piped(
            &sandbox,
            command.stdin(true),
            &mut term,
            &mut hangup,
            &mut interrupt,
        )
        .await
    };
    let destroyed = sandbox.destroy().await;
    let status = status?;
    if let Err(error) = destroyed {
        crate::exit::report_std(&error, "warren: warning: ", "\n");
    }
    Ok(status)
}

/// Local stdin into a process started by `warren run`; `close` closes the
/// process's stdin when local stdin ends.
fn pump_stdin(
    input: warren_sandbox::ProcessInput,
    chunk: usize,
    close: bool,
) -> tokio::task::JoinHandle<()> {
    let closer = input.clone();
    crate::stdin::pump(
        chunk,
        move |data| {
            let input = input.clone();
            async move { input.write(data).await.is_ok() }
        },
        move || async move {
            if close {
                let _ = closer.close().await;
            }
        },
    )
}

/// Starts `command`; a failure to start is reported and becomes the shell-like
/// exit status `warren run` ends with.
async fn start(
    sandbox: &warren_sandbox::Sandbox,
    command: Command,
) -> std::result::Result<warren_sandbox::Process, i32> {
    sandbox.exec(command).await.map_err(|error| {
        crate::exit::report_std(&error, "warren: ", "\n");
        exec_failure_status(&error)
    })
}

/// Maps a failure to start the command to a shell-like exit status.
pub fn exec_failure_status(error: &ExecError) -> i32 {
    match error {
        ExecError::CommandNotFound(_) => EXIT_NOT_FOUND,
        ExecError::Guest(guest) if guest.kind == GuestErrorKind::PermissionDenied => {
            EXIT_CANNOT_EXECUTE
        }
        _ => EXIT_WARREN_FAILED,
    }
}

async fn run_piped(
    sandbox: &warren_sandbox::Sandbox,
    command: Command,
    term: &mut tokio::signal::unix::Signal,
    hangup: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) -> Result<i32> {
    let mut process = match start(sandbox, command).await {
        Ok(process) => process,
        Err(status) => return Ok(status),
    };
    let input = process.input().expect("exec has input");
    let stdin_task = pump_stdin(input, 64 * 1024, true);
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut interrupts = 0;
    let status = loop {
        tokio::select! {
            event = process.next_event() => match event {
                Ok(Some(ProcessEvent::Stdout(data))) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                Ok(Some(ProcessEvent::Stderr(data))) => {
                    stderr.write_all(&data)?;
                    stderr.flush()?;
                }
                Ok(Some(ProcessEvent::Exited(status))) => break status.shell_code(),
                Ok(None) => break EXIT_WARREN_FAILED,
                Err(error) => {
                    crate::exit::report_std(&error, "warren: ", "\n");
                    break EXIT_WARREN_FAILED;
                }
            },
            _ = interrupt.recv() => {
                interrupts += 1;
                if interrupts > 1 {
                    eprintln!("warren: interrupted twice; destroying the sandbox");
                    break 128 + libc::SIGINT;
                }
                let _ = process.signal(libc::SIGINT).await;
            }
            _ = term.recv() => break 128 + libc::SIGTERM,
            _ = hangup.recv() => break 128 + libc::SIGHUP,
        }
    };
    stdin_task.abort();
    Ok(status)
}

async fn run_tty(
    sandbox: &warren_sandbox::Sandbox,
    command: Command,
    term: &mut tokio::signal::unix::Signal,
    hangup: &mut tokio::signal::unix::Signal,
) -> Result<i32> {
    let mut process = match start(sandbox, command).await {
        Ok(process) => process,
        Err(status) => return Ok(status),
    };
    let raw = RawMode::enter();
    let input = process.input().expect("exec has input");
    // Under a terminal the shell ends on Ctrl-D, not when stdin closes.
    let stdin_task = pump_stdin(input.clone(), 16 * 1024, false);
    let mut winch = signal(SignalKind::window_change())?;
    let mut stdout = std::io::stdout();
    let status = loop {
        tokio::select! {
            event = process.next_event() => match event {
                Ok(Some(ProcessEvent::Stdout(data) | ProcessEvent::Stderr(data))) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                Ok(Some(ProcessEvent::Exited(status))) => break status.shell_code(),
                Ok(None) => break EXIT_WARREN_FAILED,
                Err(error) => {
                    drop(raw);
                    eprint!("\r\n");
                    crate::exit::report_std(&error, "warren: ", "\r\n");
                    stdin_task.abort();
                    return Ok(EXIT_WARREN_FAILED);
                }
            },
            _ = winch.recv() => {
                if let Some((rows, cols)) = terminal_size() {
                    let _ = input.resize(rows, cols).await;
                }
            }
            _ = term.recv() => break 128 + libc::SIGTERM,
            _ = hangup.recv() => break 128 + libc::SIGHUP,
        }
    };
    stdin_task.abort();
    drop(raw);
    Ok(status)
}

/// Rows and columns of the controlling terminal.
pub fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: winsize is plain integers; all zeroes is a valid value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO, libc::STDERR_FILENO] {
        // SAFETY: TIOCGWINSZ writes a winsize into the pointer we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0 && size.ws_row > 0 {
            return Some((size.ws_row, size.ws_col));
        }
    }
    None
}

/// Puts the local terminal in raw mode until dropped, so keystrokes
/// (Ctrl-C included) go to the sandbox's terminal unchanged.
pub struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    /// Enters raw mode if stdin is a terminal.
    pub fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            return Self { saved: None };
        }
        Self { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                &saved,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_pairs() {
        let env = parse_env(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
        assert!(parse_env(&["NOVALUE".into()]).is_err());
    }
}
