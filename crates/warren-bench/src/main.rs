//! `warren-bench`: warren's benchmarks and its fault-injection harness.
//!
//! They live outside the `warren` binary so that the product ships none of
//! their code, and the libraries' benchmark hooks (raw channel throughput,
//! link pings) are compiled only here (the `bench` features of
//! warren-proto and warren-sandbox). `warren bench ARGS` runs this binary
//! from beside the `warren` executable with the same ARGS; the service
//! under test (`bench api`, `bench faults`) is that `warren`, named by
//! `WARREN_BENCH_WARREN`, or else the `warren` beside this binary.

mod bench;
mod faults;
mod net;
mod snapshot;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use warren_sandbox::Manager;

/// Failures of the benchmark itself (not of what it measures): the status
/// `warren bench` always had.
const EXIT_BENCH_FAILED: u8 = 125;

/// Benchmarks that print JSON.
#[derive(Debug, Parser)]
#[command(name = "warren bench", bin_name = "warren bench", version)]
struct Cli {
    #[command(flatten)]
    global: warren_cmdline::GlobalArgs,
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Cold create vs plain QEMU boot, exec latency, file transfer speed,
    /// idle memory.
    Boot(bench::BootBenchArgs),
    /// Create through the REST API vs the library, exec over REST vs
    /// WebSocket, listing throughput.
    Api(bench::ApiBenchArgs),
    /// Pause (full and diff), resume at several memory sizes vs plain QEMU
    /// restoring the same snapshot, clones, idle memory of clones.
    Snapshot(snapshot::SnapshotBenchArgs),
    /// What a sandbox network costs: create and clone with vs without one,
    /// network set-up, policy changes, the port proxy vs a direct request.
    Net(net::NetBenchArgs),
    /// Fault injection: kills warren and VMs in the middle of operations
    /// and checks that nothing acknowledged is lost or left behind; exits
    /// non-zero on any violation.
    Faults(faults::FaultsBenchArgs),
}

/// The `warren` executable whose `warren up` the API and fault benchmarks
/// drive: the one that ran us (`WARREN_BENCH_WARREN`, set by `warren
/// bench`), else the one beside this binary.
fn warren_exe() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WARREN_BENCH_WARREN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("finding the warren-bench executable")?;
    let beside = me.with_file_name("warren");
    if beside.is_file() {
        Ok(beside)
    } else {
        anyhow::bail!(
            "warren not found beside {}; build it with cargo build --release -p warren-cli",
            me.display()
        )
    }
}

fn main() -> ExitCode {
    warren_cmdline::init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warren bench: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_BENCH_FAILED);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("warren: {error:#}");
            ExitCode::from(EXIT_BENCH_FAILED)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let config = cli.global.manager_config()?;
    match cli.command {
        BenchCommand::Boot(args) => {
            let manager = Manager::new(config).context("setting up warren")?;
            let report = bench::boot(manager, args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
        BenchCommand::Snapshot(args) => {
            let manager = Manager::new(config).context("setting up warren")?;
            let report = snapshot::snapshot(manager, args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
        BenchCommand::Faults(args) => {
            faults::faults(config, &warren_exe()?, &cli.global.accel, args).await
        }
        BenchCommand::Net(args) => {
            let report = net::net(config, &warren_exe()?, &cli.global.accel, args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
        BenchCommand::Api(args) => {
            let report = bench::api(config, &warren_exe()?, &cli.global.accel, args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
    }
}
