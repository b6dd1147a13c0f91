//! `warren exec` (streamed over the exec WebSocket) and `warren shell`
//! (an interactive terminal over the PTY WebSocket).

use std::io::{IsTerminal, Write};

use anyhow::Result;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use warren_client::{Client, ExecEvent, ExecRequest, PtyEvent, PtyOptions, PtySize, StreamExec};

use crate::exit;
use crate::output::print_json;
use crate::remote::parse_pairs;
use crate::run::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, RawMode, terminal_size};

/// Status of a command whose stdout reader went away (a shell reports
/// 128 + SIGPIPE).
const EXIT_BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

/// Options of `warren exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Sandbox id.
    pub id: String,
    /// User to run as (default root).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory (default: the user's home).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable (KEY=VALUE), repeatable.
    #[arg(long, short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Kill the command after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Run to completion, then print the API's result (exit code, stdout,
    /// stderr) as one JSON document instead of streaming; stdin (when not a
    /// terminal) is sent as text.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The exit status for a failure to start or follow a command: 127 and
/// 126 as a shell has them, 125 for anything warren itself could not do.
fn failure_status(error: &warren_client::Error) -> i32 {
    match error.code() {
        Some("command_not_found") => EXIT_NOT_FOUND,
        Some("permission_denied") => EXIT_CANNOT_EXECUTE,
        _ => exit::WARREN_FAILED,
    }
}

fn report_client_error(context: &str, error: warren_client::Error) -> i32 {
    let status = failure_status(&error);
    exit::report(&anyhow::Error::new(error).context(context.to_string()));
    status
}

/// `warren exec`: streams the command's stdout and stderr live, forwards
/// stdin when it is not a terminal, exits with the command's status.
pub async fn exec(client: &Client, args: ExecArgs) -> Result<i32> {
    let env = parse_pairs("--env", &args.env)?;
    let env = (!env.is_empty()).then_some(env);
    let stdin_is_terminal = std::io::stdin().is_terminal();
    if args.json {
        let mut stdin = None;
        if !stdin_is_terminal {
            let mut data = Vec::new();
            tokio::io::stdin().read_to_end(&mut data).await?;
            stdin = Some(String::from_utf8(data).map_err(|_| {
                crate::remote::UsageError(
                    "--json sends stdin as text, and this input is not UTF-8; drop --json to stream bytes".into(),
                )
            })?);
        }
        let request = ExecRequest {
            argv: Some(args.command.clone()),
            env,
            cwd: args.cwd.clone(),
            user: args.user.clone(),
            timeout_secs: args.timeout,
            stdin,
            ..ExecRequest::default()
        };
        return match client.exec(&args.id, &request).await {
            Ok(result) => {
                print_json(&result)?;
                Ok(result.status().shell_code())
            }
            Err(error) => Ok(report_client_error(
                &format!("running the command in {}", args.id),
                error,
            )),
        };
    }

    let request = StreamExec {
        argv: Some(args.command.clone()),
        env,
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        timeout_secs: args.timeout,
        ..StreamExec::default()
    };
    // Catch signals before the command starts, so Ctrl-C during the start
    // still ends warren cleanly.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut session = tokio::select! {
        started = client.exec_stream(&args.id, &request) => match started {
            Ok(session) => session,
            Err(error) => {
                return Ok(report_client_error(
                    &format!("running the command in {}", args.id),
                    error,
                ));
            }
        },
        _ = interrupt.recv() => return Ok(128 + libc::SIGINT),
        _ = term.recv() => return Ok(128 + libc::SIGTERM),
        _ = hangup.recv() => return Ok(128 + libc::SIGHUP),
    };
    let input = session.input();
    let stdin_task = if stdin_is_terminal {
        // An interactive terminal is not the command's input (use
        // `warren shell` for that): the command reads end-of-file.
        input.close_stdin().await.ok();
        None
    } else {
        let (writer, closer) = (input.clone(), input.clone());
        Some(crate::stdin::pump(
            64 * 1024,
            move |data| {
                let input = writer.clone();
                async move { input.write(&data).await.is_ok() }
            },
            move || async move {
                let _ = closer.close_stdin().await;
            },
        ))
    };

    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut interrupts = 0;
    let status = loop {
        tokio::select! {
            event = session.next_event() => match event {
                Ok(Some(ExecEvent::Stdout(data))) => {
                    if let Err(error) = stdout.write_all(&data).and_then(|()| stdout.flush()) {
                        if error.kind() == std::io::ErrorKind::BrokenPipe {
                            break EXIT_BROKEN_PIPE;
                        }
                        return Err(error.into());
                    }
                }
                Ok(Some(ExecEvent::Stderr(data))) => {
                    let _ = stderr.write_all(&data).and_then(|()| stderr.flush());
                }
                Ok(Some(ExecEvent::Exit(status))) => break status.shell_code(),
                Ok(None) => break exit::WARREN_FAILED,
                Err(error) => break report_client_error(&format!("following the command in {}", args.id), error),
            },
            _ = interrupt.recv() => {
                interrupts += 1;
                if interrupts > 1 {
                    eprintln!("warren: interrupted twice; killing the command");
                    break 128 + libc::SIGINT;
                }
                let _ = input.signal(libc::SIGINT).await;
            }
            // Dropping the session kills the command.
            _ = term.recv() => break 128 + libc::SIGTERM,
            _ = hangup.recv() => break 128 + libc::SIGHUP,
        }
    };
    if let Some(task) = stdin_task {
        task.abort();
    }
    Ok(status)
}

/// Options of `warren shell`.
#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// Sandbox id.
    pub id: String,
    /// User to log in as (default root).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Command line to run instead of the login shell.
    #[arg(long, short = 'c', value_name = "CMDLINE")]
    pub command: Option<String>,
}

/// `warren shell`: an interactive terminal in the sandbox. The local
/// terminal is raw while it runs and restored afterwards.
pub async fn shell(client: &Client, args: ShellArgs) -> Result<i32> {
    let (rows, cols) = terminal_size().unwrap_or((24, 80));
    let options = PtyOptions {
        size: PtySize { cols, rows },
        cmd: args.command.clone(),
        user: args.user.clone(),
    };
    let mut session = match client.pty(&args.id, &options).await {
        Ok(session) => session,
        Err(error) => {
            return Ok(report_client_error(
                &format!("opening a terminal in {}", args.id),
                error,
            ));
        }
    };
    let stdin_is_terminal = std::io::stdin().is_terminal();
    let raw = RawMode::enter();
    let input = session.input();
    let (writer, closer) = (input.clone(), input.clone());
    let stdin_task = crate::stdin::pump(
        16 * 1024,
        move |data| {
            let input = writer.clone();
            async move { input.write(&data).await.is_ok() }
        },
        move || async move {
            // Piped input ran out: end-of-file for the shell, as Ctrl-D
            // at an empty prompt.
            if !stdin_is_terminal {
                let _ = closer.write(&[0x04]).await;
            }
        },
    );
    let mut winch = signal(SignalKind::window_change())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut stdout = std::io::stdout();
    let outcome = loop {
        tokio::select! {
            event = session.next_event() => match event {
                Ok(Some(PtyEvent::Output(data))) => {
                    if stdout.write_all(&data).and_then(|()| stdout.flush()).is_err() {
                        break Ok(EXIT_BROKEN_PIPE);
                    }
                }
                Ok(Some(PtyEvent::Exit(status))) => break Ok(status.shell_code()),
                Ok(None) => break Ok(exit::WARREN_FAILED),
                Err(error) => break Err(error),
            },
            _ = winch.recv() => {
                if let Some((rows, cols)) = terminal_size() {
                    let _ = input.resize(PtySize { cols, rows }).await;
                }
            }
            _ = term.recv() => break Ok(128 + libc::SIGTERM),
            _ = hangup.recv() => break Ok(128 + libc::SIGHUP),
        }
    };
    stdin_task.abort();
    // Restore the terminal before printing anything.
    drop(raw);
    match outcome {
        Ok(status) => Ok(status),
        Err(error) => {
            if stdin_is_terminal {
                eprintln!();
            }
            Ok(report_client_error(
                &format!("terminal in {}", args.id),
                error,
            ))
        }
    }
}
