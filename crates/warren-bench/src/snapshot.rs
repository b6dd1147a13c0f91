//! `warren bench snapshot`: pause, resume and clone figures, each next to a
//! baseline measured in the same run (cold create, plain QEMU restoring the
//! same snapshot).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use warren_sandbox::{Command, Manager, NoProgress, PauseOptions, Sandbox, SandboxSpec};

use crate::bench::{agent_handshake, ms, percentile, prepare_and_warm, round2, spawn_plain_qemu};

/// Options of `warren bench snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotBenchArgs {
    /// Print one JSON object (the output is JSON either way).
    #[arg(long)]
    pub json: bool,
    /// Samples per figure (cold creates, resumes, clones, raw restores).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Image to boot.
    #[arg(long, default_value = warren_sandbox::spec::DEFAULT_IMAGE)]
    pub image: String,
    /// Guest memory sizes (MiB) at which resume is timed.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,2048")]
    pub resume_sizes: Vec<u32>,
}

fn mib(bytes: u64) -> f64 {
    round2(bytes as f64 / (1024.0 * 1024.0))
}

async fn sh(sandbox: &Sandbox, line: &str) -> Result<()> {
    let output = sandbox.run(Command::shell(line)).await?;
    if !output.status.success() {
        bail!("`{line}` failed in the guest: {}", output.stderr_text());
    }
    Ok(())
}

async fn pause(sandbox: &Sandbox) -> Result<(f64, warren_sandbox::PauseReport)> {
    let start = Instant::now();
    let report = sandbox
        .pause(&PauseOptions::default())
        .await
        .with_context(|| format!("pausing {}", sandbox.id()))?;
    Ok((ms(start.elapsed()), report))
}

async fn resume(manager: &Manager, id: &str) -> Result<(f64, Sandbox)> {
    let start = Instant::now();
    let (sandbox, _) = manager
        .resume(id)
        .await
        .with_context(|| format!("resuming {id}"))?;
    Ok((ms(start.elapsed()), sandbox))
}

/// PSS of a sandbox's processes (QEMU and its memory daemon), bytes.
fn sandbox_pss(sandbox: &Sandbox) -> u64 {
    let vm = sandbox.host_memory().map_or(0, |m| m.pss_bytes);
    let daemon = sandbox
        .memfs_pid()
        .and_then(warren_vmm::host::process_memory)
        .map_or(0, |m| m.pss_bytes);
    vm + daemon
}

/// Runs the snapshot benchmark and returns its JSON report.
pub async fn snapshot(manager: Manager, args: SnapshotBenchArgs) -> Result<Value> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    // No network card: the plain-QEMU restore it is compared with has
    // none either (`warren bench net` measures what a network adds).
    let base = SandboxSpec {
        image: args.image.clone(),
        network: None,
        ..SandboxSpec::default()
    };
    prepare_and_warm(&manager, &base, "snapshot").await?;

    // Cold creates, and the idle memory of a cold sandbox.
    let mut cold_ms = Vec::new();
    for run in 0..args.runs {
        let start = Instant::now();
        let sandbox = manager.create(base.clone(), Arc::new(NoProgress)).await?;
        cold_ms.push(ms(start.elapsed()));
        eprintln!(
            "  cold create {}/{}: {:.0} ms",
            run + 1,
            args.runs,
            cold_ms[run]
        );
        sandbox.destroy().await?;
    }
    let cold = manager.create(base.clone(), Arc::new(NoProgress)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cold_pss = sandbox_pss(&cold);

    // Full pause, then diffs of known size.
    let id = cold.id().to_string();
    let (pause_full_ms, full) = pause(&cold).await?;
    drop(cold);
    eprintln!(
        "  full pause: {pause_full_ms:.0} ms, {} MiB",
        mib(full.memory_bytes)
    );
    let mut diffs = serde_json::Map::new();
    let mut diff_ratio_worst: f64 = 0.0;
    for dirty_mib in [1u64, 16, 64] {
        let (_, sandbox) = resume(&manager, &id).await?;
        sh(
            &sandbox,
            &format!(
                "head -c {} /dev/urandom > /dev/shm/dirty-{dirty_mib}",
                dirty_mib << 20
            ),
        )
        .await?;
        let (pause_ms, report) = pause(&sandbox).await?;
        drop(sandbox);
        let dirtied = dirty_mib << 20;
        let allowed = dirtied as f64 * 1.1 + (1u64 << 20) as f64;
        diff_ratio_worst = diff_ratio_worst.max(report.memory_bytes as f64 / allowed);
        eprintln!(
            "  diff pause after {dirty_mib} MiB: {pause_ms:.0} ms, {} MiB ({} MiB before compression)",
            mib(report.memory_bytes),
            mib(report.dirty_bytes)
        );
        diffs.insert(
            format!("pause_diff_{dirty_mib}mib_ms"),
            json!(round2(pause_ms)),
        );
        diffs.insert(
            format!("pause_diff_{dirty_mib}mib_bytes"),
            json!(report.memory_bytes),
        );
        // Before compression: what the same diff would take stored sparse.
        diffs.insert(
            format!("pause_diff_{dirty_mib}mib_dirty_bytes"),
            json!(report.dirty_bytes),
        );
    }
    manager.remove_paused(&id)?;

    // Resume at several memory sizes, and plain QEMU restoring the same
    // snapshot.
    let mut resume_p50 = serde_json::Map::new();
    let mut resume_by_size = Vec::new();
    let mut raw_restore = Vec::new();
    let mut ours_at_first_size = Vec::new();
    for (index, memory_mib) in args.resume_sizes.iter().copied().enumerate() {
        let spec = SandboxSpec {
            memory_mib,
            ..base.clone()
        };
        let sandbox = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
        let id = sandbox.id().to_string();
        pause(&sandbox).await?;
        drop(sandbox);
        // Every pause here merges its diff into the one generation, so each
        // resume starts from a one-generation snapshot, as plain QEMU's
        // restore does. At the first size the two take turns (QEMU leaves
        // the snapshot untouched), so both see the same machine load.
        let merge_every_pause = PauseOptions {
            merge_cap: 1,
            ..PauseOptions::default()
        };
        let mut samples = Vec::new();
        for _ in 0..args.runs {
            if index == 0 {
                raw_restore.push(raw_qemu_restore(&manager, &id).await?);
            }
            let (resume_ms, sandbox) = resume(&manager, &id).await?;
            samples.push(resume_ms);
            sandbox
                .pause(&merge_every_pause)
                .await
                .with_context(|| format!("pausing {id}"))?;
        }
        if index == 0 {
            ours_at_first_size = samples.clone();
        }
        let p50 = percentile(&samples, 50.0);
        eprintln!("  resume at {memory_mib} MiB: p50 {p50:.0} ms");
        resume_p50.insert(format!("resume_ms_p50_{memory_mib}mib"), json!(round2(p50)));
        resume_by_size.push((memory_mib, p50));
        manager.remove_paused(&id)?;
    }

    // Clones of a template.
    let source = manager.create(base.clone(), Arc::new(NoProgress)).await?;
    let source_id = source.id().to_string();
    pause(&source).await?;
    drop(source);
    let template_name = format!("bench-{}", std::process::id());
    let template_start = Instant::now();
    let template = manager.create_template(&source_id, &template_name).await?;
    let template_ms = ms(template_start.elapsed());
    manager.remove_paused(&source_id)?;
    let mut clone_ms = Vec::new();
    let mut clones = Vec::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        let (clone, _) = manager
            .clone_template(&template_name, &SandboxSpec::default())
            .await?;
        clone_ms.push(ms(start.elapsed()));
        clones.push(clone);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let clone_pss: Vec<f64> = clones.iter().map(|c| sandbox_pss(c) as f64).collect();
    let idle_clone_pss = clone_pss.iter().sum::<f64>() / clone_pss.len() as f64;
    for clone in clones {
        clone.destroy().await?;
    }
    manager.delete_template(&template_name)?;

    let cold_p50 = percentile(&cold_ms, 50.0);
    let raw_p50 = percentile(&raw_restore, 50.0);
    let ours_p50 = percentile(&ours_at_first_size, 50.0);
    let clone_p50 = percentile(&clone_ms, 50.0);
    let smallest = resume_by_size.first().map_or(f64::NAN, |(_, v)| *v);
    let largest = resume_by_size.last().map_or(f64::NAN, |(_, v)| *v);
    let mut out = json!({
        "accel": manager.accel().to_string(),
        "image": args.image,
        "runs": args.runs,
        "cold_create_ms_p50": round2(cold_p50),
        "pause_full_ms": round2(pause_full_ms),
        "pause_full_bytes": full.memory_bytes,
        "raw_qemu_restore_ms_p50": round2(raw_p50),
        "resume_ms_p50_same_snapshot": round2(ours_p50),
        "resume_at_mib": args.resume_sizes.first().copied().unwrap_or(0),
        "clone_ms_p50": round2(clone_p50),
        "template_create_ms": round2(template_ms),
        "template_memory_bytes": template.memory_bytes,
        "template_disk_bytes": template.disk_bytes,
        "idle_clone_pss_mib": mib(idle_clone_pss as u64),
        "idle_cold_pss_mib": mib(idle_cold_pss),
        "resume_vs_cold_ratio": round2(ours_p50 / cold_p50),
        "resume_vs_raw_restore_ratio": round2(ours_p50 / raw_p50),
        "clone_vs_cold_ratio": round2(clone_p50 / cold_p50),
        "resume_largest_vs_smallest_ratio": round2(largest / smallest),
        "diff_bytes_vs_allowed_worst_ratio": round2(diff_ratio_worst),
        "idle_clone_vs_cold_pss_ratio": round2(idle_clone_pss / idle_cold_pss as f64),
    });
    let object = out.as_object_mut().expect("object");
    object.extend(diffs);
    object.extend(resume_p50);
    Ok(out)
}

/// Plain QEMU restoring the same snapshot: the same arguments, the memory
/// generation mapped privately (so the snapshot stays untouched), the
/// device state loaded from the same file, timed to the same point as a
/// resume: the guest agent's handshake answer.
async fn raw_qemu_restore(manager: &Manager, id: &str) -> Result<f64> {
    let dir = manager.sandboxes_dir().join(id);
    let header = warren_snapshot::read_header(&dir)?;
    if header.generations.len() != 1 {
        bail!("raw restore needs a one-generation snapshot");
    }
    let memory = header.resolve(&dir, &header.generations[0].file);
    let state = header.resolve(&dir, &header.device_state);
    let frozen = header.resolve(&dir, &header.disk);
    let meta: warren_sandbox::SandboxMeta =
        serde_json::from_slice(&std::fs::read(dir.join(warren_sandbox::SandboxDir::META))?)?;
    let raw_dir = manager
        .sandboxes_dir()
        .join(format!("bench-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&raw_dir);
    std::fs::create_dir_all(&raw_dir)?;
    let result = raw_qemu_restore_in(manager, &meta, &raw_dir, &memory, &state, &frozen).await;
    let _ = std::fs::remove_dir_all(&raw_dir);
    result
}

async fn raw_qemu_restore_in(
    manager: &Manager,
    meta: &warren_sandbox::SandboxMeta,
    dir: &Path,
    memory: &Path,
    state: &Path,
    frozen: &Path,
) -> Result<f64> {
    let disk = dir.join("disk.qcow2");
    let status = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(frozen)
        .arg(&disk)
        .status()
        .await?;
    if !status.success() {
        bail!("qemu-img create failed: {status}");
    }
    let image = meta.image();
    let mut config = manager.vm_config("bench-restore", dir, &meta.spec, &image, &disk);
    config.memory_file = Some(memory.to_path_buf());
    config.incoming = true;
    let args: Vec<std::ffi::OsString> = warren_vmm::qemu::cmdline::build_args(&config)
        .into_iter()
        .map(|arg| {
            let text = arg.to_string_lossy();
            if text.starts_with("memory-backend-file,") {
                text.replace("share=on", "share=off").into()
            } else {
                arg
            }
        })
        .collect();
    let socket = dir.join(warren_vmm::config::files::AGENT_SOCKET);
    let start = Instant::now();
    let mut child = spawn_plain_qemu(&args, std::process::Stdio::piped())?;
    // QEMU 7.2 takes `x-ignore-shared` only over QMP, so plain QEMU is
    // driven by the three QMP commands any user would send.
    let qmp_socket = dir.join(warren_vmm::config::files::QMP_SOCKET);
    let ready = async {
        while !qmp_socket.exists() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let qmp = warren_vmm::qmp::QmpClient::connect(&qmp_socket, Duration::from_secs(30)).await?;
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .await?;
        qmp.execute(
            "migrate-incoming",
            Some(json!({"uri": format!("exec:cat {}", state.display())})),
        )
        .await?;
        qmp.wait_for_migration(Duration::from_secs(120)).await?;
        qmp.execute("cont", None).await?;
        agent_handshake(&socket, Duration::from_secs(120)).await?;
        anyhow::Ok(ms(start.elapsed()))
    };
    let outcome = tokio::select! {
        elapsed = ready => elapsed,
        status = child.wait() => Err(anyhow::anyhow!("plain QEMU exited while restoring: {:?}", status?)),
    };
    let _ = child.start_kill();
    let output = child.wait_with_output().await?;
    outcome.with_context(|| {
        format!(
            "plain QEMU restore failed; its stderr: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}
