//! Commands over the REST API (through `warren-client`): sandboxes,
//! pause and resume, snapshots, templates, keys, events. `exec`, `shell` and `cp` live in their own
//! modules.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use warren_client::{
    Client, CreateKey, CreateSandbox, ListEvents, ListSandboxes, PauseResult, Sandbox,
    SandboxState, Snapshot,
};

use crate::exit;
use crate::output::{JsonFlag, Table, bytes, mib, pairs, print_json, relative, relative_opt};

/// Connects to the service: `WARREN_URL`/`WARREN_API_KEY`, the config
/// file, or the local `warren up` in `data_dir` (`--data-dir` /
/// `$WARREN_HOME`).
pub fn connect(data_dir: Option<&Path>) -> Result<Client> {
    Ok(match data_dir {
        Some(dir) => Client::discover_in(dir)?,
        None => Client::discover()?,
    })
}

/// Parses `KEY=VALUE` pairs (for `--env` and `--meta`).
pub fn parse_pairs(what: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(UsageError(format!("{what} {pair:?} is not KEY=VALUE")).into()),
        })
        .collect()
}

/// A usage error found after parsing (exit status 2, like clap's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Options of `warren create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Template to create from (see `warren templates`; default debian).
    /// A snapshot's name (see `warren snapshots`) makes a clone of the
    /// snapshotted sandbox; its CPUs and memory are the snapshot's.
    #[arg(long, short = 't')]
    pub template: Option<String>,
    /// Virtual CPUs (default 1).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest memory in MiB (default 512).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Seconds until the sandbox is killed, or paused with --auto-pause
    /// (default 300; 0 = never).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Environment variable for every process (KEY=VALUE), repeatable.
    #[arg(long, short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Label to filter by later (KEY=VALUE), repeatable.
    #[arg(long, short = 'm', value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// At the timeout, pause the sandbox (to disk) instead of killing it.
    #[arg(long)]
    pub auto_pause: bool,
    /// While paused, any operation on the sandbox (exec, cp, shell...)
    /// resumes it first.
    #[arg(long)]
    pub auto_resume: bool,
    /// If the VM is lost before its first pause (a crash), keep its disk on
    /// the host under `<data>/kept/` instead of deleting it.
    #[arg(long)]
    pub keep_disk: bool,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// A port anyone may open through warren with no key or token
    /// (repeatable; see `warren port`).
    #[arg(long, value_name = "PORT")]
    pub public_port: Vec<u16>,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// A network policy on the command line.
#[derive(Debug, clap::Args)]
pub struct NetworkArgs {
    /// No internet: only what --allow-out names is reachable.
    #[arg(long)]
    pub no_internet: bool,
    /// Always reachable: an IPv4 address, CIDR, domain or *.domain
    /// (repeatable; wins over --deny-out).
    #[arg(long, value_name = "RULE")]
    pub allow_out: Vec<String>,
    /// Blocked unless --allow-out names it: an address, CIDR, domain or
    /// *.domain (repeatable; 0.0.0.0/0 blocks everything else).
    #[arg(long, value_name = "RULE")]
    pub deny_out: Vec<String>,
}

impl NetworkArgs {
    fn given(&self) -> bool {
        self.no_internet || !self.allow_out.is_empty() || !self.deny_out.is_empty()
    }

    fn policy(&self) -> warren_client::NetworkPolicy {
        warren_client::NetworkPolicy {
            internet: !self.no_internet,
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
        }
    }
}

/// `warren create`: prints the new sandbox's id.
pub async fn create(client: &Client, args: CreateArgs) -> Result<i32> {
    let env = parse_pairs("--env", &args.env)?;
    let metadata = parse_pairs("--meta", &args.meta)?;
    let request = CreateSandbox {
        template: args.template.clone(),
        cpus: args.cpus,
        memory_mib: args.memory,
        timeout_secs: args.timeout,
        metadata: (!metadata.is_empty()).then_some(metadata),
        env: (!env.is_empty()).then_some(env),
        auto_pause: args.auto_pause.then_some(true),
        auto_resume: args.auto_resume.then_some(true),
        keep_disk: args.keep_disk.then_some(true),
        network: args.network.given().then(|| args.network.policy()),
        public_ports: (!args.public_port.is_empty()).then(|| args.public_port.clone()),
    };
    let spinner = spinner(format!(
        "creating a sandbox from template {}",
        args.template.as_deref().unwrap_or("debian")
    ));
    let created = client.create_sandbox(&request).await;
    spinner.finish_and_clear();
    let sandbox = created.context("creating the sandbox")?;
    if args.out.json {
        print_json(&sandbox)?;
    } else {
        println!("{}", sandbox.id);
    }
    Ok(exit::OK)
}

/// A spinner on stderr (hidden when stderr is not a terminal).
pub fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Options of `warren ls`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only sandboxes in this state: running, paused, stopped.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<SandboxState>,
    /// Only sandboxes with this label (KEY=VALUE), repeatable.
    #[arg(long, short = 'm', value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Print only the ids.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub out: JsonFlag,
}

fn parse_state(value: &str) -> Result<SandboxState, warren_client::UnknownState> {
    value.parse()
}

/// `warren ls`.
pub async fn list(client: &Client, args: ListArgs) -> Result<i32> {
    let filter = ListSandboxes {
        state: args.state,
        metadata: parse_pairs("--meta", &args.meta)?.into_iter().collect(),
    };
    let list = client
        .list_sandboxes(&filter)
        .await
        .context("listing sandboxes")?;
    if args.out.json {
        print_json(&list)?;
    } else if args.quiet {
        for sandbox in &list.sandboxes {
            println!("{}", sandbox.id);
        }
    } else {
        sandbox_table(&list.sandboxes).print();
    }
    Ok(exit::OK)
}

fn state_cell(sandbox: &Sandbox) -> String {
    match (&sandbox.state, &sandbox.stop_reason) {
        (SandboxState::Stopped, Some(reason)) => format!("stopped ({reason})"),
        (state, _) => state.to_string(),
    }
}

fn expiry_cell(sandbox: &Sandbox) -> String {
    match sandbox.state {
        SandboxState::Stopped => sandbox
            .stopped_at
            .map_or_else(|| "-".into(), |at| format!("stopped {}", relative(at))),
        _ => match sandbox.expires_at {
            Some(at) => relative(at),
            None => "never".into(),
        },
    }
}

fn sandbox_table(sandboxes: &[Sandbox]) -> Table {
    let mut table = Table::new(&[
        "ID", "TEMPLATE", "STATE", "CPUS", "MEMORY", "CREATED", "EXPIRES", "METADATA",
    ]);
    for sandbox in sandboxes {
        table.row(vec![
            sandbox.id.clone(),
            sandbox.template.clone(),
            state_cell(sandbox),
            sandbox.cpus.to_string(),
            mib(sandbox.memory_mib),
            relative(sandbox.created_at),
            expiry_cell(sandbox),
            pairs(&sandbox.metadata),
        ]);
    }
    table
}

/// Options of commands that take one sandbox id.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// Sandbox id (see `warren ls`).
    pub id: String,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren get`.
pub async fn get(client: &Client, args: IdArgs) -> Result<i32> {
    let sandbox = client
        .get_sandbox(&args.id)
        .await
        .with_context(|| format!("getting sandbox {}", args.id))?;
    if args.out.json {
        print_json(&sandbox)?;
    } else {
        print_sandbox(&sandbox);
    }
    Ok(exit::OK)
}

fn print_sandbox(sandbox: &Sandbox) {
    let time = |t: chrono::DateTime<chrono::Utc>| {
        format!("{} ({})", t.format("%Y-%m-%d %H:%M:%S UTC"), relative(t))
    };
    let mut table = Table::default();
    let mut line = |key: &str, value: String| table.row(vec![format!("{key}:"), value]);
    line("id", sandbox.id.clone());
    line("template", sandbox.template.clone());
    line("state", state_cell(sandbox));
    line("cpus", sandbox.cpus.to_string());
    line("memory", mib(sandbox.memory_mib));
    line("created", time(sandbox.created_at));
    line(
        "timeout",
        if sandbox.timeout_secs == 0 {
            "none".into()
        } else {
            format!("{} s", sandbox.timeout_secs)
        },
    );
    if let Some(at) = sandbox.expires_at {
        line("expires", time(at));
    }
    if let Some(at) = sandbox.stopped_at {
        line("stopped", time(at));
    }
    line("metadata", pairs(&sandbox.metadata));
    line("env", pairs(&sandbox.env));
    let yes_no = |on: bool| if on { "yes" } else { "no" }.to_string();
    line("auto pause", yes_no(sandbox.auto_pause));
    line("auto resume", yes_no(sandbox.auto_resume));
    if !sandbox.public_ports.is_empty() {
        let ports: Vec<String> = sandbox.public_ports.iter().map(u16::to_string).collect();
        line("public ports", ports.join(" "));
    }
    if let Some(domain) = &sandbox.domain {
        line(
            "ports at",
            format!("PORT-{}.{domain} (see `warren port`)", sandbox.id),
        );
    }
    table.print();
}

/// `warren pause`: says what the pause wrote.
pub async fn pause(client: &Client, args: IdArgs) -> Result<i32> {
    let spinner = spinner(format!("pausing sandbox {}", args.id));
    let paused = client.pause_sandbox(&args.id).await;
    spinner.finish_and_clear();
    let result = paused.with_context(|| format!("pausing sandbox {}", args.id))?;
    if args.out.json {
        print_json(&result)?;
    } else {
        println!("{}", pause_summary(&result));
    }
    Ok(exit::OK)
}

/// `paused sb-x: 123.4 MiB written (full snapshot), chain 1, 850 ms`.
fn pause_summary(result: &PauseResult) -> String {
    let kind = match (result.full, result.merged) {
        (true, _) => "full snapshot",
        (false, true) => "changes since the last pause, chain merged",
        (false, false) => "changes since the last pause",
    };
    format!(
        "paused {}: {} written ({kind}), chain {}, {} ms",
        result.sandbox.id,
        bytes(result.memory_bytes),
        result.chain_length,
        result.duration_ms
    )
}

/// `warren resume`.
pub async fn resume(client: &Client, args: IdArgs) -> Result<i32> {
    let spinner = spinner(format!("resuming sandbox {}", args.id));
    let resumed = client.resume_sandbox(&args.id).await;
    spinner.finish_and_clear();
    let sandbox = resumed.with_context(|| format!("resuming sandbox {}", args.id))?;
    if args.out.json {
        print_json(&sandbox)?;
    } else {
        println!("resumed {}: {}", sandbox.id, sandbox.state);
    }
    Ok(exit::OK)
}

/// Options of `warren snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Sandbox id (running or paused).
    pub id: String,
    /// Name of the new template (letters, digits, '-', '_', '.').
    pub name: String,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren snapshot`: a template from a sandbox.
pub async fn snapshot(client: &Client, args: SnapshotArgs) -> Result<i32> {
    let spinner = spinner(format!("snapshotting sandbox {} as {}", args.id, args.name));
    let taken = client.create_snapshot(&args.id, &args.name).await;
    spinner.finish_and_clear();
    let snapshot =
        taken.with_context(|| format!("taking snapshot {:?} of sandbox {}", args.name, args.id))?;
    if args.out.json {
        print_json(&snapshot)?;
    } else {
        println!(
            "snapshot {} of {}: {} of memory, {} of disk",
            snapshot.name,
            args.id,
            bytes(snapshot.memory_bytes),
            bytes(snapshot.disk_bytes)
        );
        // The hint is part of the human output, on the same stream, so it
        // stays after the result line however the two streams are captured.
        println!(
            "create clones with `warren create --template {}`",
            snapshot.name
        );
    }
    Ok(exit::OK)
}

/// `warren snapshots ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotsCommand {
    /// Your team's snapshot templates (the default).
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show one snapshot template.
    #[command(visible_alias = "inspect")]
    Get {
        /// Snapshot name.
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Delete a snapshot template (refused while sandboxes created from
    /// it exist).
    #[command(visible_alias = "delete")]
    Rm {
        /// Snapshot name.
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// Runs `warren snapshots [ls|get|rm]`.
pub async fn snapshots(
    client: &Client,
    command: Option<SnapshotsCommand>,
    out: JsonFlag,
) -> Result<i32> {
    match command.unwrap_or(SnapshotsCommand::Ls { out }) {
        SnapshotsCommand::Ls { out: ls_out } => {
            let list = client.list_snapshots().await.context("listing snapshots")?;
            if out.json || ls_out.json {
                print_json(&list)?;
            } else {
                snapshot_table(&list.snapshots).print();
            }
        }
        SnapshotsCommand::Get { name, out: get_out } => {
            let snapshot = client
                .get_snapshot(&name)
                .await
                .with_context(|| format!("getting snapshot {name:?}"))?;
            if out.json || get_out.json {
                print_json(&snapshot)?;
            } else {
                print_snapshot(&snapshot);
            }
        }
        SnapshotsCommand::Rm { name, out: rm_out } => {
            client
                .delete_snapshot(&name)
                .await
                .with_context(|| format!("deleting snapshot {name:?}"))?;
            if out.json || rm_out.json {
                print_json(&serde_json::json!({ "name": name, "deleted": true }))?;
            } else {
                println!("{name}");
            }
        }
    }
    Ok(exit::OK)
}

fn used_by_cell(snapshot: &Snapshot) -> String {
    if snapshot.used_by.is_empty() {
        "-".into()
    } else {
        snapshot.used_by.join(",")
    }
}

fn snapshot_table(snapshots: &[Snapshot]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "CPUS",
        "MEMORY",
        "MEMORY ON DISK",
        "DISK",
        "USED BY",
        "CREATED",
    ]);
    for snapshot in snapshots {
        table.row(vec![
            snapshot.name.clone(),
            snapshot.cpus.to_string(),
            mib(snapshot.memory_mib),
            bytes(snapshot.memory_bytes),
            bytes(snapshot.disk_bytes),
            used_by_cell(snapshot),
            relative(snapshot.created_at),
        ]);
    }
    table
}

fn print_snapshot(snapshot: &Snapshot) {
    let mut table = Table::default();
    let mut line = |key: &str, value: String| table.row(vec![format!("{key}:"), value]);
    line("name", snapshot.name.clone());
    line(
        "source",
        snapshot
            .source_sandbox
            .clone()
            .unwrap_or_else(|| "-".into()),
    );
    line("cpus", snapshot.cpus.to_string());
    line("memory", mib(snapshot.memory_mib));
    line("memory on disk", bytes(snapshot.memory_bytes));
    line("disk", bytes(snapshot.disk_bytes));
    line("used by", used_by_cell(snapshot));
    line(
        "created",
        format!(
            "{} ({})",
            snapshot.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            relative(snapshot.created_at)
        ),
    );
    table.print();
}

/// Options of `warren kill`.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Sandbox ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren kill`: kills every sandbox named; reports each failure and
/// exits with the status of the first.
pub async fn kill(client: &Client, args: KillArgs) -> Result<i32> {
    let mut status = exit::OK;
    let mut killed = Vec::new();
    for id in &args.ids {
        let result = async {
            client.delete_sandbox(id).await?;
            if args.out.json {
                killed.push(client.get_sandbox(id).await?);
            }
            anyhow::Ok(())
        }
        .await
        .with_context(|| format!("killing sandbox {id}"));
        match result {
            Ok(()) if !args.out.json => println!("{id}"),
            Ok(()) => {}
            Err(error) => {
                exit::report(&error);
                if status == exit::OK {
                    status = exit::for_error(&error, exit::GENERIC);
                }
            }
        }
    }
    if args.out.json {
        print_json(&warren_client::SandboxList { sandboxes: killed })?;
    }
    Ok(status)
}

/// Options of `warren timeout`.
#[derive(Debug, clap::Args)]
pub struct TimeoutArgs {
    /// Sandbox id.
    pub id: String,
    /// Seconds from now until the sandbox is killed (0 = never).
    pub seconds: u64,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren network`.
#[derive(Debug, clap::Args)]
pub struct NetworkCommandArgs {
    /// Sandbox id.
    pub id: String,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren network ID [--no-internet] [--allow-out R]... [--deny-out R]...`.
pub async fn network(client: &Client, args: NetworkCommandArgs) -> Result<i32> {
    let policy = if args.network.given() {
        client
            .set_network(&args.id, &args.network.policy())
            .await
            .with_context(|| format!("changing the network of sandbox {}", args.id))?
    } else {
        client
            .network(&args.id)
            .await
            .with_context(|| format!("getting the network of sandbox {}", args.id))?
    };
    if args.out.json {
        print_json(&policy)?;
    } else {
        let list = |rules: &[String]| {
            if rules.is_empty() {
                "-".to_string()
            } else {
                rules.join(" ")
            }
        };
        println!("internet   {}", if policy.internet { "on" } else { "off" });
        println!("allow_out  {}", list(&policy.allow_out));
        println!("deny_out   {}", list(&policy.deny_out));
    }
    Ok(0)
}

/// `warren timeout`.
pub async fn timeout(client: &Client, args: TimeoutArgs) -> Result<i32> {
    let sandbox = client
        .set_timeout(&args.id, args.seconds)
        .await
        .with_context(|| format!("setting the timeout of sandbox {}", args.id))?;
    if args.out.json {
        print_json(&sandbox)?;
    } else {
        match sandbox.expires_at {
            Some(at) => println!(
                "{} expires {} ({})",
                sandbox.id,
                relative(at),
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => println!("{} has no timeout", sandbox.id),
        }
    }
    Ok(exit::OK)
}

/// Options of `warren logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Sandbox id.
    pub id: String,
    /// Show at most this many bytes from the end (the service's default
    /// is 64 KiB).
    #[arg(long, value_name = "BYTES")]
    pub tail: Option<u64>,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren logs`: the guest's serial console.
pub async fn logs(client: &Client, args: LogsArgs) -> Result<i32> {
    let logs = client
        .logs(&args.id, args.tail)
        .await
        .with_context(|| format!("reading the console log of sandbox {}", args.id))?;
    if args.out.json {
        print_json(&serde_json::json!({
            "id": args.id,
            "logs": String::from_utf8_lossy(&logs),
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(&logs)?;
        out.flush()?;
    }
    Ok(exit::OK)
}

/// `warren templates`.
pub async fn templates(client: &Client, out: JsonFlag) -> Result<i32> {
    let list = client.list_templates().await.context("listing templates")?;
    if out.json {
        print_json(&list)?;
        return Ok(exit::OK);
    }
    let mut table = Table::new(&["ID", "KIND", "CPUS", "MEMORY", "DESCRIPTION"]);
    for template in &list.templates {
        table.row(vec![
            template.id.clone(),
            template.kind.clone(),
            template.cpus.map_or("-".into(), |c| c.to_string()),
            template.memory_mib.map_or("-".into(), mib),
            template.description.clone(),
        ]);
    }
    table.print();
    Ok(exit::OK)
}

/// `warren keys ...`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// The keys of your team (without their secrets).
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Create a key; prints it once (store it: it cannot be shown again).
    Create {
        /// A label for the key.
        name: String,
        /// Team of the new key (admin keys only; the team is created if
        /// new). Default: your team.
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Revoke a key; it stops working at once.
    #[command(visible_alias = "rm")]
    Revoke {
        /// Key id (`key_...`, see `warren keys ls`).
        id: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// Runs `warren keys ...`.
pub async fn keys(client: &Client, command: KeysCommand) -> Result<i32> {
    match command {
        KeysCommand::Ls { out } => {
            let list = client.list_keys().await.context("listing keys")?;
            if out.json {
                print_json(&list)?;
                return Ok(exit::OK);
            }
            let mut table = Table::new(&[
                "ID",
                "NAME",
                "TEAM",
                "PREFIX",
                "CREATED",
                "LAST USED",
                "REVOKED",
            ]);
            for key in &list.keys {
                table.row(vec![
                    key.id.clone(),
                    key.name.clone(),
                    key.team.clone(),
                    key.prefix.clone(),
                    relative(key.created_at),
                    relative_opt(key.last_used_at),
                    relative_opt(key.revoked_at),
                ]);
            }
            table.print();
        }
        KeysCommand::Create { name, team, out } => {
            let created = client
                .create_key(&CreateKey { name, team })
                .await
                .context("creating a key")?;
            if out.json {
                print_json(&created)?;
            } else {
                println!("{}", created.key);
                eprintln!(
                    "created key {} ({:?}, team {}); it is shown only now, so store it",
                    created.id, created.name, created.team
                );
            }
        }
        KeysCommand::Revoke { id, out } => {
            client
                .revoke_key(&id)
                .await
                .with_context(|| format!("revoking key {id}"))?;
            if out.json {
                print_json(&serde_json::json!({ "id": id, "revoked": true }))?;
            } else {
                println!("{id}");
            }
        }
    }
    Ok(exit::OK)
}

/// Options of `warren events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only events of this sandbox.
    #[arg(long)]
    pub sandbox: Option<String>,
    /// At most this many (newest first; the service allows up to 1000).
    #[arg(long, short = 'n')]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren events`.
pub async fn events(client: &Client, args: EventsArgs) -> Result<i32> {
    if args.limit == Some(0) {
        bail!(UsageError("--limit must be at least 1".into()));
    }
    let list = client
        .list_events(&ListEvents {
            sandbox_id: args.sandbox,
            limit: args.limit,
        })
        .await
        .context("listing events")?;
    if args.out.json {
        print_json(&list)?;
        return Ok(exit::OK);
    }
    let mut table = Table::new(&["AT", "KIND", "SANDBOX", "ACTOR", "DETAIL"]);
    for event in &list.events {
        let detail = match &event.detail {
            serde_json::Value::Object(map) if map.is_empty() => "-".into(),
            serde_json::Value::Null => "-".into(),
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        table.row(vec![
            relative(event.at),
            event.kind.clone(),
            event.sandbox_id.clone().unwrap_or_else(|| "-".into()),
            event.actor.clone(),
            detail,
        ]);
    }
    table.print();
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse_and_refuse_bad_ones() {
        let parsed = parse_pairs("--meta", &["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(parsed["a"], "1");
        assert_eq!(parsed["b"], "x=y");
        assert_eq!(parsed["c"], "");
        let error = parse_pairs("--meta", &["=v".into()]).unwrap_err();
        assert!(error.downcast_ref::<UsageError>().is_some());
        assert!(parse_pairs("--env", &["novalue".into()]).is_err());
    }

    fn sandbox(id: &str) -> Sandbox {
        serde_json::from_value(serde_json::json!({
            "id": id, "template": "debian", "state": "paused", "cpus": 1,
            "memory_mib": 512, "timeout_secs": 0, "created_at": "2026-01-01T00:00:00Z",
            "expires_at": null, "stopped_at": null, "stop_reason": null
        }))
        .unwrap()
    }

    #[test]
    fn pause_summaries_say_what_was_written() {
        let mut result = PauseResult {
            sandbox: sandbox("sb-x"),
            memory_bytes: 129_394_278,
            full: true,
            chain_length: 1,
            merged: false,
            duration_ms: 850,
        };
        assert_eq!(
            pause_summary(&result),
            "paused sb-x: 123.4 MiB written (full snapshot), chain 1, 850 ms"
        );
        result.full = false;
        result.chain_length = 3;
        result.memory_bytes = 4096;
        assert_eq!(
            pause_summary(&result),
            "paused sb-x: 4.0 KiB written (changes since the last pause), chain 3, 850 ms"
        );
        result.merged = true;
        result.chain_length = 1;
        assert!(pause_summary(&result).contains("chain merged), chain 1"));
    }
}
