//! `warren bench faults`: fault injection against a real `warren up`.
//!
//! The harness starts its own `warren up` child (the `warren` that ran
//! `warren bench`, see `main.rs`) in a fresh data directory and drives a
//! small population of sandboxes through the REST API with seeded random
//! operations. While an operation is in flight it kills the service
//! (`kill -9`) or one sandbox's QEMU, brings the service back, and checks
//! from the API *and* from the host (`/proc`, mounts, the data directory)
//! that nothing acknowledged was lost and that nothing was left behind.
//! Rarer faults (a corrupt snapshot header, truncated memory, a hung VM)
//! run once per run, and a load phase measures the service under many
//! concurrent clients.
//!
//! The result is counts of violations, so CI can require zeros: the run
//! exits non-zero when anything was lost or left behind.
//!
//! The model of what must hold is deliberately conservative about what an
//! interrupted operation may have done (either outcome is accepted) and
//! strict about everything that was acknowledged before the fault.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warren_client::{Client, CreateSandbox, ExecRequest, Sandbox, SandboxState, UploadOptions};
use warren_testkit::HostProcess;

use crate::bench::{ms, percentile, round2};

/// Options of `warren bench faults`.
#[derive(Debug, clap::Args)]
pub struct FaultsBenchArgs {
    /// Print one JSON object on stdout (progress always goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Faults injected by the main loop, one per iteration [default: 12,
    /// or 200 with --soak].
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Seed of every random choice [default: from the clock]; it is
    /// printed so that a failing run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Long run: 200 faults and a load phase of 16 sandboxes x 200
    /// clients x 300 s (each overridable by its own flag).
    #[arg(long)]
    pub soak: bool,
    /// Seconds of the load phase (0 skips it) [default: 20, soak 300].
    #[arg(long)]
    pub load_seconds: Option<u64>,
    /// Concurrent API clients of the load phase [default: 20, soak 200].
    #[arg(long)]
    pub load_clients: Option<usize>,
    /// Running sandboxes of the load phase [default: 2, soak 16].
    #[arg(long)]
    pub load_sandboxes: Option<usize>,
    /// Image of the sandboxes.
    #[arg(long, default_value = "tiny")]
    pub image: String,
    /// Guest memory of the sandboxes, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
}

/// Where the memory blob lives in the guest: tmpfs, that is guest RAM, so
/// its bytes surviving a pause and resume prove that memory survived.
const MEM_BLOB: &str = "/dev/shm/wf-blob";
/// The disk file: on the root disk, so it proves the disk layer survived.
const DISK_FILE: &str = "/root/wf-data";
const MEM_BLOB_BYTES: usize = 1 << 20;
const DISK_FILE_BYTES: usize = 256 << 10;
/// Paths of the acknowledged-write operation (disk and RAM file systems).
const WRITE_PATHS: [&str; 6] = [
    "/root/wf-w0",
    "/root/wf-w1",
    "/root/wf-w2",
    "/tmp/wf-w3",
    "/tmp/wf-w4",
    "/dev/shm/wf-w5",
];
/// Metadata key naming the create request a sandbox came from, so a
/// sandbox whose create was interrupted can still be found.
const TAG_KEY: &str = "warren-faults";
const MIN_POPULATION: usize = 2;
/// Creates stop at this population; clones may add one more.
const MAX_CREATED: usize = 3;
const MAX_POPULATION: usize = 4;
const MAX_TEMPLATES: usize = 2;
/// `--snapshot-merge-cap` given to the service, low so merges happen often.
const MERGE_CAP: usize = 3;
/// `--reconcile-interval` given to the service, seconds.
const RECONCILE_INTERVAL_SECS: u64 = 2;

/// Limit of one lifecycle or data request (TCG is slow, but not this slow).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Limit of a create (a cold boot under TCG takes 5-10 s).
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an operation may still run once its fault was injected.
const OP_WAIT: Duration = Duration::from_secs(360);
/// How long `warren up` may take to answer `/health` after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a pause of a VM whose QEMU is stopped (SIGSTOP) may take to
/// fail: the service's own timeouts (60 s to flush the guest, 15 s per QMP
/// command) plus a margin.
const HUNG_VM_BOUND: Duration = Duration::from_secs(90);
/// A request to the service while a VM hangs must answer within this.
const SERVING_BOUND: Duration = Duration::from_secs(10);
/// How long the service may take to notice that a VM was killed.
const VM_DEATH_NOTICE: Duration = Duration::from_secs(30);
/// Per-request limit of the load phase.
const LOAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Minimum spacing of the load phase's pause/resume cycles.
const CHURN_SPACING_MS: u64 = 3000;

/// Runs the fault-injection harness, prints its report (JSON with
/// `--json`, a summary otherwise) and returns the exit status: 0 only when
/// no violation was found.
pub async fn faults(
    config: warren_sandbox::ManagerConfig,
    warren: &Path,
    accel: &str,
    args: FaultsBenchArgs,
) -> Result<i32> {
    let plan = Plan::new(&args);
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!(
        "warren bench faults: seed {seed} ({} mode: {} iterations, load {} sandboxes x {} clients x {} s); repeat with --seed {seed}",
        if plan.soak { "soak" } else { "bounded" },
        plan.iterations,
        plan.load_sandboxes,
        plan.load_clients,
        plan.load_seconds
    );
    let image_cache = config
        .image_cache
        .clone()
        .unwrap_or_else(|| config.data_dir.join("images"));
    let service = Service::new(warren, accel, image_cache)?;
    eprintln!(
        "warren bench faults: data directory {}",
        service.home.display()
    );
    let started = Instant::now();
    let mut harness = Harness::new(service, seed, plan, &args)?;
    let outcome = {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            result = harness.run() => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
            _ = term.recv() => Err(anyhow!("interrupted (SIGTERM)")),
        }
    };
    if let Err(error) = outcome {
        let text = format!("{error:#}");
        eprintln!("warren bench faults: stopped early: {text}");
        harness.report.fatal = Some(text);
    }
    {
        let model = harness.model.lock().expect("model lock");
        harness.report.pauses_acknowledged = model.pauses_acknowledged;
        harness.report.merges_observed = model.merges_observed;
        harness.report.longest_chain = model.longest_chain;
    }
    let ok = harness.report.ok();
    if !ok {
        let kept = PathBuf::from(format!("/tmp/warren-bench-faults-{seed}.log"));
        harness.report.service_log = Some(kept.clone());
        harness.service.keep_log = Some(kept);
    }
    let report = harness
        .report
        .to_json(seed, &harness.plan, &args, started.elapsed());
    // Stops whatever still runs and removes the data directory.
    drop(harness);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(if ok { 0 } else { 1 })
}

fn print_summary(report: &Value) {
    let field = |name: &str| report.get(name).cloned().unwrap_or(Value::Null);
    println!("warren bench faults (seed {})", field("seed"));
    for name in [
        "iterations",
        "faults_injected",
        "snapshots_lost",
        "acknowledged_writes_lost",
        "sandboxes_lost",
        "unexpected_states",
        "orphans_after_reconcile",
        "orphans_at_exit",
        "extra_fault_failures",
        "operations_hung",
        "operations_failed_without_fault",
        "load_requests",
        "load_errors",
        "load_conflicts",
        "load_p50_ms",
        "load_p99_ms",
        "skipped",
        "duration_s",
    ] {
        println!("  {name:<32} {}", field(name));
    }
    if let Some(violations) = report["violations"].as_array()
        && !violations.is_empty()
    {
        println!("violations:");
        for violation in violations {
            println!("  - {}", violation.as_str().unwrap_or_default());
        }
    }
    println!(
        "{}",
        if report["ok"] == json!(true) {
            "ok"
        } else {
            "FAILED"
        }
    );
}

/// Sizes of a run, from the flags and the mode.
#[derive(Debug, Clone)]
struct Plan {
    soak: bool,
    iterations: usize,
    load_seconds: u64,
    load_clients: usize,
    load_sandboxes: usize,
}

impl Plan {
    fn new(args: &FaultsBenchArgs) -> Self {
        let (iterations, seconds, clients, sandboxes) = if args.soak {
            (200, 300, 200, 16)
        } else {
            (12, 20, 20, 2)
        };
        Self {
            soak: args.soak,
            iterations: args.iterations.unwrap_or(iterations),
            load_seconds: args.load_seconds.unwrap_or(seconds),
            load_clients: args.load_clients.unwrap_or(clients),
            load_sandboxes: args.load_sandboxes.unwrap_or(sandboxes),
        }
    }
}

// ---- the service child ----------------------------------------------------

/// The `warren up` under test: a child process in its own data directory.
/// Dropping it ends the service and everything of that directory (VMs,
/// memory daemons, mounts) and removes the directory, also on error or
/// interruption.
struct Service {
    home: PathBuf,
    url: String,
    /// How every start runs: the same directory, port and flags.
    command: warren_testkit::UpCommand,
    up: Option<warren_testkit::WarrenUp>,
    key: String,
    starts: u32,
    /// Where to copy the service's log before the directory goes.
    keep_log: Option<PathBuf>,
}

impl Service {
    fn new(warren: &Path, accel: &str, image_cache: PathBuf) -> Result<Self> {
        let home = warren_testkit::short_tempdir("wf-")
            .context("creating the data directory under /tmp")?
            // Removed by our Drop, after everything of it has ended.
            .keep();
        let merge_cap = MERGE_CAP.to_string();
        let interval = RECONCILE_INTERVAL_SECS.to_string();
        let command = warren_testkit::UpCommand::new(warren, &home)?
            .global_args(["--accel", accel])
            .args([
                "--on-shutdown",
                "kill",
                "--reconcile-interval",
                interval.as_str(),
                "--snapshot-merge-cap",
                merge_cap.as_str(),
            ])
            .image_cache(image_cache)
            .env("WARREN_MAX_SANDBOXES", "1000")
            .log_header("===== warren bench faults: start {n} =====")
            // Its own process group: a Ctrl-C meant for the harness must
            // not reach the service before the harness has cleaned up.
            .own_process_group();
        Ok(Self {
            url: command.url(),
            home,
            command,
            up: None,
            key: String::new(),
            starts: 0,
            keep_log: None,
        })
    }

    /// Starts `warren up` (again) on the same directory and port.
    fn spawn(&mut self) -> Result<()> {
        if self.up.is_some() {
            bail!("warren up is already running");
        }
        self.starts += 1;
        let up = self
            .command
            .spawn_numbered(self.starts)
            .context("starting `warren up`")?;
        self.up = Some(up);
        Ok(())
    }

    /// Waits until the service answers `/health`; returns a client of it
    /// with the admin key.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<Client> {
        let Some(up) = self.up.as_mut() else {
            bail!("`warren up` is not running");
        };
        let ready = tokio::task::block_in_place(|| up.wait_ready(timeout));
        match ready {
            Ok(key) => {
                self.key = key;
                self.client()
            }
            Err(error) => {
                if matches!(error, warren_testkit::UpError::Exited { .. }) {
                    self.up = None;
                }
                Err(error.into())
            }
        }
    }

    /// A fresh client (fresh connections: pooled ones die with a killed
    /// service).
    fn client(&self) -> Result<Client> {
        Client::new(&self.url, self.key.clone()).context("building an API client")
    }

    /// `kill -9` of the service.
    fn kill9(&mut self) {
        if let Some(mut up) = self.up.take() {
            up.kill();
        }
    }

    /// SIGTERM, then waits up to `timeout`; SIGKILL after that. Returns
    /// whether it exited on its own.
    fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut up) = self.up.take() else {
            return true;
        };
        !matches!(up.terminate(timeout), warren_testkit::Stopped::Killed(_))
    }

    fn log_path(&self) -> PathBuf {
        self.home.join(warren_testkit::up::LOG_FILE)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
        // Everything of this directory: VMs, memory daemons, qemu-img.
        for _ in 0..20 {
            let procs = processes_of(&self.home);
            if procs.is_empty() {
                break;
            }
            for process in procs {
                signal(process.pid as i32, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut mounts = warren_testkit::mounts_under(&self.home);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(kept) = &self.keep_log {
            let _ = std::fs::copy(self.log_path(), kept);
        }
        if let Err(error) = std::fs::remove_dir_all(&self.home) {
            eprintln!(
                "warren bench faults: could not remove {}: {error}",
                self.home.display()
            );
        }
    }
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
}

// ---- the host seen from /proc ---------------------------------------------

fn home_needle(home: &Path) -> String {
    format!("{}/", home.display())
}

/// Processes whose command line mentions the data directory.
fn processes_of(home: &Path) -> Vec<HostProcess> {
    warren_testkit::processes_mentioning(Path::new(&home_needle(home)))
}

/// The sandbox a path under `<home>/sandboxes/` belongs to.
fn sandbox_of_path(home: &Path, path: &str) -> Option<String> {
    let prefix = format!("{}sandboxes/", home_needle(home));
    path.strip_prefix(&prefix)
        .and_then(|rest| rest.split('/').next())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// QEMU processes of this data directory, with the sandbox id from their
/// `-name warren-<id>`.
fn vm_processes(home: &Path) -> Vec<(i32, String)> {
    processes_of(home)
        .into_iter()
        .filter(|p| p.program().starts_with("qemu-system"))
        .map(|p| {
            let id = p
                .arg_after("-name")
                .map(|name| {
                    let name = name.trim_start_matches("guest=");
                    let name = name.split(',').next().unwrap_or(name);
                    name.trim_start_matches("warren-").to_string()
                })
                .unwrap_or_else(|| format!("(no -name: {})", p.argv.join(" ")));
            (p.pid as i32, id)
        })
        .collect()
}

/// `warren-memfs` processes of this data directory, with the sandbox their
/// `--mount` belongs to.
/// The sandbox networks the service of `home` holds: `(namespace, sandbox
/// id)` for each slot claimed under its data directory (a claim stands for
/// its namespace, veth, TAP and rules, which are made and removed with it).
fn networks_of(home: &Path) -> Vec<(String, String)> {
    let owner = home.display().to_string();
    warren_net::Claims::new(warren_net::DEFAULT_CLAIMS_DIR)
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, claim)| claim.owner == owner)
        .map(|(slot, claim)| {
            (
                format!("{}{slot}", warren_net::layout::NETNS_PREFIX),
                claim.sandbox,
            )
        })
        .collect()
}

fn memfs_processes(home: &Path) -> Vec<(i32, String)> {
    processes_of(home)
        .into_iter()
        .filter(|p| p.program() == "warren-memfs")
        .map(|p| {
            let id = p
                .arg_after("--mount")
                .and_then(|m| sandbox_of_path(home, m))
                .unwrap_or_else(|| format!("(mount outside sandboxes/: {})", p.argv.join(" ")));
            (p.pid as i32, id)
        })
        .collect()
}

// ---- what was acknowledged ------------------------------------------------

type Sha = [u8; 32];
/// Acknowledged file contents of a sandbox: path -> sha256.
type Files = BTreeMap<String, Sha>;
/// Contents a sandbox may show: per path, every acceptable content
/// (`None`: the file does not exist).
type Candidate = BTreeMap<String, Vec<Option<Sha>>>;

fn sha(data: &[u8]) -> Sha {
    Sha256::digest(data).into()
}

fn short(sha: &Option<Sha>) -> String {
    match sha {
        Some(sha) => sha[..6].iter().map(|b| format!("{b:02x}")).collect(),
        None => "(absent)".to_string(),
    }
}

/// State the harness knows a sandbox to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Running,
    Paused,
}

/// A request sent but not (yet) acknowledged: its effect is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Exec,
    Write { path: String, sha: Sha },
    Pause,
    Resume,
    Snapshot,
    Delete,
}

/// One sandbox of the population.
#[derive(Debug, Clone)]
struct Tracked {
    id: String,
    state: Known,
    /// What it holds, as acknowledged (with a paused one: its snapshot).
    files: Files,
    /// What its last acknowledged snapshot holds: where it falls back to if
    /// its VM dies. `None`: never paused.
    snapshot: Option<Files>,
    /// For a clone: the template's contents (a fallback the service may
    /// use, since the clone runs on the template's chain).
    clone_base: Option<Files>,
    pending: Option<Pending>,
}

impl Tracked {
    fn new(id: String, files: Files, clone_base: Option<Files>) -> Self {
        Self {
            id,
            state: Known::Running,
            files,
            snapshot: None,
            clone_base,
            pending: None,
        }
    }
}

/// An interrupted create or clone: its sandbox may exist.
#[derive(Debug, Clone)]
struct PendingCreate {
    tag: String,
    template: Option<String>,
}

/// Everything acknowledged so far, updated by operations as their answers
/// arrive (operations run in tasks, concurrently with the fault).
#[derive(Debug, Default)]
struct Model {
    sandboxes: BTreeMap<String, Tracked>,
    templates: BTreeMap<String, Files>,
    /// Sandboxes that are gone for good (deleted, stopped): they must never
    /// run or be paused again.
    gone: BTreeSet<String>,
    pending_create: Option<PendingCreate>,
    pending_template: Option<(String, Files)>,
    pending_template_delete: Option<String>,
    pauses_acknowledged: u64,
    merges_observed: u64,
    longest_chain: u32,
}

impl Model {
    fn ids_in(&self, state: Known) -> Vec<String> {
        self.sandboxes
            .values()
            .filter(|t| t.state == state)
            .map(|t| t.id.clone())
            .collect()
    }

    fn set_pending(&mut self, id: &str, pending: Option<Pending>) {
        if let Some(t) = self.sandboxes.get_mut(id) {
            t.pending = pending;
        }
    }

    fn forget(&mut self, id: &str) {
        self.sandboxes.remove(id);
        self.gone.insert(id.to_string());
    }
}

// ---- operations -------------------------------------------------------------

/// A failed request.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    /// HTTP status, when the service answered.
    status: Option<u16>,
}

impl Failure {
    /// The service answered 4xx: the request was refused, nothing was done.
    fn refused(&self) -> bool {
        self.status.is_some_and(|s| (400..500).contains(&s))
    }

    fn conflict(&self) -> bool {
        self.status == Some(409)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A request with a time limit; errors become [`Failure`]s.
async fn call<T>(
    limit: Duration,
    what: &str,
    request: impl Future<Output = Result<T, warren_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Failure {
            message: format!("{what}: {error}"),
            status: error.status(),
        }),
        Err(_) => Err(Failure {
            message: format!("{what}: no answer within {} s", limit.as_secs()),
            status: None,
        }),
    }
}

/// An operation of the main loop, with its random data chosen up front
/// (so the seed decides it, not the timing).
#[derive(Debug, Clone)]
enum Op {
    Create {
        tag: String,
        blob: Bytes,
        disk: Bytes,
    },
    Clone {
        tag: String,
        template: String,
    },
    Exec {
        id: String,
    },
    Write {
        id: String,
        path: String,
        data: Bytes,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Merge {
        id: String,
        blobs: Vec<Bytes>,
    },
    Snapshot {
        id: String,
        name: String,
    },
    Delete {
        id: String,
    },
    DeleteSnapshot {
        name: String,
    },
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Clone { .. } => "clone",
            Op::Exec { .. } => "exec",
            Op::Write { .. } => "write",
            Op::Pause { .. } => "pause",
            Op::Resume { .. } => "resume",
            Op::Merge { .. } => "merge",
            Op::Snapshot { .. } => "snapshot",
            Op::Delete { .. } => "delete",
            Op::DeleteSnapshot { .. } => "delete_snapshot",
        }
    }

    fn target(&self) -> Option<&str> {
        match self {
            Op::Exec { id }
            | Op::Write { id, .. }
            | Op::Pause { id }
            | Op::Resume { id }
            | Op::Merge { id, .. }
            | Op::Snapshot { id, .. }
            | Op::Delete { id } => Some(id),
            Op::Create { .. } | Op::Clone { .. } | Op::DeleteSnapshot { .. } => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Op::Create { .. } => "create".into(),
            Op::Clone { template, .. } => format!("clone of {template}"),
            Op::Write { id, path, .. } => format!("write {path} in {id}"),
            Op::Snapshot { id, name } => format!("snapshot {name} of {id}"),
            Op::DeleteSnapshot { name } => format!("delete snapshot {name}"),
            other => format!("{} {}", other.kind(), other.target().unwrap_or_default()),
        }
    }
}

/// Typical duration of each operation under TCG, seconds (the first
/// guess; refined by what the run measures).
fn typical_seconds(kind: &str) -> f64 {
    match kind {
        "create" => 8.0,
        "clone" => 1.5,
        "exec" | "write" => 0.2,
        "pause" => 0.5,
        "resume" => 0.7,
        "merge" => 3.0,
        "snapshot" => 1.5,
        "delete" => 0.3,
        _ => 0.2,
    }
}

/// Issues requests and records their acknowledgments in the model.
#[derive(Clone)]
struct Ops {
    client: Client,
    model: Arc<Mutex<Model>>,
    image: String,
    memory: u32,
}

impl Ops {
    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().expect("model lock")
    }

    /// Marks `id` as having `pending` in flight, runs `request`, and
    /// clears the mark when the answer is definite (success, or a refusal).
    async fn step<T>(
        &self,
        id: &str,
        pending: Pending,
        limit: Duration,
        what: &str,
        request: impl Future<Output = Result<T, warren_client::Error>>,
    ) -> Result<T, Failure> {
        self.model().set_pending(id, Some(pending));
        let result = call(limit, what, request).await;
        if matches!(&result, Err(f) if f.refused()) {
            self.model().set_pending(id, None);
        }
        result
    }

    async fn create(&self, tag: &str, template: Option<&str>) -> Result<String, Failure> {
        let request = CreateSandbox {
            template: Some(template.unwrap_or(&self.image).to_string()),
            memory_mib: template.is_none().then_some(self.memory),
            timeout_secs: Some(0),
            metadata: Some(BTreeMap::from([(TAG_KEY.to_string(), tag.to_string())])),
            ..CreateSandbox::default()
        };
        self.model().pending_create = Some(PendingCreate {
            tag: tag.to_string(),
            template: template.map(str::to_string),
        });
        let result = call(
            CREATE_TIMEOUT,
            "POST /v1/sandboxes",
            self.client.create_sandbox(&request),
        )
        .await;
        let mut model = self.model();
        match &result {
            Ok(sandbox) => {
                model.pending_create = None;
                let base = template.and_then(|t| model.templates.get(t).cloned());
                let files = base.clone().unwrap_or_default();
                model.sandboxes.insert(
                    sandbox.id.clone(),
                    Tracked::new(sandbox.id.clone(), files, base),
                );
            }
            Err(failure) if failure.refused() => model.pending_create = None,
            Err(_) => {}
        }
        result.map(|s| s.id)
    }

    async fn write(&self, id: &str, path: &str, data: Bytes) -> Result<(), Failure> {
        let digest = sha(&data);
        let options = UploadOptions {
            create_parents: true,
            ..UploadOptions::default()
        };
        let pending = Pending::Write {
            path: path.to_string(),
            sha: digest,
        };
        self.step(
            id,
            pending,
            REQUEST_TIMEOUT,
            &format!("PUT {path} in {id}"),
            self.client.write_file(id, path, data, &options),
        )
        .await?;
        let mut model = self.model();
        if let Some(t) = model.sandboxes.get_mut(id) {
            t.files.insert(path.to_string(), digest);
            t.pending = None;
        }
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<warren_client::PauseResult, Failure> {
        let result = self
            .step(
                id,
                Pending::Pause,
                REQUEST_TIMEOUT,
                &format!("pause {id}"),
                self.client.pause_sandbox(id),
            )
            .await?;
        let mut model = self.model();
        model.pauses_acknowledged += 1;
        if result.merged {
            model.merges_observed += 1;
        }
        model.longest_chain = model.longest_chain.max(result.chain_length);
        if let Some(t) = model.sandboxes.get_mut(id) {
            t.state = Known::Paused;
            t.snapshot = Some(t.files.clone());
            t.pending = None;
        }
        Ok(result)
    }

    async fn resume(&self, id: &str) -> Result<(), Failure> {
        self.step(
            id,
            Pending::Resume,
            REQUEST_TIMEOUT,
            &format!("resume {id}"),
            self.client.resume_sandbox(id),
        )
        .await?;
        if let Some(t) = self.model().sandboxes.get_mut(id) {
            t.state = Known::Running;
            t.pending = None;
        }
        Ok(())
    }

    async fn exec(&self, id: &str) -> Result<(), Failure> {
        let result = self
            .step(
                id,
                Pending::Exec,
                REQUEST_TIMEOUT,
                &format!("exec in {id}"),
                self.client
                    .exec(id, &ExecRequest::shell("echo warren-faults")),
            )
            .await?;
        self.model().set_pending(id, None);
        if result.exit_code != Some(0) || result.stdout.trim() != "warren-faults" {
            return Err(Failure {
                message: format!(
                    "exec in {id}: exit {:?}, stdout {:?}, stderr {:?}",
                    result.exit_code, result.stdout, result.stderr
                ),
                status: None,
            });
        }
        Ok(())
    }

    async fn snapshot(&self, id: &str, name: &str) -> Result<(), Failure> {
        let files = {
            let mut model = self.model();
            let files = model
                .sandboxes
                .get(id)
                .map(|t| t.files.clone())
                .unwrap_or_default();
            model.pending_template = Some((name.to_string(), files.clone()));
            files
        };
        let result = self
            .step(
                id,
                Pending::Snapshot,
                REQUEST_TIMEOUT,
                &format!("snapshot {name} of {id}"),
                self.client.create_snapshot(id, name),
            )
            .await;
        let mut model = self.model();
        match &result {
            Ok(_) => {
                model.pending_template = None;
                model.templates.insert(name.to_string(), files.clone());
                if let Some(t) = model.sandboxes.get_mut(id) {
                    // A running sandbox was paused for the copy: that pause
                    // is its last snapshot now.
                    if t.state == Known::Running {
                        t.snapshot = Some(files);
                    }
                    t.pending = None;
                }
            }
            Err(failure) if failure.refused() => model.pending_template = None,
            Err(_) => {}
        }
        result.map(|_| ())
    }

    async fn delete(&self, id: &str) -> Result<(), Failure> {
        self.step(
            id,
            Pending::Delete,
            REQUEST_TIMEOUT,
            &format!("delete {id}"),
            self.client.delete_sandbox(id),
        )
        .await?;
        self.model().forget(id);
        Ok(())
    }

    async fn delete_snapshot(&self, name: &str) -> Result<String, Failure> {
        self.model().pending_template_delete = Some(name.to_string());
        let result = call(
            REQUEST_TIMEOUT,
            &format!("delete snapshot {name}"),
            self.client.delete_snapshot(name),
        )
        .await;
        let mut model = self.model();
        match result {
            Ok(()) => {
                model.pending_template_delete = None;
                model.templates.remove(name);
                Ok("deleted".into())
            }
            // Clones of it exist: the documented refusal.
            Err(failure) if failure.conflict() => {
                model.pending_template_delete = None;
                Ok("409 (in use)".into())
            }
            Err(failure) => {
                if failure.refused() {
                    model.pending_template_delete = None;
                }
                Err(failure)
            }
        }
    }

    /// Runs one operation of the main loop; returns what it did and how
    /// long it took.
    async fn run(self, op: Op) -> (Result<String, Failure>, Duration) {
        let started = Instant::now();
        let result = self.run_inner(op).await;
        (result, started.elapsed())
    }

    async fn run_inner(&self, op: Op) -> Result<String, Failure> {
        match op {
            Op::Create { tag, blob, disk } => {
                let id = self.create(&tag, None).await?;
                self.write(&id, MEM_BLOB, blob).await?;
                self.write(&id, DISK_FILE, disk).await?;
                Ok(format!("created {id}"))
            }
            Op::Clone { tag, template } => {
                let id = self.create(&tag, Some(&template)).await?;
                Ok(format!("cloned {id}"))
            }
            Op::Exec { id } => self.exec(&id).await.map(|()| "ok".into()),
            Op::Write { id, path, data } => {
                self.write(&id, &path, data).await.map(|()| "ok".into())
            }
            Op::Pause { id } => self
                .pause(&id)
                .await
                .map(|r| format!("chain {}", r.chain_length)),
            Op::Resume { id } => self.resume(&id).await.map(|()| "ok".into()),
            Op::Merge { id, blobs } => {
                let paused = self
                    .model()
                    .sandboxes
                    .get(&id)
                    .is_some_and(|t| t.state == Known::Paused);
                if paused {
                    self.resume(&id).await?;
                }
                let cycles = blobs.len();
                for (cycle, blob) in blobs.into_iter().enumerate() {
                    self.write(&id, MEM_BLOB, blob).await?;
                    let result = self.pause(&id).await?;
                    if result.merged {
                        return Ok(format!(
                            "merged at pause {} (chain {})",
                            cycle + 1,
                            result.chain_length
                        ));
                    }
                    if cycle + 1 < cycles {
                        self.resume(&id).await?;
                    }
                }
                Ok(format!("no merge after {cycles} pauses"))
            }
            Op::Snapshot { id, name } => self.snapshot(&id, &name).await.map(|()| "ok".into()),
            Op::Delete { id } => self.delete(&id).await.map(|()| "ok".into()),
            Op::DeleteSnapshot { name } => self.delete_snapshot(&name).await,
        }
    }
}

// ---- the report -------------------------------------------------------------

/// The counters a violation goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    SnapshotsLost,
    WritesLost,
    SandboxesLost,
    UnexpectedStates,
    ExtraFaultFailures,
    OperationsHung,
    FailedWithoutFault,
}

/// Something left behind, found from the host.
#[derive(Debug, Clone)]
struct Orphan {
    kind: String,
    subject: String,
    reason: String,
    phase: String,
}

/// Load-phase figures of one client (merged at the end).
#[derive(Debug, Default, Clone)]
struct LoadStats {
    requests: u64,
    errors: u64,
    conflicts: u64,
    writes_lost: u64,
    pause_cycles: u64,
    latencies_ms: Vec<f64>,
    error_samples: Vec<String>,
}

impl LoadStats {
    /// Counts one request; returns its value when it succeeded.
    fn record<T>(
        &mut self,
        started: Instant,
        result: Result<T, Failure>,
        timed: bool,
    ) -> Option<T> {
        self.requests += 1;
        match result {
            Ok(value) => {
                if timed {
                    self.latencies_ms.push(ms(started.elapsed()));
                }
                Some(value)
            }
            Err(failure) if failure.conflict() => {
                self.conflicts += 1;
                None
            }
            Err(failure) => {
                self.errors += 1;
                if self.error_samples.len() < 5 {
                    self.error_samples.push(failure.message);
                }
                None
            }
        }
    }

    fn merge(&mut self, other: LoadStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.conflicts += other.conflicts;
        self.writes_lost += other.writes_lost;
        self.pause_cycles += other.pause_cycles;
        self.latencies_ms.extend(other.latencies_ms);
        for sample in other.error_samples {
            if self.error_samples.len() < 10 {
                self.error_samples.push(sample);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Report {
    iterations: usize,
    faults: BTreeMap<String, u64>,
    operations: BTreeMap<String, u64>,
    interrupted: u64,
    snapshots_lost: u64,
    acknowledged_writes_lost: u64,
    sandboxes_lost: u64,
    unexpected_states: u64,
    orphans: BTreeMap<String, Orphan>,
    orphans_after_reconcile: u64,
    orphans_at_exit: u64,
    extra_fault_failures: u64,
    operations_hung: u64,
    failed_without_fault: u64,
    violations: Vec<String>,
    outcomes: BTreeMap<String, u64>,
    reconcile_endpoint: Option<bool>,
    reconcile_calls: u64,
    reconcile_fixes: BTreeMap<String, u64>,
    restart_ms: Vec<f64>,
    files_verified: u64,
    resumes_verified: u64,
    replacement_creates: u64,
    pauses_acknowledged: u64,
    merges_observed: u64,
    longest_chain: u32,
    load: Option<LoadStats>,
    load_sandboxes: usize,
    skipped: Vec<String>,
    details: serde_json::Map<String, Value>,
    fatal: Option<String>,
    service_log: Option<PathBuf>,
}

impl Report {
    fn violate(&mut self, counter: Counter, count: u64, message: String) {
        eprintln!("  VIOLATION: {message}");
        let slot = match counter {
            Counter::SnapshotsLost => &mut self.snapshots_lost,
            Counter::WritesLost => &mut self.acknowledged_writes_lost,
            Counter::SandboxesLost => &mut self.sandboxes_lost,
            Counter::UnexpectedStates => &mut self.unexpected_states,
            Counter::ExtraFaultFailures => &mut self.extra_fault_failures,
            Counter::OperationsHung => &mut self.operations_hung,
            Counter::FailedWithoutFault => &mut self.failed_without_fault,
        };
        *slot += count;
        self.violations.push(message);
    }

    /// Records an orphan once (the same leftover seen again later is not
    /// counted again).
    fn orphan(&mut self, orphan: Orphan, at_exit: bool) {
        let key = format!("{}:{}", orphan.kind, orphan.subject);
        if self.orphans.contains_key(&key) {
            return;
        }
        let message = format!(
            "orphan ({}) {}: {} [{}]",
            orphan.kind, orphan.subject, orphan.reason, orphan.phase
        );
        eprintln!("  VIOLATION: {message}");
        self.violations.push(message);
        if at_exit {
            self.orphans_at_exit += 1;
        } else {
            self.orphans_after_reconcile += 1;
        }
        self.orphans.insert(key, orphan);
    }

    fn outcome(&mut self, what: &str) {
        *self.outcomes.entry(what.to_string()).or_default() += 1;
    }

    fn ok(&self) -> bool {
        self.fatal.is_none()
            && self.snapshots_lost == 0
            && self.acknowledged_writes_lost == 0
            && self.sandboxes_lost == 0
            && self.unexpected_states == 0
            && self.orphans_after_reconcile == 0
            && self.orphans_at_exit == 0
            && self.extra_fault_failures == 0
            && self.operations_hung == 0
            && self.failed_without_fault == 0
    }

    fn to_json(&self, seed: u64, plan: &Plan, args: &FaultsBenchArgs, elapsed: Duration) -> Value {
        let load = self.load.clone().unwrap_or_default();
        let mut violations = self.violations.clone();
        if let Some(fatal) = &self.fatal {
            violations.push(format!("the run stopped early: {fatal}"));
        }
        let orphans: Vec<Value> = self
            .orphans
            .values()
            .map(|o| json!({"kind": o.kind, "subject": o.subject, "reason": o.reason, "phase": o.phase}))
            .collect();
        let mut out = json!({
            "benchmark": "faults",
            "mode": if plan.soak { "soak" } else { "bounded" },
            "seed": seed,
            "image": args.image,
            "memory_mib": args.memory,
            "iterations": self.iterations,
            "faults_injected": self.faults,
            "operations": self.operations,
            "operations_interrupted": self.interrupted,
            "snapshots_lost": self.snapshots_lost,
            "acknowledged_writes_lost": self.acknowledged_writes_lost,
            "sandboxes_lost": self.sandboxes_lost,
            "unexpected_states": self.unexpected_states,
            "orphans_after_reconcile": self.orphans_after_reconcile,
            "orphans_at_exit": self.orphans_at_exit,
            "network_orphans": self.orphans.values().filter(|o| o.kind == "network").count(),
            "orphans": orphans,
            "extra_fault_failures": self.extra_fault_failures,
            "operations_hung": self.operations_hung,
            "operations_failed_without_fault": self.failed_without_fault,
            "skipped": self.skipped,
            "duration_s": round2(elapsed.as_secs_f64()),
            "violations": violations,
            "ok": self.ok(),
        });
        // Several literals: one would exceed `json!`'s macro recursion.
        let details = json!({
            "outcomes": self.outcomes,
            "files_verified": self.files_verified,
            "resumes_verified": self.resumes_verified,
            "replacement_creates": self.replacement_creates,
            "pauses_acknowledged": self.pauses_acknowledged,
            "merges_observed": self.merges_observed,
            "longest_chain": self.longest_chain,
            "merge_cap": MERGE_CAP,
            "reconcile_endpoint": self.reconcile_endpoint,
            "reconcile_calls": self.reconcile_calls,
            "reconcile_fixes": self.reconcile_fixes,
            "restarts": self.restart_ms.len(),
            "restart_ms_p50": round2(percentile(&self.restart_ms, 50.0)),
            "restart_ms_max": round2(self.restart_ms.iter().copied().fold(0.0, f64::max)),
        });
        let load_fields = json!({
            "load_sandboxes": self.load_sandboxes,
            "load_clients": plan.load_clients,
            "load_seconds": plan.load_seconds,
            "load_requests": load.requests,
            "load_errors": load.errors,
            "load_conflicts": load.conflicts,
            "load_writes_lost": load.writes_lost,
            "load_pause_cycles": load.pause_cycles,
            "load_p50_ms": round2(percentile(&load.latencies_ms, 50.0)),
            "load_p99_ms": round2(percentile(&load.latencies_ms, 99.0)),
            "load_latency_of": "exec, file write, file read (successful requests)",
            "load_error_samples": load.error_samples,
        });
        let object = out.as_object_mut().expect("object");
        for part in [details, load_fields] {
            if let Value::Object(fields) = part {
                object.extend(fields);
            }
        }
        object.extend(self.details.clone());
        if let Some(fatal) = &self.fatal {
            object.insert("fatal".into(), json!(fatal));
        }
        if let Some(log) = &self.service_log {
            object.insert("service_log".into(), json!(log));
        }
        out
    }
}

// ---- the harness ------------------------------------------------------------

/// The faults the main loop injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillWarren,
    KillQemu,
}

/// What happened around one fault, for the checks that follow it.
#[derive(Debug, Default, Clone)]
struct FaultContext {
    label: String,
    /// The sandbox whose QEMU was killed.
    killed_vm: Option<String>,
    /// The sandbox whose QEMU was stopped (SIGSTOP) for a while.
    hung_vm: Option<String>,
    /// Sandboxes the operation or the fault touched: always verified.
    involved: BTreeSet<String>,
    /// Verify every sandbox (resume every paused one).
    full: bool,
    /// Never pause sandboxes again after verifying them.
    keep_running: bool,
}

impl FaultContext {
    fn quiet(label: &str) -> Self {
        Self {
            label: label.to_string(),
            full: true,
            ..Self::default()
        }
    }
}

/// A sandbox to verify, and what it may contain.
#[derive(Debug)]
struct Verify {
    id: String,
    candidates: Vec<Candidate>,
    /// It is paused: resume it first (its snapshot is what is verified).
    resume: bool,
    /// Its paused contents come from an acknowledged snapshot.
    from_snapshot: bool,
    /// May be paused again afterwards (not for follow-up checks).
    repause: bool,
    why: String,
}

struct Harness {
    service: Service,
    model: Arc<Mutex<Model>>,
    report: Report,
    rng: StdRng,
    plan: Plan,
    image: String,
    memory: u32,
    typical: BTreeMap<&'static str, f64>,
    counter: u64,
}

impl Harness {
    fn new(service: Service, seed: u64, plan: Plan, args: &FaultsBenchArgs) -> Result<Self> {
        Ok(Self {
            service,
            model: Arc::new(Mutex::new(Model::default())),
            report: Report::default(),
            rng: StdRng::seed_from_u64(seed),
            plan,
            image: args.image.clone(),
            memory: args.memory,
            typical: BTreeMap::new(),
            counter: 0,
        })
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().expect("model lock")
    }

    fn ops(&self) -> Result<Ops> {
        Ok(Ops {
            client: self.service.client()?,
            model: self.model.clone(),
            image: self.image.clone(),
            memory: self.memory,
        })
    }

    fn next_name(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    fn random_bytes(&mut self, len: usize) -> Bytes {
        let mut data = vec![0u8; len];
        self.rng.fill(&mut data[..]);
        Bytes::from(data)
    }

    async fn run(&mut self) -> Result<()> {
        self.service.spawn()?;
        let client = self.service.wait_ready(READY_TIMEOUT).await?;
        let health = client.health().await?;
        self.report
            .details
            .insert("accel".into(), json!(health.accel));
        self.populate().await?;

        let mut index = 0;
        while index < self.plan.iterations
            || (self.missing_kinds() > 0 && index < self.plan.iterations + 3)
        {
            self.iteration(index).await?;
            index += 1;
            self.report.iterations = index;
        }
        self.extra_faults().await?;
        let mut after_extra = FaultContext::quiet("after the extra faults");
        after_extra.keep_running = true;
        self.check(&after_extra).await?;
        self.load_phase().await?;
        let mut after_load = FaultContext::quiet("after the load phase");
        after_load.keep_running = true;
        self.check(&after_load).await?;
        self.shutdown().await
    }

    fn missing_kinds(&self) -> usize {
        ["kill_warren", "kill_qemu"]
            .iter()
            .filter(|k| !self.report.faults.contains_key(**k))
            .count()
    }

    /// The starting population, created without faults.
    async fn populate(&mut self) -> Result<()> {
        eprintln!(
            "warren bench faults: creating {MIN_POPULATION} {} sandboxes",
            self.image
        );
        let ops = self.ops()?;
        let mut tasks = Vec::new();
        for _ in 0..MIN_POPULATION {
            let op = Op::Create {
                tag: self.next_name("p"),
                blob: self.random_bytes(MEM_BLOB_BYTES),
                disk: self.random_bytes(DISK_FILE_BYTES),
            };
            tasks.push(tokio::spawn(ops.clone().run(op)));
        }
        for task in tasks {
            let (result, elapsed) = task.await?;
            match result {
                Ok(what) => eprintln!("  {what} in {:.1} s", elapsed.as_secs_f64()),
                Err(failure) => bail!(
                    "creating the starting population failed: {failure}; the service log ends with:\n{}",
                    self.service.log_tail(20)
                ),
            }
        }
        self.model().pending_create = None;
        Ok(())
    }

    /// Creates sandboxes (without a fault) until the population is back at
    /// its minimum: killed VMs take sandboxes away, and an operation that
    /// is always a create would leave the others untested.
    async fn replenish(&mut self) -> Result<()> {
        let ops = self.ops()?;
        while self.model().sandboxes.len() < MIN_POPULATION {
            let op = Op::Create {
                tag: self.next_name("r"),
                blob: self.random_bytes(MEM_BLOB_BYTES),
                disk: self.random_bytes(DISK_FILE_BYTES),
            };
            let (result, _) = ops.clone().run(op).await;
            self.model().pending_create = None;
            self.report.replacement_creates += 1;
            if let Err(failure) = result {
                self.report.violate(
                    Counter::FailedWithoutFault,
                    1,
                    format!("creating a replacement sandbox (no fault) failed: {failure}"),
                );
                break;
            }
        }
        Ok(())
    }

    fn choose_fault(&mut self, index: usize) -> Fault {
        let remaining = self.plan.iterations.saturating_sub(index);
        let missing: Vec<&str> = ["kill_warren", "kill_qemu"]
            .into_iter()
            .filter(|k| !self.report.faults.contains_key(*k))
            .collect();
        if !missing.is_empty() && remaining <= missing.len() {
            return if missing[0] == "kill_warren" {
                Fault::KillWarren
            } else {
                Fault::KillQemu
            };
        }
        if self.rng.random_bool(0.55) {
            Fault::KillWarren
        } else {
            Fault::KillQemu
        }
    }

    /// Picks an operation the population allows, preferring kinds not yet
    /// run, and chooses its data.
    fn plan_op(&mut self, fault: Fault) -> Op {
        let (running, paused, population, templates) = {
            let model = self.model();
            (
                model.ids_in(Known::Running),
                model.ids_in(Known::Paused),
                model.sandboxes.len(),
                model.templates.keys().cloned().collect::<Vec<_>>(),
            )
        };
        let live: Vec<String> = running.iter().chain(&paused).cloned().collect();
        let mut eligible: Vec<(&'static str, u32)> = Vec::new();
        if population < MIN_POPULATION || live.is_empty() {
            eligible.push(("create", 1));
        } else {
            if population < MAX_CREATED {
                eligible.push(("create", 1));
            }
            if !running.is_empty() {
                eligible.extend([("exec", 2), ("write", 3), ("pause", 3)]);
            }
            if !paused.is_empty() {
                eligible.push(("resume", 3));
            }
            eligible.push(("merge", 1));
            if templates.len() < MAX_TEMPLATES {
                eligible.push(("snapshot", 1));
            }
            if !templates.is_empty() {
                if population < MAX_POPULATION {
                    eligible.push(("clone", 1));
                }
                eligible.push(("delete_snapshot", 1));
            }
            if population > MIN_POPULATION {
                eligible.push(("delete", 1));
            }
        }
        // Killing a VM needs one: prefer operations on a running sandbox.
        if fault == Fault::KillQemu && !running.is_empty() && self.rng.random_bool(0.5) {
            let on_running: Vec<(&'static str, u32)> = eligible
                .iter()
                .copied()
                .filter(|(k, _)| matches!(*k, "exec" | "write" | "pause" | "merge"))
                .collect();
            if !on_running.is_empty() {
                eligible = on_running;
            }
        }
        let unused: Vec<&'static str> = eligible
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !self.report.operations.contains_key(*k))
            .collect();
        let kind = if !unused.is_empty() && self.rng.random_bool(0.85) {
            unused[self.rng.random_range(0..unused.len())]
        } else {
            let total: u32 = eligible.iter().map(|(_, w)| w).sum();
            let mut pick = self.rng.random_range(0..total);
            let mut chosen = eligible[0].0;
            for (kind, weight) in &eligible {
                if pick < *weight {
                    chosen = kind;
                    break;
                }
                pick -= weight;
            }
            chosen
        };
        let pick =
            |rng: &mut StdRng, from: &[String]| from[rng.random_range(0..from.len())].clone();
        match kind {
            "create" => Op::Create {
                tag: self.next_name("c"),
                blob: self.random_bytes(MEM_BLOB_BYTES),
                disk: self.random_bytes(DISK_FILE_BYTES),
            },
            "exec" => Op::Exec {
                id: pick(&mut self.rng, &running),
            },
            "write" => {
                let id = pick(&mut self.rng, &running);
                let path = WRITE_PATHS[self.rng.random_range(0..WRITE_PATHS.len())].to_string();
                let len = self.rng.random_range(1..=64) << 10;
                Op::Write {
                    id,
                    path,
                    data: self.random_bytes(len),
                }
            }
            "pause" => Op::Pause {
                id: pick(&mut self.rng, &running),
            },
            "resume" => Op::Resume {
                id: pick(&mut self.rng, &paused),
            },
            "merge" => {
                let id = pick(&mut self.rng, &live);
                let blobs = (0..MERGE_CAP + 2)
                    .map(|_| self.random_bytes(256 << 10))
                    .collect();
                Op::Merge { id, blobs }
            }
            "snapshot" => Op::Snapshot {
                id: pick(&mut self.rng, &live),
                name: self.next_name("wf-t"),
            },
            "clone" => Op::Clone {
                tag: self.next_name("k"),
                template: pick(&mut self.rng, &templates),
            },
            "delete" => Op::Delete {
                id: pick(&mut self.rng, &live),
            },
            _ => Op::DeleteSnapshot {
                name: pick(&mut self.rng, &templates),
            },
        }
    }

    /// The QEMU to kill: the operation's own sandbox's if it has one, a
    /// sandbox being created if the operation creates one, else any.
    fn pick_victim(&mut self, op: &Op) -> Option<(i32, String)> {
        let vms = vm_processes(&self.service.home);
        if vms.is_empty() {
            return None;
        }
        if let Some(target) = op.target()
            && let Some(vm) = vms.iter().find(|(_, id)| id == target)
        {
            return Some(vm.clone());
        }
        if matches!(op, Op::Create { .. } | Op::Clone { .. }) {
            let model = self.model();
            if let Some(vm) = vms.iter().find(|(_, id)| !model.sandboxes.contains_key(id)) {
                return Some(vm.clone());
            }
        }
        Some(vms[self.rng.random_range(0..vms.len())].clone())
    }

    /// One operation, one fault in its course, and the checks.
    async fn iteration(&mut self, index: usize) -> Result<()> {
        self.replenish().await?;
        let fault = self.choose_fault(index);
        let op = self.plan_op(fault);
        let kind = op.kind();
        *self.report.operations.entry(kind.to_string()).or_default() += 1;
        let typical = *self.typical.entry(kind).or_insert(typical_seconds(kind));
        let delay = Duration::from_secs_f64(self.rng.random_range(0.0..=typical * 1.2));
        let ops = self.ops()?;
        let mut task = tokio::spawn(ops.run(op.clone()));
        tokio::time::sleep(delay).await;
        let finished_first = task.is_finished();

        let mut ctx = FaultContext {
            label: format!("iteration {} ({}, ", index + 1, op.describe()),
            ..FaultContext::default()
        };
        if let Some(target) = op.target() {
            ctx.involved.insert(target.to_string());
        }
        let mut warren_killed = false;
        let fault_name = match fault {
            Fault::KillQemu => match self.pick_victim(&op) {
                Some((pid, id)) => {
                    signal(pid, nix::sys::signal::Signal::SIGKILL);
                    ctx.involved.insert(id.clone());
                    ctx.label.push_str(&format!("kill_qemu of {id}"));
                    ctx.killed_vm = Some(id);
                    "kill_qemu"
                }
                None => {
                    eprintln!("  no VM to kill; killing warren instead");
                    warren_killed = true;
                    "kill_warren"
                }
            },
            Fault::KillWarren => {
                warren_killed = true;
                "kill_warren"
            }
        };
        if warren_killed {
            self.service.kill9();
            ctx.label.push_str("kill_warren");
        }
        ctx.label
            .push_str(&format!(" at {:.2} s)", delay.as_secs_f64()));
        *self
            .report
            .faults
            .entry(fault_name.to_string())
            .or_default() += 1;
        if !finished_first {
            self.report.interrupted += 1;
        }

        let (outcome, took) = match tokio::time::timeout(OP_WAIT, &mut task).await {
            Ok(Ok(done)) => done,
            Ok(Err(join)) => (
                Err(Failure {
                    message: format!("the operation task failed: {join}"),
                    status: None,
                }),
                Duration::ZERO,
            ),
            Err(_) => {
                task.abort();
                self.report.violate(
                    Counter::OperationsHung,
                    1,
                    format!(
                        "{}: the operation did not end within {} s of the fault",
                        ctx.label,
                        OP_WAIT.as_secs()
                    ),
                );
                (
                    Err(Failure {
                        message: "hung".into(),
                        status: None,
                    }),
                    OP_WAIT,
                )
            }
        };
        if finished_first {
            match &outcome {
                Ok(_) => {
                    let entry = self.typical.entry(kind).or_insert(typical);
                    *entry = 0.5 * *entry + 0.5 * took.as_secs_f64();
                }
                Err(failure) => self.report.violate(
                    Counter::FailedWithoutFault,
                    1,
                    format!("{}: failed before any fault: {failure}", ctx.label),
                ),
            }
        }
        eprintln!(
            "warren bench faults: [{}/{}] {} -> {}",
            index + 1,
            self.plan.iterations,
            ctx.label,
            match &outcome {
                Ok(what) => format!("{what} ({:.1} s, before the fault)", took.as_secs_f64()),
                Err(failure) => format!("interrupted: {failure}"),
            }
            .chars()
            .take(300)
            .collect::<String>()
        );
        if warren_killed {
            self.restart().await?;
        }
        self.check(&ctx).await
    }

    async fn restart(&mut self) -> Result<()> {
        let started = Instant::now();
        self.service.spawn()?;
        self.service
            .wait_ready(READY_TIMEOUT)
            .await
            .context("warren did not come back after a restart")?;
        self.report.restart_ms.push(ms(started.elapsed()));
        Ok(())
    }

    /// `POST /v1/admin/reconcile`, or (a service without it) waiting two
    /// reconcile intervals.
    async fn reconcile(&mut self) {
        if self.report.reconcile_endpoint != Some(false) {
            let answer = match self.service.client() {
                Ok(client) => {
                    call(
                        REQUEST_TIMEOUT,
                        "POST /v1/admin/reconcile",
                        client.reconcile(),
                    )
                    .await
                }
                Err(error) => Err(Failure {
                    message: format!("{error:#}"),
                    status: None,
                }),
            };
            match answer {
                Ok(report) => {
                    self.report.reconcile_endpoint = Some(true);
                    self.report.reconcile_calls += 1;
                    for fix in report.fixes {
                        *self.report.reconcile_fixes.entry(fix.kind).or_default() += 1;
                    }
                    return;
                }
                Err(failure) if matches!(failure.status, Some(404 | 405)) => {
                    eprintln!(
                        "warren bench faults: {failure}; waiting two reconcile intervals instead"
                    );
                    self.report
                        .details
                        .insert("reconcile_endpoint_answer".into(), json!(failure.message));
                    self.report.reconcile_endpoint = Some(false);
                }
                Err(failure) => self.report.violate(
                    Counter::FailedWithoutFault,
                    1,
                    format!("the reconciler failed: {failure}"),
                ),
            }
        }
        tokio::time::sleep(Duration::from_secs(2 * RECONCILE_INTERVAL_SECS)).await;
    }

    async fn listing(&self, client: &Client) -> Result<BTreeMap<String, Sandbox>> {
        let list = call(
            REQUEST_TIMEOUT,
            "GET /v1/sandboxes",
            client.list_sandboxes(&warren_client::ListSandboxes::default()),
        )
        .await
        .map_err(|f| anyhow!("warren is not serving: {f}"))?;
        Ok(list
            .sandboxes
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect())
    }

    async fn snapshot_names(&self, client: &Client) -> Result<BTreeSet<String>> {
        let list = call(
            REQUEST_TIMEOUT,
            "GET /v1/snapshots",
            client.list_snapshots(),
        )
        .await
        .map_err(|f| anyhow!("warren is not serving: {f}"))?;
        Ok(list.snapshots.into_iter().map(|s| s.name).collect())
    }

    /// Every check after a fault: states, templates, orphans, contents.
    async fn check(&mut self, ctx: &FaultContext) -> Result<()> {
        let client = self.service.client()?;
        if let Some(victim) = &ctx.killed_vm {
            self.await_vm_death_noticed(&client, victim).await;
        }
        self.reconcile().await;
        let listing = self.listing(&client).await?;
        let snapshots = self.snapshot_names(&client).await?;
        for (id, sandbox) in &listing {
            let gone = self.model().gone.contains(id);
            if gone && matches!(sandbox.state, SandboxState::Running | SandboxState::Paused) {
                self.report.orphan(
                    Orphan {
                        kind: "resurrected".into(),
                        subject: id.clone(),
                        reason: format!(
                            "it was deleted or stopped earlier but is listed {}",
                            sandbox.state
                        ),
                        phase: ctx.label.clone(),
                    },
                    false,
                );
            }
        }
        let deleting = self.adopt_interrupted(&listing, &snapshots);
        let to_verify = self.check_states(ctx, &listing);
        self.check_templates(&snapshots, deleting.as_deref());
        self.scan_orphans(&client, &ctx.label, false).await?;
        let mut queue: std::collections::VecDeque<Verify> = to_verify.into();
        while let Some(verify) = queue.pop_front() {
            if let Some(next) = self.verify(&client, verify, ctx).await {
                queue.push_back(next);
            }
        }
        self.setup_missing(&client).await;
        Ok(())
    }

    /// A killed VM's exit reaches the service asynchronously (its exit
    /// watcher, the reconciler): gives it a moment before the checks, so
    /// that only a sandbox that stays listed running without a VM counts.
    async fn await_vm_death_noticed(&mut self, client: &Client, victim: &str) {
        let deadline = Instant::now() + VM_DEATH_NOTICE;
        while Instant::now() < deadline {
            let vm_alive = vm_processes(&self.service.home)
                .iter()
                .any(|(_, id)| id == victim);
            let listed_running = matches!(
                call(SERVING_BOUND, "GET sandbox", client.get_sandbox(victim)).await,
                Ok(sandbox) if sandbox.state == SandboxState::Running
            );
            if !vm_alive && !listed_running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.report.outcome("killed_vm_noticed_late");
    }

    /// Sandboxes and templates whose creation was interrupted: adopted if
    /// they exist. Returns the template whose deletion was interrupted.
    fn adopt_interrupted(
        &mut self,
        listing: &BTreeMap<String, Sandbox>,
        snapshots: &BTreeSet<String>,
    ) -> Option<String> {
        let mut model = self.model();
        if let Some(pending) = model.pending_create.take() {
            for sandbox in listing.values() {
                if sandbox.metadata.get(TAG_KEY) != Some(&pending.tag)
                    || model.sandboxes.contains_key(&sandbox.id)
                    || model.gone.contains(&sandbox.id)
                {
                    continue;
                }
                let base = pending
                    .template
                    .as_ref()
                    .and_then(|t| model.templates.get(t).cloned());
                let mut tracked =
                    Tracked::new(sandbox.id.clone(), base.clone().unwrap_or_default(), base);
                match sandbox.state {
                    SandboxState::Running => {}
                    SandboxState::Paused => tracked.state = Known::Paused,
                    _ => {
                        model.gone.insert(sandbox.id.clone());
                        continue;
                    }
                }
                model.sandboxes.insert(sandbox.id.clone(), tracked);
            }
        }
        if let Some((name, files)) = model.pending_template.take()
            && snapshots.contains(&name)
            && !model.templates.contains_key(&name)
        {
            model.templates.insert(name, files);
        }
        let deleting = model.pending_template_delete.take();
        if let Some(name) = &deleting
            && !snapshots.contains(name)
        {
            model.templates.remove(name);
        }
        deleting
    }

    /// Acknowledged templates must still be listed and on disk. (One
    /// whose deletion was interrupted may be either; listed without its
    /// files is an inconsistency the orphan scan counts.)
    fn check_templates(&mut self, snapshots: &BTreeSet<String>, deleting: Option<&str>) {
        let names: Vec<String> = self.model().templates.keys().cloned().collect();
        for name in names {
            if deleting == Some(name.as_str()) {
                if !self.service.home.join("templates").join(&name).is_dir() {
                    self.model().templates.remove(&name);
                }
                continue;
            }
            let problem = if !snapshots.contains(&name) {
                Some("is no longer listed by GET /v1/snapshots")
            } else if !self.service.home.join("templates").join(&name).is_dir() {
                Some("is listed but its directory templates/<name> is missing")
            } else {
                None
            };
            if let Some(problem) = problem {
                self.report.violate(
                    Counter::SnapshotsLost,
                    1,
                    format!("snapshot template {name} (acknowledged) {problem}"),
                );
                self.model().templates.remove(&name);
            }
        }
    }

    /// Compares every tracked sandbox's listed state with what may have
    /// happened to it; returns the sandboxes whose contents to verify.
    fn check_states(
        &mut self,
        ctx: &FaultContext,
        listing: &BTreeMap<String, Sandbox>,
    ) -> Vec<Verify> {
        let tracked: Vec<Tracked> = self.model().sandboxes.values().cloned().collect();
        let vms = vm_processes(&self.service.home);
        let mut to_verify = Vec::new();
        for t in tracked {
            let id = t.id.clone();
            let killed = ctx.killed_vm.as_deref() == Some(id.as_str());
            let hung = ctx.hung_vm.as_deref() == Some(id.as_str());
            let expect = expectation(&t, killed || hung, hung);
            let seen = listing.get(&id).map(|s| s.state);
            let label = &ctx.label;
            match seen {
                Some(SandboxState::Running) | Some(SandboxState::Paused) => {
                    let running = seen == Some(SandboxState::Running);
                    if running && killed && !vms.iter().any(|(_, v)| *v == id) {
                        // Listed running with its VM gone: the orphan scan
                        // counts that (the reconciler should have noticed);
                        // the sandbox itself is useless now.
                        self.report.outcome("killed_vm_still_listed_running");
                        self.model().sandboxes.remove(&id);
                        continue;
                    }
                    let allowed = if running {
                        &expect.running
                    } else {
                        &expect.paused
                    };
                    let candidates = match allowed {
                        Some(candidates) => candidates.clone(),
                        None => {
                            self.report.violate(
                                Counter::UnexpectedStates,
                                1,
                                format!(
                                    "{label}: {id} is listed {} but may only be {} ({})",
                                    if running { "running" } else { "paused" },
                                    expect.allowed(),
                                    expect.why
                                ),
                            );
                            let mut all = expect.running.clone().unwrap_or_default();
                            all.extend(expect.paused.clone().unwrap_or_default());
                            all
                        }
                    };
                    let state = if running {
                        Known::Running
                    } else {
                        Known::Paused
                    };
                    let must_verify = running
                        || ctx.full
                        || ctx.involved.contains(&id)
                        || candidates.len() != 1
                        || collapse(&candidates[0]).is_none()
                        || self.rng.random_bool(0.4);
                    if must_verify {
                        to_verify.push(Verify {
                            id: id.clone(),
                            candidates,
                            resume: !running,
                            from_snapshot: !running && expect.paused_from_snapshot,
                            repause: true,
                            why: expect.why.clone(),
                        });
                    } else if let Some(files) = collapse(&candidates[0]) {
                        self.report.outcome("paused_not_resumed_this_time");
                        let mut model = self.model();
                        if let Some(t) = model.sandboxes.get_mut(&id) {
                            // Paused with these contents: that is its
                            // snapshot now (also when an interrupted pause
                            // was completed by the restart).
                            t.snapshot = Some(files.clone());
                            t.files = files;
                        }
                    }
                    let mut model = self.model();
                    if let Some(t) = model.sandboxes.get_mut(&id) {
                        t.state = state;
                        t.pending = None;
                    }
                }
                other => {
                    let listed = other.map_or("missing".to_string(), |s| s.to_string());
                    match &expect.gone {
                        Ok(what) => self.report.outcome(what),
                        Err((counter, why)) => self.report.violate(
                            *counter,
                            1,
                            format!("{label}: {id} is {listed}, but {why}"),
                        ),
                    }
                    self.model().forget(&id);
                }
            }
        }
        to_verify
    }

    /// Resumes (if paused) and reads back a sandbox's files; counts what
    /// does not match any acceptable content.
    /// Returns a follow-up check when something without a fault failed.
    async fn verify(&mut self, client: &Client, v: Verify, ctx: &FaultContext) -> Option<Verify> {
        let label = ctx.label.clone();
        let id = v.id.clone();
        // A sandbox that cannot be used any more lost its acknowledged
        // snapshot if that is what it was resumed from; else it was a
        // running sandbox.
        let lost = if v.from_snapshot {
            Counter::SnapshotsLost
        } else {
            Counter::SandboxesLost
        };
        let ops = Ops {
            client: client.clone(),
            model: self.model.clone(),
            image: self.image.clone(),
            memory: self.memory,
        };
        if v.resume {
            match call(
                REQUEST_TIMEOUT,
                &format!("resume {id}"),
                client.resume_sandbox(&id),
            )
            .await
            {
                Ok(_) => {
                    self.report.resumes_verified += 1;
                    if let Some(t) = self.model().sandboxes.get_mut(&id) {
                        t.state = Known::Running;
                    }
                }
                Err(failure) => {
                    self.report.violate(
                        lost,
                        1,
                        format!(
                            "{label}: {id} is listed paused ({}) but resuming it failed: {failure}",
                            v.why
                        ),
                    );
                    self.discard(client, &id).await;
                    return None;
                }
            }
        }
        let paths: BTreeSet<String> = v
            .candidates
            .iter()
            .flat_map(|c| c.keys().cloned())
            .collect();
        let observed = match read_paths(client, &id, &paths).await {
            Ok(observed) => observed,
            Err(failure) => {
                self.report.violate(
                    lost,
                    1,
                    format!(
                        "{label}: {id} is {} but does not serve its files: {failure}",
                        if v.resume {
                            "resumed"
                        } else {
                            "listed running"
                        }
                    ),
                );
                self.discard(client, &id).await;
                return None;
            }
        };
        self.report.files_verified += paths.len() as u64;
        let best = v
            .candidates
            .iter()
            .map(|c| mismatches(c, &observed))
            .min_by_key(Vec::len)
            .unwrap_or_default();
        let mut snapshot_broken = Vec::new();
        let mut writes = Vec::new();
        for (path, expected, got) in &best {
            let text = format!(
                "{path} reads {} but {} was acknowledged",
                short(got),
                expected.iter().map(short).collect::<Vec<_>>().join(" or ")
            );
            if v.from_snapshot && (path == MEM_BLOB || path == DISK_FILE) {
                snapshot_broken.push(text);
            } else {
                writes.push(text);
            }
        }
        if !snapshot_broken.is_empty() {
            self.report.violate(
                Counter::SnapshotsLost,
                1,
                format!(
                    "{label}: {id} resumed with its {} not intact ({}): {}",
                    if snapshot_broken.len() == 2 {
                        "memory blob and disk file"
                    } else if best.iter().any(|(p, _, _)| p == MEM_BLOB) {
                        "memory blob"
                    } else {
                        "disk file"
                    },
                    v.why,
                    snapshot_broken.join("; ")
                ),
            );
        }
        if !writes.is_empty() {
            self.report.violate(
                Counter::WritesLost,
                writes.len() as u64,
                format!(
                    "{label}: {id} ({}, {}): {}",
                    if v.resume { "resumed" } else { "running" },
                    v.why,
                    writes.join("; ")
                ),
            );
        }
        {
            let mut model = self.model();
            if let Some(t) = model.sandboxes.get_mut(&id) {
                t.files = observed
                    .into_iter()
                    .filter_map(|(p, s)| s.map(|s| (p, s)))
                    .collect();
                if v.resume {
                    // It resumed from the snapshot it was paused at, which
                    // is where it falls back to now; an interrupted pause
                    // the restart completed makes that newer than the last
                    // acknowledged one.
                    t.snapshot = Some(t.files.clone());
                }
                t.state = Known::Running;
                t.pending = None;
            }
        }
        if v.resume
            && v.repause
            && !ctx.keep_running
            && self.rng.random_bool(0.5)
            && let Err(failure) = ops.pause(&id).await
        {
            self.report.violate(
                Counter::FailedWithoutFault,
                1,
                format!("{label}: pausing {id} again after verifying it failed: {failure}"),
            );
            return self.after_failed_pause(client, &id, &label).await;
        }
        None
    }

    /// A pause without a fault failed: finds out at once what became of the
    /// sandbox (running or paused with its acknowledged contents, anything
    /// else is a loss) instead of letting the next operation trip over it.
    async fn after_failed_pause(
        &mut self,
        client: &Client,
        id: &str,
        label: &str,
    ) -> Option<Verify> {
        let files = self.model().sandboxes.get(id).map(|t| t.files.clone())?;
        let state = call(REQUEST_TIMEOUT, "GET sandbox", client.get_sandbox(id))
            .await
            .map(|s| s.state);
        let why = "a pause without a fault failed".to_string();
        match state {
            Ok(SandboxState::Running) | Ok(SandboxState::Paused) => {
                let paused = state.as_ref().ok() == Some(&SandboxState::Paused);
                if let Some(t) = self.model().sandboxes.get_mut(id) {
                    t.state = if paused {
                        Known::Paused
                    } else {
                        Known::Running
                    };
                    t.pending = None;
                }
                Some(Verify {
                    id: id.to_string(),
                    candidates: vec![candidate(&files)],
                    resume: paused,
                    from_snapshot: false,
                    repause: false,
                    why,
                })
            }
            other => {
                self.report.violate(
                    Counter::SandboxesLost,
                    1,
                    format!(
                        "{label}: {id} is {} after a pause without a fault failed",
                        other.map_or_else(|f| f.message, |s| s.to_string())
                    ),
                );
                self.discard(client, id).await;
                None
            }
        }
    }

    /// Deletes a sandbox that cannot be used any more and forgets it.
    async fn discard(&mut self, client: &Client, id: &str) {
        let _ = call(REQUEST_TIMEOUT, "delete", client.delete_sandbox(id)).await;
        self.model().forget(id);
    }

    /// Gives running sandboxes that lack them (adopted after an
    /// interrupted create) their memory blob and disk file.
    async fn setup_missing(&mut self, client: &Client) {
        let lacking: Vec<(String, bool, bool)> = self
            .model()
            .sandboxes
            .values()
            .filter(|t| t.state == Known::Running)
            .map(|t| {
                (
                    t.id.clone(),
                    !t.files.contains_key(MEM_BLOB),
                    !t.files.contains_key(DISK_FILE),
                )
            })
            .filter(|(_, blob, disk)| *blob || *disk)
            .collect();
        let ops = Ops {
            client: client.clone(),
            model: self.model.clone(),
            image: self.image.clone(),
            memory: self.memory,
        };
        for (id, blob, disk) in lacking {
            let mut writes = Vec::new();
            if blob {
                writes.push((MEM_BLOB, self.random_bytes(MEM_BLOB_BYTES)));
            }
            if disk {
                writes.push((DISK_FILE, self.random_bytes(DISK_FILE_BYTES)));
            }
            for (path, data) in writes {
                if let Err(failure) = ops.write(&id, path, data).await {
                    self.report.violate(
                        Counter::FailedWithoutFault,
                        1,
                        format!("writing {path} into {id} (no fault) failed: {failure}"),
                    );
                }
            }
        }
    }

    /// What the host holds that the API does not account for.
    async fn host_leftovers(&self, client: &Client, phase: &str) -> Result<Vec<Orphan>> {
        let listing = self.listing(client).await?;
        let snapshots = self.snapshot_names(client).await?;
        let home = &self.service.home;
        let state_of = |id: &str| {
            listing
                .get(id)
                .map_or("unknown to the API".to_string(), |s| {
                    format!("listed {}", s.state)
                })
        };
        let is = |id: &str, state: SandboxState| listing.get(id).is_some_and(|s| s.state == state);
        let orphan = |kind: &str, subject: String, reason: String| Orphan {
            kind: kind.into(),
            subject,
            reason,
            phase: phase.to_string(),
        };
        let mut found = Vec::new();
        let vms = vm_processes(home);
        for (pid, id) in &vms {
            if !is(id, SandboxState::Running) {
                found.push(orphan(
                    "qemu",
                    format!("{id} (pid {pid})"),
                    format!("a QEMU runs for it but it is {}", state_of(id)),
                ));
            }
        }
        for (pid, id) in memfs_processes(home) {
            if !is(&id, SandboxState::Running) {
                found.push(orphan(
                    "memfs",
                    format!("{id} (pid {pid})"),
                    format!("a warren-memfs runs for it but it is {}", state_of(&id)),
                ));
            }
        }
        for (namespace, id) in networks_of(home) {
            if !is(&id, SandboxState::Running) {
                found.push(orphan(
                    "network",
                    format!("{namespace} ({id})"),
                    format!("a network is claimed for it but it is {}", state_of(&id)),
                ));
            }
        }
        let ram_dir = warren_sandbox::volatile_ram_dir_for(home)?;
        for entry in ram_dir
            .iter()
            .flat_map(std::fs::read_dir)
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let Some(id) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if !is(&id, SandboxState::Running) {
                found.push(orphan(
                    "ram",
                    path.display().to_string(),
                    format!("guest RAM held in host memory, but it is {}", state_of(&id)),
                ));
            }
        }
        for mount in warren_testkit::mounts_under(home) {
            let owner = sandbox_of_path(home, &mount);
            if !owner
                .as_deref()
                .is_some_and(|id| is(id, SandboxState::Running))
            {
                found.push(orphan(
                    "mount",
                    mount.clone(),
                    format!(
                        "mounted, but its sandbox is {}",
                        owner.as_deref().map_or("none".into(), state_of)
                    ),
                ));
            }
        }
        if let Ok(dir) = std::fs::read_dir(home.join("sandboxes")) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is(&name, SandboxState::Running) {
                    continue;
                }
                if is(&name, SandboxState::Paused) {
                    for file in std::fs::read_dir(entry.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        let file_name = file.file_name().to_string_lossy().into_owned();
                        if file_name.ends_with(".sock") || file_name.ends_with(".pid") {
                            found.push(orphan(
                                "runtime_file",
                                format!("sandboxes/{name}/{file_name}"),
                                "a socket or pid file in a paused sandbox's directory".into(),
                            ));
                        }
                    }
                    continue;
                }
                found.push(orphan(
                    "dir",
                    format!("sandboxes/{name}"),
                    format!(
                        "the directory exists but the sandbox is {}",
                        state_of(&name)
                    ),
                ));
            }
        }
        if let Ok(dir) = std::fs::read_dir(home.join("templates")) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || name.ends_with(".tmp") {
                    found.push(orphan(
                        "staging",
                        format!("templates/{name}"),
                        "a half-built template's staging directory".into(),
                    ));
                } else if !snapshots.contains(&name) {
                    found.push(orphan(
                        "template_dir",
                        format!("templates/{name}"),
                        "a template directory GET /v1/snapshots does not list".into(),
                    ));
                }
            }
        }
        for name in &snapshots {
            if !home.join("templates").join(name).is_dir() {
                found.push(orphan(
                    "template_record_without_dir",
                    name.clone(),
                    "listed by GET /v1/snapshots but templates/<name> does not exist (clones of it cannot work)"
                        .into(),
                ));
            }
        }
        for (id, sandbox) in &listing {
            if sandbox.state == SandboxState::Running && !vms.iter().any(|(_, v)| v == id) {
                found.push(orphan(
                    "api_running_without_vm",
                    id.clone(),
                    "listed running but no QEMU runs for it".into(),
                ));
            }
        }
        Ok(found)
    }

    /// Counts leftovers that are still there after a second reconcile (so
    /// that nothing merely in progress is counted).
    async fn scan_orphans(&mut self, client: &Client, phase: &str, at_exit: bool) -> Result<()> {
        let first = self.host_leftovers(client, phase).await?;
        if first.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.reconcile().await;
        let seen: BTreeSet<String> = first
            .iter()
            .map(|o| format!("{}:{}", o.kind, o.subject))
            .collect();
        for orphan in self.host_leftovers(client, phase).await? {
            if seen.contains(&format!("{}:{}", orphan.kind, orphan.subject)) {
                self.report.orphan(orphan, at_exit);
            }
        }
        Ok(())
    }

    // ---- the rarer faults, once per run ------------------------------------

    async fn extra_faults(&mut self) -> Result<()> {
        // The hang first: the other two use up a sandbox each.
        self.qmp_hang().await?;
        self.corrupt_header().await?;
        self.truncated_memory().await?;
        self.report.skipped.push(
            "disk_full: needs a size-limited host file system; covered by the integration test tests/snapshot.rs a_pause_on_a_full_disk_keeps_the_sandbox_and_says_so".into(),
        );
        Ok(())
    }

    fn extra_failure(&mut self, fault: &str, message: String) {
        self.report.violate(
            Counter::ExtraFaultFailures,
            1,
            format!("{fault}: {message}"),
        );
    }

    /// A paused sandbox to sacrifice (taken out of the population): a
    /// paused one if there is one, else a running one paused now, else a
    /// new one.
    async fn sacrifice_paused(&mut self) -> Result<Option<String>> {
        let ops = self.ops()?;
        let (paused, running) = {
            let model = self.model();
            let own = |state: Known| {
                model
                    .sandboxes
                    .values()
                    .filter(|t| t.state == state && t.clone_base.is_none())
                    .map(|t| t.id.clone())
                    .next()
            };
            (own(Known::Paused), own(Known::Running))
        };
        let id = match (paused, running) {
            (Some(id), _) => id,
            (None, Some(id)) => id,
            (None, None) => {
                let tag = self.next_name("x");
                match ops.create(&tag, None).await {
                    Ok(id) => id,
                    Err(failure) => {
                        self.report.violate(
                            Counter::FailedWithoutFault,
                            1,
                            format!("creating a sandbox for the extra faults failed: {failure}"),
                        );
                        return Ok(None);
                    }
                }
            }
        };
        let state = self.model().sandboxes.get(&id).map(|t| t.state);
        if state == Some(Known::Running)
            && let Err(failure) = ops.pause(&id).await
        {
            self.report.violate(
                Counter::FailedWithoutFault,
                1,
                format!("pausing {id} for the extra faults failed: {failure}"),
            );
            return Ok(None);
        }
        // Out of the population, but not "gone" until the fault's check
        // says so.
        self.model().sandboxes.remove(&id);
        Ok(Some(id))
    }

    /// Garbage in a paused sandbox's `SNAPSHOT`: warren must still start,
    /// move the directory to `quarantine/` and report the sandbox stopped.
    async fn corrupt_header(&mut self) -> Result<()> {
        const FAULT: &str = "corrupt_header";
        let Some(id) = self.sacrifice_paused().await? else {
            self.report
                .skipped
                .push(format!("{FAULT}: no paused sandbox could be made"));
            return Ok(());
        };
        eprintln!("warren bench faults: {FAULT}: garbage into the SNAPSHOT of paused {id}");
        self.service.kill9();
        let dir = self.service.home.join("sandboxes").join(&id);
        let header = dir.join("SNAPSHOT");
        if !header.is_file() {
            self.extra_failure(
                FAULT,
                format!("paused sandbox {id} has no {}", header.display()),
            );
        }
        let garbage = self.random_bytes(4096);
        std::fs::write(&header, &garbage)
            .with_context(|| format!("writing {}", header.display()))?;
        *self.report.faults.entry(FAULT.into()).or_default() += 1;
        self.restart()
            .await
            .context("warren did not start with a corrupt snapshot header")?;
        let client = self.service.client()?;
        match call(REQUEST_TIMEOUT, "GET sandbox", client.get_sandbox(&id)).await {
            Ok(sandbox) if sandbox.state == SandboxState::Stopped => {
                self.model().gone.insert(id.clone());
            }
            Ok(sandbox) => self.extra_failure(
                FAULT,
                format!(
                    "{id} is listed {} after its header was corrupted, not stopped",
                    sandbox.state
                ),
            ),
            Err(failure) => {
                self.extra_failure(FAULT, format!("{id} cannot be looked up: {failure}"))
            }
        }
        if dir.exists() {
            self.extra_failure(
                FAULT,
                format!("{} is still there, not moved to quarantine/", dir.display()),
            );
        }
        let quarantined = std::fs::read_dir(self.service.home.join("quarantine"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&id));
        if !quarantined {
            self.extra_failure(FAULT, format!("no entry for {id} in quarantine/"));
        }
        let mut ctx = FaultContext::quiet(&format!("{FAULT} of {id}"));
        ctx.full = false;
        self.check(&ctx).await
    }

    /// Truncated memory generation files: the resume must fail with a
    /// clear error, in bounded time, and warren must keep serving.
    async fn truncated_memory(&mut self) -> Result<()> {
        const FAULT: &str = "truncated_memory";
        let Some(id) = self.sacrifice_paused().await? else {
            self.report
                .skipped
                .push(format!("{FAULT}: no paused sandbox could be made"));
            return Ok(());
        };
        self.service.kill9();
        let dir = self.service.home.join("sandboxes").join(&id);
        let mut truncated = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let generation = name
                .strip_prefix("mem.")
                .is_some_and(|g| !g.is_empty() && g.chars().all(|c| c.is_ascii_digit()));
            if (generation || name == "memory") && entry.path().is_file() {
                let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
                let len = file.metadata()?.len();
                file.set_len(len / 2)?;
                truncated.push(format!("{name} {len} -> {}", len / 2));
            }
        }
        eprintln!("warren bench faults: {FAULT}: truncated {truncated:?} of paused {id}");
        if truncated.is_empty() {
            self.extra_failure(
                FAULT,
                format!(
                    "paused sandbox {id} has no memory generation file (mem.<n> or memory) in {}",
                    dir.display()
                ),
            );
        }
        *self.report.faults.entry(FAULT.into()).or_default() += 1;
        self.restart()
            .await
            .context("warren did not start with a truncated memory file")?;
        let client = self.service.client()?;
        let started = Instant::now();
        match call(
            REQUEST_TIMEOUT,
            &format!("resume {id}"),
            client.resume_sandbox(&id),
        )
        .await
        {
            Ok(sandbox) => self.extra_failure(
                FAULT,
                format!(
                    "resuming {id} with truncated memory succeeded (state {})",
                    sandbox.state
                ),
            ),
            Err(failure) if failure.status.is_none() => self.extra_failure(
                FAULT,
                format!("resume of {id} did not answer cleanly: {failure}"),
            ),
            Err(failure) => {
                eprintln!(
                    "  resume refused in {:.1} s: {failure}",
                    started.elapsed().as_secs_f64()
                );
                self.report.details.insert(
                    "truncated_memory_error".into(),
                    json!(format!(
                        "{} ({:.1} s)",
                        failure.message,
                        started.elapsed().as_secs_f64()
                    )),
                );
            }
        }
        if let Err(failure) = call(SERVING_BOUND, "GET /health", client.health()).await {
            self.extra_failure(
                FAULT,
                format!("warren stopped serving after the failed resume: {failure}"),
            );
        }
        match call(
            REQUEST_TIMEOUT,
            &format!("delete {id}"),
            client.delete_sandbox(&id),
        )
        .await
        {
            Ok(()) => {
                self.model().gone.insert(id.clone());
            }
            Err(failure) => self.extra_failure(
                FAULT,
                format!("deleting {id} after the failed resume failed: {failure}"),
            ),
        }
        let mut ctx = FaultContext::quiet(&format!("{FAULT} of {id}"));
        ctx.full = false;
        self.check(&ctx).await
    }

    /// A VM that does not answer (its QEMU stopped with SIGSTOP): a pause
    /// must fail within a bounded time while warren keeps serving.
    async fn qmp_hang(&mut self) -> Result<()> {
        const FAULT: &str = "qmp_hang";
        let client = self.service.client()?;
        let ops = self.ops()?;
        let mut target = self.model().ids_in(Known::Running).first().cloned();
        if target.is_none() {
            let paused = self.model().ids_in(Known::Paused).first().cloned();
            if let Some(id) = paused
                && ops.resume(&id).await.is_ok()
            {
                target = Some(id);
            }
        }
        if target.is_none() {
            let tag = self.next_name("h");
            match ops.create(&tag, None).await {
                Ok(id) => target = Some(id),
                Err(failure) => self.report.violate(
                    Counter::FailedWithoutFault,
                    1,
                    format!("{FAULT}: creating a sandbox (no fault) failed: {failure}"),
                ),
            }
            self.model().pending_create = None;
        }
        let Some(id) = target else {
            self.report
                .skipped
                .push(format!("{FAULT}: no running sandbox"));
            return Ok(());
        };
        let Some((pid, _)) = vm_processes(&self.service.home)
            .into_iter()
            .find(|(_, vm)| *vm == id)
        else {
            self.extra_failure(
                FAULT,
                format!("{id} is running but no QEMU process of it was found"),
            );
            return Ok(());
        };
        let other = self
            .model()
            .ids_in(Known::Running)
            .into_iter()
            .find(|o| *o != id);
        eprintln!(
            "warren bench faults: {FAULT}: SIGSTOP the QEMU of {id} (pid {pid}), then pause it"
        );
        signal(pid, nix::sys::signal::Signal::SIGSTOP);
        *self.report.faults.entry(FAULT.into()).or_default() += 1;
        let started = Instant::now();
        let pause = tokio::spawn(ops.clone().pause_owned(id.clone()));
        let mut serving_failures = Vec::new();
        while !pause.is_finished() && started.elapsed() < HUNG_VM_BOUND + Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(failure) = call(SERVING_BOUND, "GET /health", client.health()).await {
                serving_failures.push(failure.message);
            }
            if let Err(failure) = call(
                SERVING_BOUND,
                "GET /v1/sandboxes",
                client.list_sandboxes(&warren_client::ListSandboxes::default()),
            )
            .await
            {
                serving_failures.push(failure.message);
            }
            if let Some(other) = &other
                && let Err(failure) = call(
                    SERVING_BOUND * 3,
                    &format!("exec in the other sandbox {other}"),
                    client.exec(other, &ExecRequest::shell("true")),
                )
                .await
            {
                serving_failures.push(failure.message);
            }
        }
        let took = started.elapsed();
        let finished = pause.is_finished();
        signal(pid, nix::sys::signal::Signal::SIGCONT);
        let result = if finished {
            pause.await.unwrap_or_else(|join| {
                Err(Failure {
                    message: join.to_string(),
                    status: None,
                })
            })
        } else {
            // SIGCONT lets it finish; it answered too late either way.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, pause).await;
            Err(Failure {
                message: "no answer".into(),
                status: None,
            })
        };
        self.report.details.insert(
            "qmp_hang_pause_answer_s".into(),
            json!(round2(took.as_secs_f64())),
        );
        match (&result, finished && took <= HUNG_VM_BOUND) {
            (_, false) => self.extra_failure(
                FAULT,
                format!(
                    "the pause of {id} (QEMU stopped) did not answer within {} s (took {:.1} s)",
                    HUNG_VM_BOUND.as_secs(),
                    took.as_secs_f64()
                ),
            ),
            (Ok(_), true) => self.extra_failure(
                FAULT,
                format!("the pause of {id} succeeded although its QEMU was stopped"),
            ),
            (Err(failure), true) => {
                eprintln!(
                    "  pause failed after {:.1} s: {failure}",
                    took.as_secs_f64()
                );
                self.report
                    .details
                    .insert("qmp_hang_error".into(), json!(failure.message));
            }
        }
        if !serving_failures.is_empty() {
            serving_failures.truncate(5);
            self.extra_failure(
                FAULT,
                format!(
                    "warren did not keep serving while a VM hung: {}",
                    serving_failures.join("; ")
                ),
            );
        }
        let mut ctx = FaultContext::quiet(&format!("{FAULT} of {id}"));
        ctx.hung_vm = Some(id.clone());
        ctx.involved.insert(id);
        self.check(&ctx).await
    }

    // ---- load -----------------------------------------------------------------

    /// K running sandboxes, C clients: exec, write + read back, and now and
    /// then a pause/resume of one sandbox that the others race with.
    async fn load_phase(&mut self) -> Result<()> {
        let (k, clients, seconds) = (
            self.plan.load_sandboxes,
            self.plan.load_clients,
            self.plan.load_seconds,
        );
        if k == 0 || clients == 0 || seconds == 0 {
            self.report
                .skipped
                .push("load: disabled by the flags".into());
            return Ok(());
        }
        let ops = self.ops()?;
        let mut ids: Vec<String> = self.model().ids_in(Known::Running);
        ids.truncate(k);
        // Paused ones resume faster than new ones boot.
        let paused = self.model().ids_in(Known::Paused);
        for id in paused {
            if ids.len() >= k {
                break;
            }
            match ops.resume(&id).await {
                Ok(()) => ids.push(id),
                Err(failure) => self.report.violate(
                    Counter::FailedWithoutFault,
                    1,
                    format!("load: resuming {id} (no fault) failed: {failure}"),
                ),
            }
        }
        if ids.len() < k {
            eprintln!(
                "warren bench faults: load: creating {} more sandboxes",
                k - ids.len()
            );
        }
        while ids.len() < k {
            let batch = (k - ids.len()).min(2);
            let mut tasks = Vec::new();
            for _ in 0..batch {
                let tag = self.next_name("l");
                let ops = ops.clone();
                tasks.push(tokio::spawn(async move { ops.create(&tag, None).await }));
            }
            for task in tasks {
                match task.await? {
                    Ok(id) => ids.push(id),
                    Err(failure) => bail!("creating a load sandbox failed: {failure}"),
                }
            }
        }
        self.model().pending_create = None;
        self.report.load_sandboxes = ids.len();
        eprintln!(
            "warren bench faults: load: {clients} clients on {} sandboxes for {seconds} s",
            ids.len()
        );
        let ids = Arc::new(ids);
        let churn = ids[0].clone();
        self.report
            .details
            .insert("load_churned_sandbox".into(), json!(churn));
        let last_churn = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let deadline = origin + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for index in 0..clients {
            let client = self.service.client()?;
            let seed = self.rng.random::<u64>();
            tasks.push(tokio::spawn(load_client(LoadClient {
                client,
                ids: ids.clone(),
                churn: churn.clone(),
                last_churn: last_churn.clone(),
                origin,
                deadline,
                seed,
                index,
            })));
        }
        let mut total = LoadStats::default();
        for task in tasks {
            total.merge(task.await?);
        }
        eprintln!(
            "warren bench faults: load: {} requests, {} errors, {} conflicts, p50 {:.1} ms, p99 {:.1} ms",
            total.requests,
            total.errors,
            total.conflicts,
            percentile(&total.latencies_ms, 50.0),
            percentile(&total.latencies_ms, 99.0)
        );
        if total.writes_lost > 0 {
            self.report.violate(
                Counter::WritesLost,
                total.writes_lost,
                format!(
                    "load: {} acknowledged writes read back different: {}",
                    total.writes_lost,
                    total.error_samples.join("; ")
                ),
            );
        }
        let client = self.service.client()?;
        // The churned sandbox may have been left paused by a failed resume.
        if let Ok(sandbox) = call(REQUEST_TIMEOUT, "GET", client.get_sandbox(&churn)).await
            && sandbox.state == SandboxState::Paused
        {
            let mut model = self.model();
            if let Some(t) = model.sandboxes.get_mut(&churn) {
                t.state = Known::Paused;
            }
        }
        if total.pause_cycles > 0 {
            let mut model = self.model();
            if let Some(t) = model.sandboxes.get_mut(&churn) {
                t.snapshot = Some(t.files.clone());
            }
        }
        self.report.load = Some(total);
        Ok(())
    }

    // ---- the end ----------------------------------------------------------------

    /// Deletes everything through the API, stops warren with SIGTERM, and
    /// counts whatever is left of this directory.
    async fn shutdown(&mut self) -> Result<()> {
        eprintln!("warren bench faults: deleting every sandbox and snapshot, stopping warren");
        let client = self.service.client()?;
        let listing = self.listing(&client).await?;
        for sandbox in listing.values() {
            if sandbox.state == SandboxState::Stopped {
                continue;
            }
            if let Err(failure) = call(
                REQUEST_TIMEOUT,
                &format!("delete {}", sandbox.id),
                client.delete_sandbox(&sandbox.id),
            )
            .await
            {
                self.report.violate(
                    Counter::FailedWithoutFault,
                    1,
                    format!("at the end: {failure}"),
                );
            }
            self.model().forget(&sandbox.id);
        }
        for name in self.snapshot_names(&client).await? {
            if let Err(failure) = call(
                REQUEST_TIMEOUT,
                &format!("delete snapshot {name}"),
                client.delete_snapshot(&name),
            )
            .await
            {
                self.report.violate(
                    Counter::FailedWithoutFault,
                    1,
                    format!("at the end: {failure}"),
                );
            }
        }
        self.reconcile().await;
        self.scan_orphans(&client, "after deleting everything", true)
            .await?;
        if !self.service.terminate(Duration::from_secs(60)) {
            self.report.violate(
                Counter::FailedWithoutFault,
                1,
                "warren did not exit within 60 s of SIGTERM".into(),
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let home = self.service.home.clone();
        let phase = "after warren stopped".to_string();
        for (pid, id) in vm_processes(&home) {
            self.report.orphan(
                Orphan {
                    kind: "qemu".into(),
                    subject: format!("{id} (pid {pid})"),
                    reason: "still runs after every sandbox was deleted and warren stopped".into(),
                    phase: phase.clone(),
                },
                true,
            );
        }
        for (pid, id) in memfs_processes(&home) {
            self.report.orphan(
                Orphan {
                    kind: "memfs".into(),
                    subject: format!("{id} (pid {pid})"),
                    reason: "still runs after every sandbox was deleted and warren stopped".into(),
                    phase: phase.clone(),
                },
                true,
            );
        }
        for (namespace, id) in networks_of(&home) {
            self.report.orphan(
                Orphan {
                    kind: "network".into(),
                    subject: format!("{namespace} ({id})"),
                    reason: "still claimed after every sandbox was deleted and warren stopped"
                        .into(),
                    phase: phase.clone(),
                },
                true,
            );
        }
        let ram_dir = warren_sandbox::volatile_ram_dir_for(&home)?;
        for entry in ram_dir
            .iter()
            .flat_map(std::fs::read_dir)
            .flatten()
            .flatten()
        {
            self.report.orphan(
                Orphan {
                    kind: "ram".into(),
                    subject: entry.path().display().to_string(),
                    reason: "guest RAM still held in host memory after every sandbox was \
                             deleted and warren stopped"
                        .into(),
                    phase: phase.clone(),
                },
                true,
            );
        }
        Ok(())
    }
}

impl Ops {
    /// [`Ops::pause`] as an owned future, for a task.
    async fn pause_owned(self, id: String) -> Result<warren_client::PauseResult, Failure> {
        self.pause(&id).await
    }
}

/// What a sandbox may look like after a fault: which states it may be
/// listed in, with which contents, and whether it may be gone.
#[derive(Debug, Clone)]
struct Expectation {
    running: Option<Vec<Candidate>>,
    paused: Option<Vec<Candidate>>,
    /// `Ok(outcome name)` if it may be gone, else the counter and why not.
    gone: Result<&'static str, (Counter, String)>,
    /// Listed paused, its contents come from an acknowledged snapshot (not
    /// from a pause that was in flight): a wrong memory blob or disk file
    /// then is a lost snapshot rather than lost writes.
    paused_from_snapshot: bool,
    why: String,
}

impl Expectation {
    fn allowed(&self) -> String {
        let mut states = Vec::new();
        if self.running.is_some() {
            states.push("running");
        }
        if self.paused.is_some() {
            states.push("paused");
        }
        if self.gone.is_ok() {
            states.push("stopped");
        }
        states.join(" or ")
    }
}

fn candidate(files: &Files) -> Candidate {
    files
        .iter()
        .map(|(p, s)| (p.clone(), vec![Some(*s)]))
        .collect()
}

/// A candidate with no alternatives, as plain contents.
fn collapse(candidate: &Candidate) -> Option<Files> {
    let mut files = Files::new();
    for (path, alternatives) in candidate {
        match alternatives.as_slice() {
            [Some(sha)] => {
                files.insert(path.clone(), *sha);
            }
            [None] => {}
            _ => return None,
        }
    }
    Some(files)
}

/// The rules: what a sandbox may have become, given what was
/// acknowledged, what was in flight, and whether its VM was killed.
fn expectation(t: &Tracked, vm_died: bool, hung: bool) -> Expectation {
    let mut current = candidate(&t.files);
    if let Some(Pending::Write { path, sha }) = &t.pending {
        // The write may or may not have happened; uploads are atomic, so
        // the file is the old content or the new one, never a mix.
        current.insert(path.clone(), vec![t.files.get(path).copied(), Some(*sha)]);
    }
    let fallback = t.snapshot.as_ref().or(t.clone_base.as_ref()).map(candidate);
    let pending = t.pending.clone();
    if vm_died {
        let mut paused = Vec::new();
        if let Some(fallback) = &fallback {
            paused.push(fallback.clone());
        }
        if matches!(
            pending,
            Some(Pending::Pause | Pending::Resume | Pending::Snapshot)
        ) || t.state == Known::Paused
        {
            paused.push(current.clone());
        }
        let running = if hung {
            Some(vec![current.clone()])
        } else {
            fallback.clone().map(|f| vec![f])
        };
        let gone = if pending == Some(Pending::Delete) {
            Ok("deleted_while_its_vm_died")
        } else if t.snapshot.is_some() {
            Err((
                Counter::SnapshotsLost,
                "it had an acknowledged snapshot: when its VM dies it must fall back to it (paused)".to_string(),
            ))
        } else {
            Ok("vm_died_without_snapshot_stopped")
        };
        return Expectation {
            running,
            paused: (!paused.is_empty()).then_some(paused),
            gone,
            paused_from_snapshot: fallback.is_some() || t.state == Known::Paused,
            why: if hung {
                "its QEMU was stopped (SIGSTOP) during a pause".into()
            } else {
                format!(
                    "its QEMU was killed ({})",
                    describe_pending(&pending, t.state)
                )
            },
        };
    }
    let why = describe_pending(&pending, t.state);
    let lost_running = (
        Counter::SandboxesLost,
        "it was running and its VM was not killed".to_string(),
    );
    let lost_paused = (
        Counter::SnapshotsLost,
        "its pause was acknowledged".to_string(),
    );
    let both = || (Some(vec![current.clone()]), Some(vec![current.clone()]));
    let (running, paused, gone) = match (&pending, t.state) {
        (Some(Pending::Delete), Known::Running) => {
            (Some(vec![current.clone()]), None, Ok("deleted"))
        }
        (Some(Pending::Delete), Known::Paused) => {
            (None, Some(vec![current.clone()]), Ok("deleted"))
        }
        (Some(Pending::Pause), _) => {
            let (r, p) = both();
            (r, p, Err(lost_running))
        }
        (Some(Pending::Resume), _) => {
            let (r, p) = both();
            (r, p, Err(lost_paused))
        }
        (Some(Pending::Snapshot), Known::Running) => {
            let (r, p) = both();
            (r, p, Err(lost_running))
        }
        (_, Known::Running) => (Some(vec![current.clone()]), None, Err(lost_running)),
        (_, Known::Paused) => (None, Some(vec![current.clone()]), Err(lost_paused)),
    };
    Expectation {
        running,
        paused,
        gone,
        paused_from_snapshot: t.state == Known::Paused,
        why,
    }
}

fn describe_pending(pending: &Option<Pending>, state: Known) -> String {
    let state = match state {
        Known::Running => "running",
        Known::Paused => "paused",
    };
    match pending {
        None => format!("{state}, nothing in flight"),
        Some(Pending::Exec) => format!("{state}, exec in flight"),
        Some(Pending::Write { path, .. }) => format!("{state}, write of {path} in flight"),
        Some(Pending::Pause) => format!("{state}, pause in flight"),
        Some(Pending::Resume) => format!("{state}, resume in flight"),
        Some(Pending::Snapshot) => format!("{state}, snapshot in flight"),
        Some(Pending::Delete) => format!("{state}, delete in flight"),
    }
}

/// Paths whose content is none of the acceptable ones: (path, acceptable,
/// found).
fn mismatches(
    candidate: &Candidate,
    observed: &BTreeMap<String, Option<Sha>>,
) -> Vec<(String, Vec<Option<Sha>>, Option<Sha>)> {
    candidate
        .iter()
        .filter_map(|(path, acceptable)| {
            let got = observed.get(path).copied().flatten();
            (!acceptable.contains(&got)).then(|| (path.clone(), acceptable.clone(), got))
        })
        .collect()
}

/// Reads files of a sandbox and hashes them (`None`: the file does not
/// exist).
async fn read_paths(
    client: &Client,
    id: &str,
    paths: &BTreeSet<String>,
) -> Result<BTreeMap<String, Option<Sha>>, Failure> {
    let mut observed = BTreeMap::new();
    for path in paths {
        match call(
            REQUEST_TIMEOUT,
            &format!("GET {path} in {id}"),
            client.read_file(id, path),
        )
        .await
        {
            Ok(bytes) => {
                observed.insert(path.clone(), Some(sha(&bytes)));
            }
            Err(failure) if failure.status == Some(404) => {
                observed.insert(path.clone(), None);
            }
            Err(failure) => return Err(failure),
        }
    }
    Ok(observed)
}

/// One load-phase client.
struct LoadClient {
    client: Client,
    ids: Arc<Vec<String>>,
    churn: String,
    last_churn: Arc<AtomicU64>,
    origin: Instant,
    deadline: Instant,
    seed: u64,
    index: usize,
}

async fn load_client(c: LoadClient) -> LoadStats {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let mut stats = LoadStats::default();
    let mut round = 0u64;
    while Instant::now() < c.deadline {
        round += 1;
        let roll: f64 = rng.random();
        let now_ms = c.origin.elapsed().as_millis() as u64;
        let last = c.last_churn.load(Ordering::Relaxed);
        if roll < 0.05
            && now_ms >= last + CHURN_SPACING_MS
            && c.last_churn
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let started = Instant::now();
            let paused = call(
                LOAD_REQUEST_TIMEOUT,
                &format!("load: pause {}", c.churn),
                c.client.pause_sandbox(&c.churn),
            )
            .await;
            if stats.record(started, paused, false).is_some() {
                let started = Instant::now();
                let resumed = call(
                    LOAD_REQUEST_TIMEOUT,
                    &format!("load: resume {}", c.churn),
                    c.client.resume_sandbox(&c.churn),
                )
                .await;
                if stats.record(started, resumed, false).is_some() {
                    stats.pause_cycles += 1;
                }
            }
            continue;
        }
        let id = &c.ids[rng.random_range(0..c.ids.len())];
        if roll < 0.6 {
            let started = Instant::now();
            let result = call(
                LOAD_REQUEST_TIMEOUT,
                &format!("load: exec in {id}"),
                c.client.exec(id, &ExecRequest::shell("echo load")),
            )
            .await
            .and_then(|r| {
                if r.exit_code == Some(0) && r.stdout.trim() == "load" {
                    Ok(())
                } else {
                    Err(Failure {
                        message: format!(
                            "load: exec in {id}: exit {:?}, stdout {:?}, stderr {:?}",
                            r.exit_code, r.stdout, r.stderr
                        ),
                        status: None,
                    })
                }
            });
            stats.record(started, result, true);
        } else {
            let path = format!("/tmp/wf-load-{}-{}", c.index, round % 4);
            let mut data = vec![0u8; 4096];
            rng.fill(&mut data[..]);
            let digest = sha(&data);
            let started = Instant::now();
            let written = call(
                LOAD_REQUEST_TIMEOUT,
                &format!("load: write {path} in {id}"),
                c.client
                    .write_file(id, &path, Bytes::from(data), &UploadOptions::default()),
            )
            .await;
            if stats.record(started, written, true).is_none() {
                continue;
            }
            let started = Instant::now();
            let read = call(
                LOAD_REQUEST_TIMEOUT,
                &format!("load: read {path} in {id}"),
                c.client.read_file(id, &path),
            )
            .await;
            if let Some(bytes) = stats.record(started, read, true)
                && sha(&bytes) != digest
            {
                stats.errors += 1;
                stats.writes_lost += 1;
                if stats.error_samples.len() < 5 {
                    stats.error_samples.push(format!(
                        "load: {path} in {id} read back {} bytes that differ from the acknowledged write",
                        bytes.len()
                    ));
                }
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, u8)]) -> Files {
        pairs
            .iter()
            .map(|(p, b)| (p.to_string(), [*b; 32]))
            .collect()
    }

    fn observed(pairs: &[(&str, Option<u8>)]) -> BTreeMap<String, Option<Sha>> {
        pairs
            .iter()
            .map(|(p, b)| (p.to_string(), b.map(|b| [b; 32])))
            .collect()
    }

    #[test]
    fn an_acknowledged_pause_must_stay_paused_with_its_contents() {
        let mut t = Tracked::new("sb-a".into(), files(&[(MEM_BLOB, 1), (DISK_FILE, 2)]), None);
        t.state = Known::Paused;
        t.snapshot = Some(t.files.clone());
        let expect = expectation(&t, false, false);
        assert!(expect.running.is_none());
        assert!(matches!(expect.gone, Err((Counter::SnapshotsLost, _))));
        let paused = expect.paused.unwrap();
        assert!(
            mismatches(
                &paused[0],
                &observed(&[(MEM_BLOB, Some(1)), (DISK_FILE, Some(2))])
            )
            .is_empty()
        );
        assert_eq!(
            mismatches(
                &paused[0],
                &observed(&[(MEM_BLOB, Some(9)), (DISK_FILE, Some(2))])
            )
            .len(),
            1
        );
    }

    #[test]
    fn a_write_in_flight_may_or_may_not_have_happened_but_never_half() {
        let mut t = Tracked::new("sb-a".into(), files(&[("/root/x", 1)]), None);
        t.pending = Some(Pending::Write {
            path: "/root/x".into(),
            sha: [2; 32],
        });
        let expect = expectation(&t, false, false);
        let running = &expect.running.unwrap()[0];
        assert!(mismatches(running, &observed(&[("/root/x", Some(1))])).is_empty());
        assert!(mismatches(running, &observed(&[("/root/x", Some(2))])).is_empty());
        assert_eq!(
            mismatches(running, &observed(&[("/root/x", Some(3))])).len(),
            1
        );
        assert_eq!(
            mismatches(running, &observed(&[("/root/x", None)])).len(),
            1
        );
    }

    #[test]
    fn a_killed_vm_falls_back_to_its_snapshot_or_stops() {
        let mut t = Tracked::new("sb-a".into(), files(&[("/root/x", 1)]), None);
        let expect = expectation(&t, true, false);
        assert!(expect.gone.is_ok(), "no snapshot: stopped is fine");
        assert!(expect.running.is_none() && expect.paused.is_none());

        t.snapshot = Some(files(&[("/root/x", 7)]));
        let expect = expectation(&t, true, false);
        assert!(matches!(expect.gone, Err((Counter::SnapshotsLost, _))));
        let paused = expect.paused.unwrap();
        assert_eq!(paused.len(), 1);
        assert!(mismatches(&paused[0], &observed(&[("/root/x", Some(7))])).is_empty());
        assert!(!mismatches(&paused[0], &observed(&[("/root/x", Some(1))])).is_empty());
    }

    #[test]
    fn an_interrupted_pause_may_commit_or_not_but_not_revert() {
        let mut t = Tracked::new("sb-a".into(), files(&[("/root/x", 1)]), None);
        t.snapshot = Some(files(&[("/root/x", 7)]));
        t.pending = Some(Pending::Pause);
        let expect = expectation(&t, false, false);
        let paused = expect.paused.unwrap();
        assert!(mismatches(&paused[0], &observed(&[("/root/x", Some(1))])).is_empty());
        assert!(!mismatches(&paused[0], &observed(&[("/root/x", Some(7))])).is_empty());
        assert!(expect.running.is_some());
        assert!(matches!(expect.gone, Err((Counter::SandboxesLost, _))));
    }

    #[test]
    fn only_an_acknowledged_pause_makes_paused_contents_a_snapshot() {
        let mut t = Tracked::new("sb-a".into(), files(&[(MEM_BLOB, 1)]), None);
        t.pending = Some(Pending::Pause);
        assert!(!expectation(&t, false, false).paused_from_snapshot);
        t.pending = None;
        t.state = Known::Paused;
        assert!(expectation(&t, false, false).paused_from_snapshot);
        t.state = Known::Running;
        t.snapshot = Some(files(&[(MEM_BLOB, 2)]));
        assert!(expectation(&t, true, false).paused_from_snapshot);
    }

    #[test]
    fn collapse_refuses_alternatives() {
        let plain = candidate(&files(&[("/a", 1)]));
        assert_eq!(collapse(&plain), Some(files(&[("/a", 1)])));
        let doubt = Candidate::from([("/a".to_string(), vec![None, Some([1; 32])])]);
        assert_eq!(collapse(&doubt), None);
    }

    #[test]
    fn mount_points_are_mapped_to_sandboxes() {
        let home = Path::new("/tmp/wf-1");
        assert_eq!(
            sandbox_of_path(home, "/tmp/wf-1/sandboxes/sb-x/memfs"),
            Some("sb-x".to_string())
        );
        assert_eq!(sandbox_of_path(home, "/tmp/wf-10/sandboxes/sb-x"), None);
    }
}
