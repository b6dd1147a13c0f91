//! `warren`: sandboxes for AI agents, as real Linux microVMs.

mod bench;
mod progress;
mod run;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use warren_sandbox::{AccelChoice, Manager, ManagerConfig};

/// Sandboxes for AI agents: real Linux microVMs that boot fast, run
/// commands, move files, and go away cleanly.
#[derive(Debug, Parser)]
#[command(name = "warren", version, propagate_version = true)]
struct Cli {
    /// Data directory (images, sandboxes). Default: $WARREN_HOME, or
    /// /var/lib/warren as root.
    #[arg(long, global = true, env = "WARREN_HOME")]
    data_dir: Option<std::path::PathBuf>,
    /// Accelerator: auto (KVM when usable, else TCG), kvm, or tcg.
    #[arg(long, global = true, env = "WARREN_ACCEL", default_value = "auto")]
    accel: String,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Boot a sandbox, run CMD in it with this terminal attached, exit
    /// with CMD's status, destroy the sandbox.
    Run(run::RunArgs),
    /// Guest images: list what can be built and what is cached, or build.
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
    },
    /// Benchmarks that print JSON.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Images this version can build, and the cached parts.
    List,
    /// Build (or verify) an image now.
    Build {
        /// Image name.
        #[arg(default_value = warren_sandbox::spec::DEFAULT_IMAGE)]
        name: String,
        /// Show build details.
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Cold create vs plain QEMU boot, exec latency, file transfer speed,
    /// idle memory.
    Boot(bench::BootBenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warren: cannot start the async runtime: {error}");
            return ExitCode::from(run::EXIT_WARREN_FAILED as u8);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Do not wait for a blocked stdin reader thread.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("warren: {error:#}");
            ExitCode::from(run::EXIT_WARREN_FAILED as u8)
        }
    }
}

fn manager_config(cli: &Cli) -> Result<ManagerConfig> {
    let mut config = ManagerConfig::from_env().map_err(anyhow::Error::msg)?;
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    config.accel = cli
        .accel
        .parse::<AccelChoice>()
        .map_err(anyhow::Error::msg)?;
    Ok(config)
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let config = manager_config(&cli)?;
    match cli.command {
        Commands::Run(args) => {
            let manager = Manager::new(config).context("setting up warren")?;
            run::run(manager, args).await
        }
        Commands::Images { command } => {
            images(config, command.unwrap_or(ImagesCommand::List)).await
        }
        Commands::Bench {
            command: BenchCommand::Boot(args),
        } => {
            let manager = Manager::new(config).context("setting up warren")?;
            let report = bench::boot(manager, args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
    }
}

async fn images(config: ManagerConfig, command: ImagesCommand) -> Result<i32> {
    match command {
        ImagesCommand::List => {
            let store = warren_image::ImageStore::open(&config.data_dir)?;
            println!("{:<10} DESCRIPTION", "NAME");
            for recipe in warren_image::ImageStore::catalog() {
                println!("{:<10} {}", recipe.name, recipe.description);
            }
            let cached = store.list()?;
            if !cached.is_empty() {
                println!();
                println!("cached in {}:", config.data_dir.join("images").display());
                println!(
                    "  {:<10} {:<8} {:>10} {:<18} SUMMARY",
                    "PART", "IMAGE", "DISK", "KEY"
                );
                for part in cached {
                    println!(
                        "  {:<10} {:<8} {:>7} MiB {:<18} {}",
                        format!("{:?}", part.kind).to_lowercase(),
                        part.image.as_deref().unwrap_or("-"),
                        part.allocated_bytes / (1024 * 1024),
                        part.key.chars().take(16).collect::<String>(),
                        part.summary
                    );
                }
            }
            Ok(0)
        }
        ImagesCommand::Build { name, verbose } => {
            let manager = Manager::new(config)?;
            let progress = Arc::new(progress::SpinnerProgress::new(verbose));
            let image = manager.prepare_image(&name, progress.clone()).await;
            progress.clear();
            let image = image?;
            println!("image {name} ready:");
            println!("  kernel    {}", image.kernel.display());
            println!("  initramfs {}", image.initramfs.display());
            println!("  rootfs    {}", image.rootfs.display());
            Ok(0)
        }
    }
}
