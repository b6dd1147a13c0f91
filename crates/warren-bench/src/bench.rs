//! `warren bench boot` and `warren bench api`: benchmark programs that
//! print JSON.
//!
//! Every figure is measured in the same run as its baseline, so ratios are
//! comparable across machines; nothing here asserts on time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncRead;
use warren_proto::link::HostLink;
use warren_sandbox::{Command, Manager, NoProgress, SandboxSpec, WriteOptions};

/// Options of `warren bench boot`.
#[derive(Debug, clap::Args)]
pub struct BootBenchArgs {
    /// Print one JSON object (the default output is also JSON; this flag
    /// exists for symmetry with other commands).
    #[arg(long)]
    pub json: bool,
    /// Cold creates (and plain-QEMU boots) to measure.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// `true` execs to time.
    #[arg(long, default_value_t = 100)]
    pub exec_runs: usize,
    /// Size of the file transfers, MiB.
    #[arg(long, default_value_t = 64)]
    pub transfer_mib: u64,
    /// The sandboxes timed.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The sandboxes a benchmark times (`--image`, `--memory`, `--cpus`), the
/// same flags in every benchmark that creates them.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Image (or template) of the timed sandboxes.
    #[arg(long, default_value = warren_sandbox::spec::DEFAULT_IMAGE)]
    pub image: String,
    /// Guest memory of the timed sandboxes, MiB.
    #[arg(long, default_value_t = warren_sandbox::spec::DEFAULT_MEMORY_MIB)]
    pub memory: u32,
    /// vCPUs of the timed sandboxes.
    #[arg(long, default_value_t = warren_sandbox::spec::DEFAULT_VCPUS)]
    pub cpus: u32,
    /// Time sandboxes without a network card (as before networks
    /// existed; `warren bench net` measures what a network costs).
    #[arg(long)]
    pub no_network: bool,
}

impl SandboxArgs {
    /// The spec every timed sandbox is created with.
    pub fn spec(&self) -> SandboxSpec {
        let spec = SandboxSpec {
            image: self.image.clone(),
            memory_mib: self.memory,
            vcpus: self.cpus,
            ..SandboxSpec::default()
        };
        if self.no_network {
            SandboxSpec {
                network: None,
                ..spec
            }
        } else {
            spec
        }
    }
}

/// Plain QEMU (`$WARREN_QEMU`, or `qemu-system-x86_64` on the PATH) with
/// `args` and no warren around it, killed on drop: the baseline the
/// benchmarks time warren against.
pub(crate) fn spawn_plain_qemu(
    args: &[std::ffi::OsString],
    stderr: std::process::Stdio,
) -> std::io::Result<tokio::process::Child> {
    let binary = std::env::var_os("WARREN_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    tokio::process::Command::new(binary)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
}

/// Builds (or finds) `spec`'s image, showing progress, and creates and
/// destroys one sandbox of it, so the host page cache is warm for every
/// timed path alike.
pub(crate) async fn prepare_and_warm(
    manager: &Manager,
    spec: &SandboxSpec,
    bench: &str,
) -> Result<warren_image::Image> {
    eprintln!("warren bench {bench}: preparing image {:?}", spec.image);
    let image = manager
        .prepare_image(
            &spec.image,
            Arc::new(warren_cmdline::SpinnerProgress::new(false)),
        )
        .await?;
    let warm = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
    warm.destroy().await?;
    Ok(image)
}

/// Percentile of already-collected samples (nearest rank).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub(crate) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Runs the boot benchmark and returns its JSON report.
pub async fn boot(manager: Manager, args: BootBenchArgs) -> Result<Value> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let spec = args.sandbox.spec();
    let image = prepare_and_warm(&manager, &spec, "boot").await?;

    let mut create_ms = Vec::new();
    let mut raw_ms = Vec::new();
    for run in 0..args.runs {
        raw_ms.push(ms(raw_qemu_boot(&manager, &spec, &image, run).await?));
        let start = Instant::now();
        let sandbox = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
        create_ms.push(ms(start.elapsed()));
        sandbox.destroy().await?;
        eprintln!(
            "  run {}/{}: create {:.0} ms, plain qemu {:.0} ms",
            run + 1,
            args.runs,
            create_ms[run],
            raw_ms[run]
        );
    }

    let sandbox = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
    // Idle memory first, before transfers grow the page cache.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = sandbox.host_memory().context("reading VM memory")?;

    for _ in 0..5 {
        sandbox.run(Command::new("true")).await?;
    }
    let mut exec_ms = Vec::new();
    for _ in 0..args.exec_runs {
        let start = Instant::now();
        let output = sandbox.run(Command::new("true")).await?;
        exec_ms.push(ms(start.elapsed()));
        if !output.status.success() {
            bail!("`true` failed in the sandbox: {:?}", output.status);
        }
    }
    let mut ping_ms = Vec::new();
    for _ in 0..50 {
        ping_ms.push(ms(sandbox.ping().await?));
    }

    let bytes = args.transfer_mib * 1024 * 1024;
    let payload = pattern(bytes as usize);
    let mut upload = Vec::new();
    let mut download = Vec::new();
    let mut raw_up = Vec::new();
    let mut raw_down = Vec::new();
    let mut sink_up = Vec::new();
    let mut source_down = Vec::new();
    for _ in 0..TRANSFER_ROUNDS {
        // The same transfers with the guest's file system out of the way
        // (appending to /dev/null, reading /dev/zero): what the protocol
        // alone costs, to tell it apart from guest page-cache work.
        let mut reader: &[u8] = &payload;
        let start = Instant::now();
        let options = WriteOptions {
            append: true,
            ..WriteOptions::default()
        };
        sandbox
            .write_file_from("/dev/null", &mut reader, options, &())
            .await?;
        sink_up.push(mib_s(bytes, start.elapsed()));
        let start = Instant::now();
        let mut sink = tokio::io::sink();
        let read = sandbox
            .read_file_range_to("/dev/zero", 0, bytes, &mut sink)
            .await?;
        source_down.push(mib_s(read, start.elapsed()));

        let mut reader: &[u8] = &payload;
        let start = Instant::now();
        write(&sandbox, "/tmp/bench.bin", &mut reader, bytes).await?;
        upload.push(mib_s(bytes, start.elapsed()));

        let start = Instant::now();
        let (read, _) = sandbox
            .read_file_to("/tmp/bench.bin", &mut tokio::io::sink(), &())
            .await?;
        download.push(mib_s(bytes, start.elapsed()));
        if read != bytes {
            bail!("downloaded {read} bytes, expected {bytes}");
        }

        raw_up.push(sandbox.raw_upload(bytes).await?.mib_per_s());
        raw_down.push(sandbox.raw_download(bytes).await?.mib_per_s());
    }
    sandbox.destroy().await?;

    let create_p50 = percentile(&create_ms, 50.0);
    let raw_p50 = percentile(&raw_ms, 50.0);
    let upload_mib_s = percentile(&upload, 50.0);
    let download_mib_s = percentile(&download, 50.0);
    let raw_upload = percentile(&raw_up, 50.0);
    let raw_download = percentile(&raw_down, 50.0);
    Ok(json!({
        "benchmark": "boot",
        "accel": manager.accel().as_str(),
        "image": args.sandbox.image,
        "memory_mib": args.sandbox.memory,
        "vcpus": args.sandbox.cpus,
        "runs": args.runs,
        "cold_create_ms_p50": round2(create_p50),
        "cold_create_ms_p99": round2(percentile(&create_ms, 99.0)),
        "cold_create_ms_all": create_ms.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "raw_qemu_boot_ms_p50": round2(raw_p50),
        "raw_qemu_boot_ms_all": raw_ms.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        // Ratios pair the samples of one round (taken back to back), so
        // that drift in the host's speed over the run cancels out.
        "create_vs_raw_ratio": round2(paired_ratio(&create_ms, &raw_ms)),
        "exec_true_ms_p50": round2(percentile(&exec_ms, 50.0)),
        "exec_true_ms_p99": round2(percentile(&exec_ms, 99.0)),
        "link_ping_ms_p50": round2(percentile(&ping_ms, 50.0)),
        "transfer_mib": args.transfer_mib,
        "upload_mib_s": round2(upload_mib_s),
        "download_mib_s": round2(download_mib_s),
        "raw_channel_upload_mib_s": round2(raw_upload),
        "raw_channel_download_mib_s": round2(raw_download),
        "upload_vs_raw_ratio": round2(paired_ratio(&upload, &raw_up)),
        "upload_mib_s_all": upload.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "raw_channel_upload_mib_s_all": raw_up.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "upload_to_dev_null_mib_s": round2(percentile(&sink_up, 50.0)),
        "download_from_dev_zero_mib_s": round2(percentile(&source_down, 50.0)),
        "download_vs_raw_ratio": round2(paired_ratio(&download, &raw_down)),
        "idle_host_rss_mib": round2(idle.rss_bytes as f64 / 1048576.0),
        "idle_host_pss_mib": round2(idle.pss_bytes as f64 / 1048576.0),
    }))
}

/// Rounds of the transfer measurements (each: every transfer once).
const TRANSFER_ROUNDS: usize = 5;

/// The median of `a[i] / b[i]`: samples of round `i` were taken back to
/// back, so each pair shares the host's speed of that moment.
pub(crate) fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    percentile(&ratios, 50.0)
}

async fn write<R: AsyncRead + Unpin + Send>(
    sandbox: &warren_sandbox::Sandbox,
    path: &str,
    reader: &mut R,
    size: u64,
) -> Result<()> {
    // The size is known, as it is for `warren cp` or an HTTP upload with
    // a Content-Length.
    let options = WriteOptions {
        size_hint: Some(size),
        ..WriteOptions::default()
    };
    sandbox.write_file_from(path, reader, options, &()).await?;
    Ok(())
}

fn mib_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1048576.0 / elapsed.as_secs_f64().max(1e-9)
}

/// Incompressible-looking bytes, so nothing on the path can cheat with zero
/// pages or compression.
fn pattern(len: usize) -> Vec<u8> {
    warren_testkit::pattern(len, 0x9E37_79B9_7F4A_7C15)
}

/// Boots the same kernel, initramfs and disk with plain QEMU (the same
/// arguments warren uses, no warren in the loop) and times it to the same
/// point: the agent's handshake answer.
async fn raw_qemu_boot(
    manager: &Manager,
    spec: &SandboxSpec,
    image: &warren_image::Image,
    run: usize,
) -> Result<Duration> {
    let dir = manager
        .sandboxes_dir()
        .join(format!("bench-raw-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = raw_qemu_boot_in(manager, spec, image, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn raw_qemu_boot_in(
    manager: &Manager,
    spec: &SandboxSpec,
    image: &warren_image::Image,
    dir: &Path,
) -> Result<Duration> {
    let disk = dir.join("disk.qcow2");
    let status = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image.rootfs)
        .arg(&disk)
        .status()
        .await?;
    if !status.success() {
        bail!("qemu-img create failed: {status}");
    }
    let mut config = manager.vm_config("bench-raw", dir, spec, image, &disk);
    // RAM where warren's own VMs keep it, so both boots do the same work.
    let volatile = manager.volatile_ram_dir().map(|ram| {
        ram.join(format!(
            "{}.memory",
            dir.file_name().unwrap().to_string_lossy()
        ))
    });
    config.memory_file = volatile.clone();
    let args = warren_vmm::qemu::cmdline::build_args(&config);
    let _remove_ram = volatile.map(RemoveOnDrop);
    let socket = dir.join(warren_vmm::config::files::AGENT_SOCKET);

    let start = Instant::now();
    let mut child = spawn_plain_qemu(&args, std::process::Stdio::null())?;
    let ready = async {
        agent_handshake(&socket, Duration::from_secs(300)).await?;
        anyhow::Ok(start.elapsed())
    };
    let elapsed = tokio::select! {
        elapsed = ready => elapsed?,
        status = child.wait() => bail!("plain QEMU exited during the boot benchmark: {:?}", status?),
    };
    child.kill().await?;
    Ok(elapsed)
}

/// Waits for a plain QEMU's agent socket and its handshake: the point both
/// raw baselines (boot and restore) are timed to.
pub(crate) async fn agent_handshake(socket: &Path, timeout: Duration) -> Result<()> {
    loop {
        if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
            let _link = HostLink::establish(stream, timeout).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Options of `warren bench api`.
#[derive(Debug, clap::Args)]
pub struct ApiBenchArgs {
    /// Print one JSON object (the output is always JSON; for symmetry).
    #[arg(long)]
    pub json: bool,
    /// Creates to time through each path (API and library), interleaved.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// `true` execs to time through each of POST /exec and exec/ws.
    #[arg(long, default_value_t = 50)]
    pub exec_runs: usize,
    /// Sandbox records present while listing is measured (the sandboxes
    /// are real: created, then deleted, whose records stay as stopped).
    #[arg(long, default_value_t = 100)]
    pub list_records: usize,
    /// Template of the extra sandboxes created for the listing.
    #[arg(long, default_value = "tiny")]
    pub list_template: String,
    /// Memory (MiB) of the extra sandboxes created for the listing.
    #[arg(long, default_value_t = 128)]
    pub list_memory: u32,
    /// Seconds to measure listing for.
    #[arg(long, default_value_t = 3)]
    pub list_secs: u64,
    /// The sandboxes timed.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// A `warren up` child process with its own data directory; stopped (and
/// the directory removed) when dropped, even on error.
pub(crate) struct ServiceChild {
    up: Option<warren_testkit::WarrenUp>,
    home: std::path::PathBuf,
}

impl ServiceChild {
    /// Starts `warren` `up` on a free loopback port, sharing `image_cache`.
    pub(crate) fn start(warren: &Path, accel: &str, image_cache: &Path) -> Result<Self> {
        let home = std::env::temp_dir().join(format!("warren-bench-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home)?;
        let up = warren_testkit::UpCommand::new(warren, &home)?
            .global_args(["--accel", accel])
            .image_cache(image_cache)
            .env("WARREN_MAX_SANDBOXES", "1000")
            .spawn()
            .context("starting `warren up`")?;
        Ok(Self { up: Some(up), home })
    }

    /// Waits until the service answers, and returns a client of it.
    pub(crate) fn client(&mut self) -> Result<warren_client::Client> {
        let up = self.up.as_mut().context("`warren up` was stopped")?;
        let key = tokio::task::block_in_place(|| up.wait_ready(Duration::from_secs(120)))?;
        Ok(warren_client::Client::new(up.url(), key)?)
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut up) = self.up.take() {
            up.terminate(Duration::from_secs(30));
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

impl Drop for ServiceChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the API benchmark: the same creates through `POST /v1/sandboxes`
/// of a `warren up` child and through `Manager::create` in this process,
/// interleaved; exec over REST and over the WebSocket; listing with many
/// records present.
pub async fn api(
    config: warren_sandbox::ManagerConfig,
    warren: &Path,
    accel: &str,
    args: ApiBenchArgs,
) -> Result<Value> {
    if args.runs == 0 || args.exec_runs == 0 {
        bail!("--runs and --exec-runs must be at least 1");
    }
    let image_cache = config
        .image_cache
        .clone()
        .unwrap_or_else(|| config.data_dir.join("images"));
    let manager = Manager::new(config).context("setting up warren")?;
    let spec = args.sandbox.spec();
    let request = warren_client::CreateSandbox {
        template: Some(args.sandbox.image.clone()),
        cpus: Some(args.sandbox.cpus),
        memory_mib: Some(args.sandbox.memory),
        ..warren_client::CreateSandbox::default()
    };
    eprintln!("warren bench api: preparing images");
    for image in [args.sandbox.image.as_str(), args.list_template.as_str()] {
        manager
            .prepare_image(image, Arc::new(warren_cmdline::SpinnerProgress::new(false)))
            .await
            .with_context(|| format!("preparing image {image}"))?;
    }

    eprintln!(
        "warren bench api: starting `warren up` (shared image cache {})",
        image_cache.display()
    );
    let mut service = ServiceChild::start(warren, accel, &image_cache)?;
    let client = service.client()?;

    // Warm both paths alike (page cache, the service's first connection).
    eprintln!("warren bench api: warming up");
    manager
        .create(spec.clone(), Arc::new(NoProgress))
        .await?
        .destroy()
        .await?;
    let warm = client.create_sandbox(&request).await?;
    client.delete_sandbox(&warm.id).await?;

    let mut api_ms = Vec::new();
    let mut api_ids = Vec::new();
    let mut library_ms = Vec::new();
    for run in 0..args.runs {
        // Alternate which path goes first, so neither always follows the
        // other's teardown.
        for api_turn in [run % 2 == 0, run % 2 != 0] {
            if api_turn {
                let start = Instant::now();
                let sandbox = client.create_sandbox(&request).await?;
                api_ms.push(ms(start.elapsed()));
                client.delete_sandbox(&sandbox.id).await?;
                api_ids.push(sandbox.id);
            } else {
                let start = Instant::now();
                let sandbox = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
                library_ms.push(ms(start.elapsed()));
                sandbox.destroy().await?;
            }
        }
        eprintln!(
            "  create {}/{}: api {:.0} ms, library {:.0} ms",
            run + 1,
            args.runs,
            api_ms[run],
            library_ms[run]
        );
    }

    // The service's own measure of each create (around the host agent's
    // create, from the `sandbox.created` event): what the API adds on top
    // (HTTP, auth, database) is the difference.
    let events = client
        .list_events(&warren_client::ListEvents {
            sandbox_id: None,
            limit: Some(1000),
        })
        .await?;
    let mut service_ms = Vec::new();
    let mut overhead_ms = Vec::new();
    for (id, total) in api_ids.iter().zip(&api_ms) {
        let boot = events
            .events
            .iter()
            .find(|e| e.kind == "sandbox.created" && e.sandbox_id.as_deref() == Some(id))
            .and_then(|e| e.detail.get("boot_ms"))
            .and_then(Value::as_f64);
        if let Some(boot) = boot {
            service_ms.push(boot);
            overhead_ms.push(total - boot);
        }
    }

    eprintln!(
        "warren bench api: exec `true` {} times each over REST and exec/ws",
        args.exec_runs
    );
    let sandbox = client.create_sandbox(&request).await?;
    let exec_request = warren_client::ExecRequest::argv(["true"]);
    let stream_request = warren_client::StreamExec::argv(["true"]);
    let exec_ws = |client: &warren_client::Client| {
        let client = client.clone();
        let id = sandbox.id.clone();
        let stream_request = stream_request.clone();
        async move {
            let session = client.exec_stream(&id, &stream_request).await?;
            anyhow::Ok(session.wait_with_output().await?.status)
        }
    };
    for _ in 0..5 {
        client.exec(&sandbox.id, &exec_request).await?;
        exec_ws(&client).await?;
    }
    let mut rest_ms = Vec::new();
    let mut ws_ms = Vec::new();
    for _ in 0..args.exec_runs {
        let start = Instant::now();
        let result = client.exec(&sandbox.id, &exec_request).await?;
        rest_ms.push(ms(start.elapsed()));
        if result.exit_code != Some(0) {
            bail!("`true` over REST exited {:?}", result.status());
        }
        let start = Instant::now();
        let status = exec_ws(&client).await?;
        ws_ms.push(ms(start.elapsed()));
        if !status.success() {
            bail!("`true` over exec/ws exited {status:?}");
        }
    }
    client.delete_sandbox(&sandbox.id).await?;

    let present = client
        .list_sandboxes(&warren_client::ListSandboxes::default())
        .await?
        .sandboxes
        .len();
    let missing = args.list_records.saturating_sub(present);
    if missing > 0 {
        eprintln!(
            "warren bench api: creating and deleting {missing} {} sandboxes ({} MiB) for {} records",
            args.list_template, args.list_memory, args.list_records
        );
    }
    let filler = warren_client::CreateSandbox {
        template: Some(args.list_template.clone()),
        memory_mib: Some(args.list_memory),
        ..warren_client::CreateSandbox::default()
    };
    // Two at a time: real sandboxes, each created and deleted through the
    // API, only sooner.
    let mut fill = futures::stream::iter(0..missing)
        .map(|_| {
            let client = client.clone();
            let filler = filler.clone();
            async move {
                let sandbox = client.create_sandbox(&filler).await?;
                client.delete_sandbox(&sandbox.id).await
            }
        })
        .buffer_unordered(2);
    let mut done = 0;
    while let Some(result) = fill.next().await {
        result.with_context(|| {
            format!(
                "creating a {} sandbox for the listing (use --list-template debian if that template cannot be built here)",
                args.list_template
            )
        })?;
        done += 1;
        if done % 10 == 0 || done == missing {
            eprintln!("  {done}/{missing}");
        }
    }
    drop(fill);
    let filter = warren_client::ListSandboxes::default();
    let records = client.list_sandboxes(&filter).await?.sandboxes.len();
    for _ in 0..20 {
        client.list_sandboxes(&filter).await?;
    }
    eprintln!(
        "warren bench api: listing {records} records for {} s",
        args.list_secs
    );
    let start = Instant::now();
    let mut requests = 0u64;
    while start.elapsed() < Duration::from_secs(args.list_secs.max(1)) {
        let listed = client.list_sandboxes(&filter).await?;
        if listed.sandboxes.len() != records {
            bail!(
                "listed {} sandboxes, expected {records}",
                listed.sandboxes.len()
            );
        }
        requests += 1;
    }
    let list_req_s = requests as f64 / start.elapsed().as_secs_f64();
    service.stop();

    let api_p50 = percentile(&api_ms, 50.0);
    let library_p50 = percentile(&library_ms, 50.0);
    Ok(json!({
        "benchmark": "api",
        "accel": manager.accel().as_str(),
        "image": args.sandbox.image,
        "memory_mib": args.sandbox.memory,
        "vcpus": args.sandbox.cpus,
        "runs": args.runs,
        "service": "warren up child process, loopback HTTP/1.1",
        "create_via_api_ms_p50": round2(api_p50),
        "create_via_library_ms_p50": round2(library_p50),
        // Each run's two creates ran back to back: pair them (see paired_ratio).
        "create_api_vs_library_ratio": round2(paired_ratio(&api_ms, &library_ms)),
        "create_via_api_ms_all": api_ms.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "create_via_library_ms_all": library_ms.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "create_in_service_ms_p50": round2(percentile(&service_ms, 50.0)),
        "create_api_overhead_ms_p50": round2(percentile(&overhead_ms, 50.0)),
        "exec_runs": args.exec_runs,
        "exec_rest_ms_p50": round2(percentile(&rest_ms, 50.0)),
        "exec_rest_ms_p99": round2(percentile(&rest_ms, 99.0)),
        "exec_ws_ms_p50": round2(percentile(&ws_ms, 50.0)),
        "exec_ws_ms_p99": round2(percentile(&ws_ms, 99.0)),
        "list_records": records,
        "list_template": args.list_template,
        "list_requests": requests,
        "list_clients": 1,
        "list_100_sandboxes_req_s": round2(list_req_s),
    }))
}

/// Removes a file when dropped (plain QEMU's RAM file on every exit path).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&samples, 50.0), 3.0);
        assert_eq!(percentile(&samples, 99.0), 5.0);
        assert_eq!(percentile(&samples, 0.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn paired_ratios_follow_each_round() {
        // Two rounds at 2x on a host whose speed drifts, one outlier: the
        // median pair says 2x, the ratio of the medians would say 0.8x.
        let ours = [3.0, 10.0, 4.0];
        let baseline = [1.5, 5.0, 8.0];
        assert_eq!(paired_ratio(&ours, &baseline), 2.0);
        assert_eq!(percentile(&ours, 50.0) / percentile(&baseline, 50.0), 0.8);
    }

    #[test]
    fn pattern_is_not_trivially_compressible() {
        let data = pattern(4096);
        assert_eq!(data.len(), 4096);
        assert!(data.iter().filter(|&&b| b == 0).count() < 64);
    }
}
