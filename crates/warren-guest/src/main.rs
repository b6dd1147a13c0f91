//! `warren-guest`: the one binary inside a warren sandbox.
//!
//! - As PID 1 (the initramfs's `/init`) it boots the guest into the root
//!   disk and supervises the agent ([`init`]).
//! - `warren-guest agent` is the agent the host drives over gRPC
//!   ([`agent`]): on the virtio-serial port in a VM, or on a Unix socket
//!   (`--listen-unix`) to develop and test on a normal host.

mod agent;
mod errors;
mod init;
mod logging;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line of the binary when it is not PID 1.
#[derive(Debug, Parser)]
#[command(
    name = "warren-guest",
    version,
    about = "warren's in-guest init and agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Agent {
        /// Serve on the virtio-serial port with this name.
        #[arg(long, conflicts_with = "listen_unix")]
        port_name: Option<String>,
        /// Serve on a Unix socket at this path (development, tests).
        #[arg(long)]
        listen_unix: Option<PathBuf>,
        /// Verbose logs (RUST_LOG overrides).
        #[arg(long)]
        debug: bool,
    },
}

/// Keeps freed heap memory in the process instead of returning it to the
/// kernel after every buffer. Under software emulation a fresh page costs
/// a guest page fault plus a host fault on the file-backed guest RAM (tens
/// of microseconds): with glibc's defaults, every 256 KiB transfer chunk
/// was its own mmap/munmap and file transfers ran at a fifth of the
/// channel's speed.
fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    if std::process::id() == 1 {
        init::run();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Agent {
            port_name,
            listen_unix,
            debug,
        } => {
            let result = match listen_unix {
                Some(path) => {
                    logging::init_tracing(logging::LogTarget::Stderr, debug);
                    agent::run_unix(&path)
                }
                None => {
                    logging::init_tracing(logging::LogTarget::Console, debug);
                    let name = port_name.unwrap_or_else(|| warren_proto::AGENT_PORT_NAME.into());
                    agent::run_port(&name, agent::ShutdownMode::PowerOff)
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    let mut message = format!("warren-guest agent: {error}");
                    let mut source = std::error::Error::source(&error);
                    while let Some(cause) = source {
                        message.push_str(&format!("\n  caused by: {cause}"));
                        source = cause.source();
                    }
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
