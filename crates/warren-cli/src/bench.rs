//! `warren bench ...`: benchmark programs that print JSON.
//!
//! Every figure is measured in the same run as its baseline, so ratios are
//! comparable across machines; nothing here asserts on time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
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
    /// Image to boot.
    #[arg(long, default_value = warren_sandbox::spec::DEFAULT_IMAGE)]
    pub image: String,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = warren_sandbox::spec::DEFAULT_MEMORY_MIB)]
    pub memory: u32,
    /// vCPUs of the sandboxes.
    #[arg(long, default_value_t = warren_sandbox::spec::DEFAULT_VCPUS)]
    pub cpus: u32,
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

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Runs the boot benchmark and returns its JSON report.
pub async fn boot(manager: Manager, args: BootBenchArgs) -> Result<Value> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let spec = SandboxSpec {
        image: args.image.clone(),
        memory_mib: args.memory,
        vcpus: args.cpus,
        ..SandboxSpec::default()
    };
    eprintln!("warren bench boot: preparing image {:?}", spec.image);
    let image = manager
        .prepare_image(
            &spec.image,
            Arc::new(crate::progress::SpinnerProgress::new(false)),
        )
        .await?;

    // Warm the host page cache for both paths alike.
    let warm = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
    warm.destroy().await?;

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
    for _ in 0..3 {
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
        write(&sandbox, "/tmp/bench.bin", &mut reader).await?;
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
        "image": args.image,
        "memory_mib": args.memory,
        "vcpus": args.cpus,
        "runs": args.runs,
        "cold_create_ms_p50": round2(create_p50),
        "cold_create_ms_p99": round2(percentile(&create_ms, 99.0)),
        "cold_create_ms_all": create_ms.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "raw_qemu_boot_ms_p50": round2(raw_p50),
        "raw_qemu_boot_ms_all": raw_ms.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "create_vs_raw_ratio": round2(create_p50 / raw_p50),
        "exec_true_ms_p50": round2(percentile(&exec_ms, 50.0)),
        "exec_true_ms_p99": round2(percentile(&exec_ms, 99.0)),
        "link_ping_ms_p50": round2(percentile(&ping_ms, 50.0)),
        "transfer_mib": args.transfer_mib,
        "upload_mib_s": round2(upload_mib_s),
        "download_mib_s": round2(download_mib_s),
        "raw_channel_upload_mib_s": round2(raw_upload),
        "raw_channel_download_mib_s": round2(raw_download),
        "upload_vs_raw_ratio": round2(upload_mib_s / raw_upload),
        "upload_to_dev_null_mib_s": round2(percentile(&sink_up, 50.0)),
        "download_from_dev_zero_mib_s": round2(percentile(&source_down, 50.0)),
        "download_vs_raw_ratio": round2(download_mib_s / raw_download),
        "idle_host_rss_mib": round2(idle.rss_bytes as f64 / 1048576.0),
        "idle_host_pss_mib": round2(idle.pss_bytes as f64 / 1048576.0),
    }))
}

async fn write<R: AsyncRead + Unpin + Send>(
    sandbox: &warren_sandbox::Sandbox,
    path: &str,
    reader: &mut R,
) -> Result<()> {
    sandbox
        .write_file_from(path, reader, WriteOptions::default(), &())
        .await?;
    Ok(())
}

fn mib_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1048576.0 / elapsed.as_secs_f64().max(1e-9)
}

/// Incompressible-looking bytes (xorshift), so nothing on the path can
/// cheat with zero pages or compression.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
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
    let config = manager.vm_config("bench-raw", dir, spec, image, &disk);
    let args = warren_vmm::qemu::cmdline::build_args(&config);
    let binary = std::env::var_os("WARREN_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    let socket = dir.join(warren_vmm::config::files::AGENT_SOCKET);

    let start = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ready = async {
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
                let _link = HostLink::establish(stream, Duration::from_secs(300)).await?;
                return anyhow::Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let elapsed = tokio::select! {
        elapsed = ready => elapsed?,
        status = child.wait() => bail!("plain QEMU exited during the boot benchmark: {:?}", status?),
    };
    child.kill().await?;
    Ok(elapsed)
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
    fn pattern_is_not_trivially_compressible() {
        let data = pattern(4096);
        assert_eq!(data.len(), 4096);
        assert!(data.iter().filter(|&&b| b == 0).count() < 64);
    }
}
