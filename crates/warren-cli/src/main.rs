//! `warren`: sandboxes for AI agents, as real Linux microVMs.

mod bench;
mod cp;
mod exec;
mod exit;
mod output;
mod ports;

mod remote;
mod run;
mod stdin;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use warren_sandbox::{Manager, ManagerConfig};

/// Sandboxes for AI agents: real Linux microVMs that boot fast, run
/// commands, move files, and go away cleanly.
#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    propagate_version = true,
    after_help = exit::HELP
)]
struct Cli {
    #[command(flatten)]
    global: warren_cmdline::GlobalArgs,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Start the warren service: REST API, web console and a local host,
    /// with an embedded database under the data directory.
    Up(UpArgs),
    /// Create a sandbox (through the service) and print its id.
    Create(remote::CreateArgs),
    /// List sandboxes.
    #[command(visible_alias = "list")]
    Ls(remote::ListArgs),
    /// Show one sandbox.
    #[command(visible_alias = "inspect")]
    Get(remote::IdArgs),
    /// Run a command in a sandbox, streaming its output; exits with its
    /// status.
    Exec(exec::ExecArgs),
    /// Open an interactive shell in a sandbox.
    Shell(exec::ShellArgs),
    /// Copy a file between the host and a sandbox (ID:/path).
    Cp(cp::CpArgs),
    /// Print a sandbox's console log (the guest's serial console).
    Logs(remote::LogsArgs),
    /// Set a sandbox's timeout: it is killed SECS from now (0 = never).
    Timeout(remote::TimeoutArgs),
    /// Show a running sandbox's network policy, or replace it with the
    /// given flags (new connections follow it at once).
    Network(remote::NetworkCommandArgs),
    /// Print the URL a browser opens a sandbox's port at (the access token
    /// included unless the port is public); --public/--private change who
    /// may open it.
    Port(ports::PortArgs),
    /// Forward a local TCP port to a port of a sandbox (like `kubectl
    /// port-forward`), until Ctrl-C.
    PortForward(ports::PortForwardArgs),
    /// Pause a sandbox to disk (memory and disk): it then uses no RAM or
    /// CPU; prints what the pause wrote.
    Pause(remote::IdArgs),
    /// Resume a paused sandbox where it was paused.
    Resume(remote::IdArgs),
    /// Turn a running or paused sandbox into a snapshot template NAME;
    /// `warren create --template NAME` then makes clones of it.
    Snapshot(remote::SnapshotArgs),
    /// List snapshot templates (default), or show or delete one.
    Snapshots {
        #[command(subcommand)]
        command: Option<remote::SnapshotsCommand>,
        #[command(flatten)]
        out: output::JsonFlag,
    },
    /// Kill sandboxes (their records stay, as stopped).
    #[command(visible_alias = "rm")]
    Kill(remote::KillArgs),
    /// List the templates sandboxes can be created from.
    Templates {
        #[command(flatten)]
        out: output::JsonFlag,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: remote::KeysCommand,
    },
    /// Show lifecycle events (newest first).
    Events(remote::EventsArgs),
    /// Boot a sandbox, run CMD in it with this terminal attached, exit
    /// with CMD's status, destroy the sandbox.
    Run(run::RunArgs),
    /// Guest images: list what can be built and what is cached, or build.
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
    },
    /// Benchmarks that print JSON (boot, api, snapshot, faults): runs the
    /// `warren-bench` binary beside this one with these arguments.
    #[command(disable_help_flag = true)]
    Bench {
        /// `boot`, `api`, `snapshot` or `faults`, and their options (see
        /// `warren bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Options of `warren up`.
#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Address to listen on.
    #[arg(long, env = "WARREN_LISTEN", default_value = warren_server::config::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// Database URL (default: SQLite in the data directory; postgres://
    /// works too).
    #[arg(long, env = "WARREN_DATABASE_URL")]
    database_url: Option<String>,
    /// Running sandboxes a team may have at once.
    #[arg(long, env = "WARREN_MAX_SANDBOXES", default_value_t = warren_server::config::DEFAULT_MAX_SANDBOXES_PER_TEAM)]
    max_sandboxes: u32,
    /// What stopping warren (Ctrl-C, SIGTERM) does to running sandboxes:
    /// `pause` them to disk (they resume on demand after the restart),
    /// `keep` them running (the next start re-attaches them), or `kill`
    /// them.
    #[arg(long, env = "WARREN_ON_SHUTDOWN", default_value = "pause")]
    on_shutdown: warren_server::config::ShutdownAction,
    /// Seconds between reconciler passes (database vs VMs vs disk).
    #[arg(long, env = "WARREN_RECONCILE_INTERVAL", default_value_t = 30.0)]
    reconcile_interval: f64,
    /// Memory generations a paused sandbox keeps before they are merged.
    #[arg(long, env = "WARREN_SNAPSHOT_MERGE_CAP", default_value_t = warren_sandbox::snapshot::DEFAULT_MERGE_CAP)]
    snapshot_merge_cap: usize,
    /// Host-side addresses of the sandbox networks, a CIDR: one /30 per
    /// running sandbox (default 10.231.0.0/16, or $WARREN_NET_RANGE). Pick
    /// one no network of this host uses.
    #[arg(long, value_name = "CIDR")]
    net_range: Option<warren_sandbox::HostRange>,
    /// The DNS server sandboxes' names are resolved by, `IP` or `IP:PORT`
    /// (default: the host's first nameserver, or $WARREN_DNS_UPSTREAM).
    #[arg(long, value_name = "ADDR", value_parser = parse_dns_upstream)]
    dns_upstream: Option<std::net::SocketAddr>,
    /// No sandbox networks (as WARREN_NET=off): sandboxes get no network
    /// card, and only `internet: false` policies without `allow_out` are
    /// accepted.
    #[arg(long, conflicts_with_all = ["net_range", "dns_upstream"])]
    no_network: bool,
    /// Where sandbox ports are served by host name: port P of a sandbox
    /// is `http://P-ID.DOMAIN/` on this listener. NAME or NAME:PORT, the
    /// way clients reach warren (default localhost:<listen port>, which
    /// browsers resolve with no DNS set-up; behind a proxy, its domain with
    /// a wildcard DNS record).
    #[arg(long, env = "WARREN_DOMAIN", value_name = "DOMAIN")]
    domain: Option<warren_server::port_host::PortDomain>,
}

fn parse_dns_upstream(text: &str) -> Result<std::net::SocketAddr, String> {
    warren_sandbox::parse_upstream(text)
        .ok_or_else(|| format!("{text:?} is not an address such as 192.0.2.53 or 192.0.2.53:5353"))
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

fn main() -> ExitCode {
    warren_cmdline::init_logging();
    let cli = Cli::parse();
    if let Commands::Bench { args } = &cli.command {
        // Before any thread starts: `exec` replaces this process.
        let error = bench::exec(&cli, args);
        exit::report(&error);
        return ExitCode::from(run::EXIT_WARREN_FAILED as u8);
    }
    if cli.command.is_remote() {
        // Like other Unix tools, end quietly when the reader of our output
        // goes away (`warren ls | head -1`) instead of failing on EPIPE.
        // SAFETY: setting a signal's disposition to its default before any
        // thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warren: cannot start the async runtime: {error}");
            return ExitCode::from(run::EXIT_WARREN_FAILED as u8);
        }
    };
    // Failures of the local commands (run, up, images, bench) keep their
    // historical status 125; the API commands use the documented table.
    let failure = if cli.command.is_remote() {
        exit::GENERIC
    } else {
        run::EXIT_WARREN_FAILED
    };
    // `exec` and `shell` exit with the command's status, so their own
    // failures are all 125 (as `warren run`'s are), whatever the cause.
    let runs_a_command = matches!(cli.command, Commands::Exec(_) | Commands::Shell(_));
    let result = runtime.block_on(dispatch(cli));
    // Do not wait for a blocked stdin reader thread.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(error) if failure == exit::GENERIC => {
            exit::report(&error);
            let code = if error.chain().any(|c| c.is::<remote::UsageError>()) {
                exit::USAGE
            } else if runs_a_command {
                exit::WARREN_FAILED
            } else {
                exit::for_error(&error, failure)
            };
            ExitCode::from(code as u8)
        }
        Err(error) => {
            exit::report(&error);
            ExitCode::from(run::EXIT_WARREN_FAILED as u8)
        }
    }
}

impl Commands {
    /// Whether the command talks to the service (rather than running VMs
    /// in this process).
    fn is_remote(&self) -> bool {
        !matches!(
            self,
            Commands::Up(_) | Commands::Run(_) | Commands::Images { .. } | Commands::Bench { .. }
        )
    }
}

async fn dispatch(cli: Cli) -> Result<i32> {
    if cli.command.is_remote() {
        let client = remote::connect(cli.global.data_dir.as_deref())?;
        return match cli.command {
            Commands::Create(args) => remote::create(&client, args).await,
            Commands::Ls(args) => remote::list(&client, args).await,
            Commands::Get(args) => remote::get(&client, args).await,
            Commands::Exec(args) => exec::exec(&client, args).await,
            Commands::Shell(args) => exec::shell(&client, args).await,
            Commands::Cp(args) => cp::cp(&client, args).await,
            Commands::Logs(args) => remote::logs(&client, args).await,
            Commands::Timeout(args) => remote::timeout(&client, args).await,
            Commands::Network(args) => remote::network(&client, args).await,
            Commands::Port(args) => ports::port(&client, args).await,
            Commands::PortForward(args) => ports::port_forward(&client, args).await,
            Commands::Pause(args) => remote::pause(&client, args).await,
            Commands::Resume(args) => remote::resume(&client, args).await,
            Commands::Snapshot(args) => remote::snapshot(&client, args).await,
            Commands::Snapshots { command, out } => remote::snapshots(&client, command, out).await,
            Commands::Kill(args) => remote::kill(&client, args).await,
            Commands::Templates { out } => remote::templates(&client, out).await,
            Commands::Keys { command } => remote::keys(&client, command).await,
            Commands::Events(args) => remote::events(&client, args).await,
            Commands::Up(_)
            | Commands::Run(_)
            | Commands::Images { .. }
            | Commands::Bench { .. } => {
                unreachable!("local commands are dispatched below")
            }
        };
    }
    let config = cli.global.manager_config()?;
    match cli.command {
        Commands::Up(args) => up(config, args).await,
        Commands::Run(args) => {
            let manager = Manager::new(config).context("setting up warren")?;
            run::run(manager, args).await
        }
        Commands::Images { command } => {
            images(config, command.unwrap_or(ImagesCommand::List)).await
        }
        Commands::Bench { .. } => unreachable!("`warren bench` execs warren-bench in main"),
        _ => unreachable!("remote commands are dispatched above"),
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
            let progress = Arc::new(warren_cmdline::SpinnerProgress::new(verbose));
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

async fn up(mut config: ManagerConfig, args: UpArgs) -> Result<i32> {
    if !(args.reconcile_interval.is_finite() && args.reconcile_interval >= 0.1) {
        anyhow::bail!(
            "--reconcile-interval {} is not a number of seconds of at least 0.1",
            args.reconcile_interval
        );
    }
    if args.snapshot_merge_cap == 0 {
        anyhow::bail!("--snapshot-merge-cap must be at least 1");
    }
    // The service's VMs outlive it (a crash or `--on-shutdown keep`): the
    // next start re-attaches them.
    config.ephemeral = false;
    if args.no_network {
        config.network = None;
    } else if args.net_range.is_some() || args.dns_upstream.is_some() {
        let Some(network) = config.network.as_mut() else {
            anyhow::bail!(
                "--net-range and --dns-upstream configure sandbox networks, which WARREN_NET=off turns off"
            );
        };
        if let Some(range) = args.net_range {
            network.range = range;
        }
        if let Some(upstream) = args.dns_upstream {
            network.upstream = upstream;
        }
    }
    let on_shutdown = args.on_shutdown;
    let server = warren_server::ServerConfig {
        listen: args.listen,
        data_dir: config.data_dir.clone(),
        database_url: args.database_url,
        max_sandboxes_per_team: args.max_sandboxes,
        snapshot_merge_cap: args.snapshot_merge_cap,
        host_name: warren_server::config::host_name(),
        on_shutdown,
        reconcile_interval: std::time::Duration::from_secs_f64(args.reconcile_interval),
        domain: args
            .domain
            .unwrap_or_else(|| warren_server::port_host::PortDomain::localhost(args.listen.port())),
        manager: config,
    };
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!(
            "warren: shutting down ({})...",
            match on_shutdown {
                warren_server::config::ShutdownAction::Pause => "pausing sandboxes",
                warren_server::config::ShutdownAction::Keep => "leaving sandboxes running",
                warren_server::config::ShutdownAction::Kill => "stopping sandboxes",
            }
        );
    };
    warren_server::run(server, shutdown, |started| {
        println!("warren is up at {}", started.url);
        println!("  web console  {}/", started.url);
        println!("  API docs     {}/docs", started.url);
        match &started.new_admin_key {
            Some(key) => {
                println!("  admin key    {key}");
                println!(
                    "               (shown once; kept in {}, readable by root only)",
                    started.admin_key_path.display()
                );
            }
            None => println!("  admin key    in {}", started.admin_key_path.display()),
        }
        let recovered = &started.recovered;
        let summary = &recovered.summary;
        if !summary.attached.is_empty() || !summary.paused.is_empty() {
            println!(
                "  recovered    {} running sandbox(es) re-attached, {} paused",
                summary.attached.len(),
                summary.paused.len()
            );
        }
        if !summary.lost.is_empty() {
            println!(
                "  lost         {} sandbox(es) whose VM died while warren was down (no snapshot): {}",
                summary.lost.len(),
                summary.lost.join(", ")
            );
        }
        for moved in &summary.quarantined {
            println!("  quarantined  {}: {}", moved.id, moved.detail);
        }
        if !recovered.fixes.is_empty() {
            println!(
                "  reconciled   {} record(s) or leftover(s) fixed (see the log)",
                recovered.fixes.len()
            );
        }
        println!("Press Ctrl-C to stop.");
    })
    .await?;
    Ok(0)
}
