//! `warren-memfs`: serves a VM's RAM lazily from a snapshot chain over FUSE
//! and reports the blocks the guest dirtied when unmounted (see the
//! `memfs` module and FORMAT.md).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use warren_snapshot::memfs::{MemfsConfig, run};

/// Serve guest memory from a snapshot at MOUNT/memory; write the guest's
/// changes to WORK and, on unmount or SIGTERM, the list of dirtied blocks
/// to WORK.dirty.
#[derive(Debug, Parser)]
#[command(name = "warren-memfs", version)]
struct Args {
    /// Directory to mount on (must exist).
    #[arg(long, value_name = "DIR")]
    mount: PathBuf,
    /// Work file receiving writes (recreated empty).
    #[arg(long, value_name = "FILE")]
    work: PathBuf,
    /// Guest RAM size in bytes (multiple of 4096).
    #[arg(long, value_name = "BYTES")]
    size: u64,
    /// Snapshot directory to read from; without it memory starts all zero.
    #[arg(long, value_name = "DIR")]
    snapshot: Option<PathBuf>,
    /// FUSE worker threads [default: CPUs, at most 4].
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // fuser warns "Failed to umount" when someone else unmounted us,
        // which is the normal way to stop: keep that out of the log.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser::session=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = MemfsConfig {
        mount: args.mount,
        work: args.work,
        size: args.size,
        snapshot: args.snapshot,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4))),
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once (no error type repeats its source).
            eprintln!("warren-memfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
