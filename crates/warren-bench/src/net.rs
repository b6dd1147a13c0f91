//! `warren bench net`: what a sandbox's network costs. Creates and clones
//! with a network against the same without one, the network's own set-up
//! and teardown, a policy change on a running sandbox, and a small HTTP
//! request through warren's port proxy against the same request made
//! directly from the sandbox's namespace. Every ratio and difference is
//! from samples taken back to back in this run, in alternating order.
//!
//! Not measured yet: TCP throughput guest<->peer against plain QEMU on
//! the same TAP (issue 17's `tcp_*_vs_raw_ratio`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use warren_sandbox::{
    Manager, ManagerConfig, NetworkPolicy, Networking, NoProgress, PauseOptions, SandboxSpec,
};

use crate::bench::{
    SandboxArgs, ServiceChild, ms, paired_ratio, percentile, prepare_and_warm, round2,
};

/// Options of `warren bench net`.
#[derive(Debug, clap::Args)]
pub struct NetBenchArgs {
    /// Print one JSON object (the output is JSON either way).
    #[arg(long)]
    pub json: bool,
    /// Creates and clones of each kind.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Network set-ups and policy changes timed.
    #[arg(long, default_value_t = 20)]
    pub policy_runs: usize,
    /// HTTP requests timed each way (through the proxy, direct).
    #[arg(long, default_value_t = 50)]
    pub http_runs: usize,
    /// The sandboxes timed (the HTTP part needs python3 in the image).
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// `runs` rounds of `once(true)` (with a network) and `once(false)`
/// (without), alternating which goes first; the samples of each kind.
async fn alternate<F, Fut>(runs: usize, what: &str, mut once: F) -> Result<(Vec<f64>, Vec<f64>)>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for networked in [run % 2 == 0, run % 2 != 0] {
            let took = once(networked).await?;
            if networked {
                with.push(took);
            } else {
                without.push(took);
            }
        }
        eprintln!(
            "  {what} {}/{runs}: with network {:.0} ms, without {:.0} ms",
            run + 1,
            with[run],
            without[run]
        );
    }
    Ok((with, without))
}

/// Runs the network benchmark and returns its JSON report.
pub async fn net(
    config: ManagerConfig,
    warren: &Path,
    accel: &str,
    args: NetBenchArgs,
) -> Result<Value> {
    if args.runs == 0 || args.policy_runs == 0 || args.http_runs == 0 {
        bail!("--runs, --policy-runs and --http-runs must be at least 1");
    }
    let Some(network_config) = config.network.clone() else {
        bail!("sandbox networks are off (WARREN_NET=off): nothing to measure");
    };
    let image_cache = config
        .image_cache
        .clone()
        .unwrap_or_else(|| config.data_dir.join("images"));
    let data_dir = config.data_dir.clone();
    let manager = Manager::new(config).context("setting up warren")?;
    let with = SandboxSpec {
        network: Some(NetworkPolicy::default()),
        ..args.sandbox.spec()
    };
    let without = SandboxSpec {
        network: None,
        ..with.clone()
    };
    prepare_and_warm(&manager, &with, "net").await?;
    prepare_and_warm(&manager, &without, "net").await?;

    // Cold creates, with and without a network, alternating.
    let (create_with, create_without) = alternate(args.runs, "create", |networked| {
        let (manager, spec) = (&manager, if networked { &with } else { &without });
        async move {
            let start = Instant::now();
            let sandbox = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
            let took = ms(start.elapsed());
            sandbox.destroy().await?;
            Ok(took)
        }
    })
    .await?;

    // Clones of a template made with a network and of one made without.
    let pid = std::process::id();
    let mut templates = Vec::new();
    for (spec, name) in [
        (&with, format!("bench-net-{pid}")),
        (&without, format!("bench-nonet-{pid}")),
    ] {
        let source = manager.create(spec.clone(), Arc::new(NoProgress)).await?;
        let id = source.id().to_string();
        source.pause(&PauseOptions::default()).await?;
        drop(source);
        manager.create_template(&id, &name).await?;
        manager.remove_paused(&id)?;
        templates.push(name);
    }
    let (clone_with, clone_without) = alternate(args.runs, "clone", |networked| {
        let (manager, name) = (&manager, &templates[usize::from(!networked)]);
        async move {
            let start = Instant::now();
            let (clone, _) = manager
                .clone_template(name, &SandboxSpec::default())
                .await?;
            let took = ms(start.elapsed());
            clone.destroy().await?;
            Ok(took)
        }
    })
    .await?;
    for name in &templates {
        manager.delete_template(name)?;
    }

    // The network alone: made and removed the way a create and a kill do.
    let networking = Networking::init(&network_config, &data_dir);
    if !networking.available() {
        bail!("this host cannot make sandbox networks (see the warning above)");
    }
    let mut setup = Vec::new();
    let mut teardown = Vec::new();
    for run in 0..args.policy_runs {
        let id = format!("sb-benchnet{run:04}");
        let start = Instant::now();
        let (network, _nic) = networking.attach(&id, &NetworkPolicy::default())?;
        setup.push(ms(start.elapsed()));
        let start = Instant::now();
        drop(network);
        teardown.push(ms(start.elapsed()));
    }
    eprintln!(
        "  network set-up p50 {:.1} ms, teardown p50 {:.1} ms",
        percentile(&setup, 50.0),
        percentile(&teardown, 50.0)
    );

    // A policy change on a running sandbox, between two real policies.
    let sandbox = Arc::new(manager.create(with.clone(), Arc::new(NoProgress)).await?);
    let strict = NetworkPolicy::parse(
        false,
        &[
            "pypi.org".into(),
            "*.pythonhosted.org".into(),
            "198.51.100.0/24".into(),
        ],
        &["0.0.0.0/0".into()],
    )?;
    let mut policy_update = Vec::new();
    for run in 0..args.policy_runs {
        let policy = if run % 2 == 0 {
            strict.clone()
        } else {
            NetworkPolicy::default()
        };
        let target = sandbox.clone();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || target.set_network_policy(policy)).await??;
        policy_update.push(ms(start.elapsed()));
    }
    match Arc::try_unwrap(sandbox) {
        Ok(sandbox) => sandbox.destroy().await?,
        Err(_) => bail!("the policy sandbox is still in use"),
    }
    eprintln!(
        "  policy update p50 {:.1} ms",
        percentile(&policy_update, 50.0)
    );
    let effective_accel = manager.accel().to_string();
    drop(manager);

    let http = proxy_overhead(warren, accel, &image_cache, &args).await?;

    Ok(json!({
        "accel": effective_accel,
        "image": args.sandbox.image,
        "runs": args.runs,
        "create_with_network_ms_p50": round2(percentile(&create_with, 50.0)),
        "create_without_network_ms_p50": round2(percentile(&create_without, 50.0)),
        "create_with_network_vs_without_ratio": round2(paired_ratio(&create_with, &create_without)),
        "clone_with_network_ms_p50": round2(percentile(&clone_with, 50.0)),
        "clone_without_network_ms_p50": round2(percentile(&clone_without, 50.0)),
        "clone_with_network_vs_without_ratio": round2(paired_ratio(&clone_with, &clone_without)),
        "network_setup_ms_p50": round2(percentile(&setup, 50.0)),
        "network_setup_ms_p99": round2(percentile(&setup, 99.0)),
        "network_teardown_ms_p50": round2(percentile(&teardown, 50.0)),
        "policy_update_ms_p50": round2(percentile(&policy_update, 50.0)),
        "policy_update_ms_p99": round2(percentile(&policy_update, 99.0)),
        "http_runs": args.http_runs,
        "http_direct_ms_p50": round2(percentile(&http.direct, 50.0)),
        "http_proxy_ms_p50": round2(percentile(&http.proxy, 50.0)),
        "proxy_http_overhead_ms_p50": round2(percentile(&http.overhead(), 50.0)),
        "proxy_http_overhead_ms_p99": round2(percentile(&http.overhead(), 99.0)),
    }))
}

/// The HTTP samples, pair `i` taken back to back.
struct HttpSamples {
    direct: Vec<f64>,
    proxy: Vec<f64>,
}

impl HttpSamples {
    fn overhead(&self) -> Vec<f64> {
        self.proxy
            .iter()
            .zip(&self.direct)
            .map(|(p, d)| p - d)
            .collect()
    }
}

/// One HTTP/1.1 GET on a fresh connection (`Connection: close`), read to
/// the end; fails unless the answer is 200.
fn get(mut stream: TcpStream, path: &str, host: &str, key: Option<&str>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    if !answer.starts_with(b"HTTP/1.1 200") && !answer.starts_with(b"HTTP/1.0 200") {
        bail!(
            "GET {path} answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
    Ok(())
}

/// A small request to a server in a sandbox of a `warren up` child,
/// through the path form of its port proxy and directly from the
/// sandbox's namespace.
async fn proxy_overhead(
    warren: &Path,
    accel: &str,
    image_cache: &Path,
    args: &NetBenchArgs,
) -> Result<HttpSamples> {
    let mut service = ServiceChild::start(warren, accel, image_cache)?;
    let client = service.client()?;
    let sandbox = client
        .create_sandbox(&warren_client::CreateSandbox {
            template: Some(args.sandbox.image.clone()),
            memory_mib: Some(args.sandbox.memory),
            ..warren_client::CreateSandbox::default()
        })
        .await?;
    let id = sandbox.id.clone();
    client
        .start_process(
            &id,
            &warren_client::StartProcess {
                cmd: Some(
                    "mkdir -p /srv/bench && echo ok > /srv/bench/index.html && cd /srv/bench && exec python3 -m http.server 8000 --bind 0.0.0.0"
                        .into(),
                ),
                ..warren_client::StartProcess::default()
            },
        )
        .await
        .context("starting python3 -m http.server in the sandbox (the image needs python3)")?;
    let listener: SocketAddr = client
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("the service's address")?;
    let key = client.endpoint().api_key.clone();
    let proxy_path = format!("/v1/sandboxes/{id}/ports/8000/index.html");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = TcpStream::connect(listener)
            .map_err(anyhow::Error::from)
            .and_then(|s| get(s, &proxy_path, "localhost", Some(&key)));
        match ready {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the server in the sandbox never answered"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    let namespace = namespace_of(&id)?;
    let guest = SocketAddr::from((warren_net::layout::guest::ADDRESS, 8000));
    let mut samples = HttpSamples {
        direct: Vec::new(),
        proxy: Vec::new(),
    };
    for run in 0..args.http_runs {
        for through_proxy in [run % 2 == 0, run % 2 != 0] {
            let key = key.clone();
            let path = proxy_path.clone();
            let namespace = namespace.clone();
            let took = tokio::task::spawn_blocking(move || -> Result<f64> {
                let start = Instant::now();
                if through_proxy {
                    get(
                        TcpStream::connect(listener)?,
                        &path,
                        "localhost",
                        Some(&key),
                    )?;
                } else {
                    let stream = warren_net::run_in(&namespace, move || {
                        TcpStream::connect_timeout(&guest, Duration::from_secs(10))
                    })?;
                    get(stream, "/index.html", "localhost:8000", None)?;
                }
                Ok(ms(start.elapsed()))
            })
            .await??;
            if through_proxy {
                samples.proxy.push(took);
            } else {
                samples.direct.push(took);
            }
        }
    }
    eprintln!(
        "  http p50: direct {:.2} ms, through the proxy {:.2} ms",
        percentile(&samples.direct, 50.0),
        percentile(&samples.proxy, 50.0)
    );
    client.delete_sandbox(&id).await?;
    service.stop();
    Ok(samples)
}

/// The network namespace of a sandbox, from the host's slot claims.
fn namespace_of(id: &str) -> Result<String> {
    let claims = warren_net::Claims::new(warren_net::DEFAULT_CLAIMS_DIR);
    let (slot, _) = claims
        .list()?
        .into_iter()
        .find(|(_, claim)| claim.sandbox == id)
        .with_context(|| format!("no network slot is claimed for {id}"))?;
    Ok(format!("{}{slot}", warren_net::layout::NETNS_PREFIX))
}
