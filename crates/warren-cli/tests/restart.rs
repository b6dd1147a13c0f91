//! Restart recovery end to end: a real `warren up` killed with SIGKILL,
//! VMs that outlive it and are re-attached, VMs that die while warren is
//! down, a corrupt sandbox directory, SIGTERM pausing everything and the
//! sandboxes resuming on demand afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_client::{Client, CreateSandbox, ExecRequest, SandboxState};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// One `warren up` process over a data directory that outlives it.
struct Service {
    up: warren_testkit::WarrenUp,
    home: PathBuf,
    url: String,
}

impl Service {
    fn start(home: &Path, port: u16, extra: &[&str]) -> Self {
        let mut up = warren_testkit::UpCommand::new(WARREN, home)
            .unwrap()
            .listen(format!("127.0.0.1:{port}"))
            .args(["--reconcile-interval", "1"])
            .args(extra)
            .spawn()
            .expect("start warren up");
        up.wait_ready(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            url: up.url().to_string(),
            up,
            home: home.to_path_buf(),
        }
    }

    fn client(&self) -> Client {
        let key = std::fs::read_to_string(self.home.join("admin.key")).unwrap();
        Client::new(&self.url, key.trim()).unwrap()
    }

    /// SIGKILL: no shutdown work at all, as in a crash.
    fn crash(mut self) {
        self.up.kill();
    }

    /// SIGTERM, and waits for the configured shutdown to finish.
    fn stop(mut self) {
        let stopped = self.up.terminate(Duration::from_secs(120));
        assert!(
            !matches!(stopped, warren_testkit::Stopped::Killed(_)),
            "warren up did not stop"
        );
    }
}

/// Pids of QEMU processes whose command line mentions `home`.
fn vms_of(home: &Path) -> Vec<(u32, String)> {
    let home = home.to_string_lossy().into_owned();
    warren_vmm::qemu::vm_processes()
        .into_iter()
        .filter(|p| p.cmdline.contains(&home))
        .map(|p| (p.pid, p.id))
        .collect()
}

/// Kills whatever VM of `home` is left (test cleanup, also on panic).
struct KillVmsOf(PathBuf);

impl Drop for KillVmsOf {
    fn drop(&mut self) {
        for (pid, _) in vms_of(&self.0) {
            warren_vmm::qemu::kill_vm_process(pid);
        }
        for point in warren_testkit::mounts_under(&self.0) {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for (pid, _) in memfs_of(&self.0) {
            warren_vmm::qemu::kill_vm_process(pid);
        }
    }
}

fn memfs_of(home: &Path) -> Vec<(u32, String)> {
    warren_sandbox::daemons_under(&home.join("sandboxes"))
}

async fn sh(client: &Client, id: &str, script: &str) -> String {
    let result = client
        .exec(
            id,
            &ExecRequest {
                cmd: Some(script.into()),
                timeout_secs: Some(60),
                ..ExecRequest::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec {script:?} in {id}: {e}"));
    assert_eq!(
        result.exit_code,
        Some(0),
        "{script}: {}{}",
        result.stdout,
        result.stderr
    );
    result.stdout.trim().to_string()
}

/// `path` of the server on port 8000 of sandbox `id`, through the
/// service's port proxy (the path form, with the admin key).
async fn via_port(service: &Service, id: &str, path: &str) -> String {
    let key = std::fs::read_to_string(service.home.join("admin.key")).unwrap();
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/sandboxes/{id}/ports/8000/{path}",
            service.url
        ))
        .bearer_auth(key.trim())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "port 8000 of {id}: {body}");
    body
}

async fn state_of(client: &Client, id: &str) -> SandboxState {
    client.get_sandbox(id).await.unwrap().state
}

fn pid_of_vm(home: &Path, id: &str) -> u32 {
    vms_of(home)
        .into_iter()
        .find(|(_, vm)| vm == id)
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no VM of {id} runs"))
}

#[test]
fn sandboxes_survive_crashes_and_restarts_of_warren() {
    // Short: unix socket paths inside must stay under 108 bytes.
    let home = warren_testkit::short_tempdir("wr-").unwrap();
    let home_path = home.path().to_path_buf();
    let _cleanup = KillVmsOf(home_path.clone());
    let port = warren_testkit::free_port().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let create = CreateSandbox {
        template: Some("tiny".into()),
        memory_mib: Some(256),
        timeout_secs: Some(3600),
        ..CreateSandbox::default()
    };

    // 1. A runs with a counter process; B is paused with data in RAM.
    let service = Service::start(&home_path, port, &[]);
    let client = service.client();
    let (a, b, boot_id) = runtime.block_on(async {
        // A asks to keep its disk should its VM be lost.
        let keep = CreateSandbox {
            keep_disk: Some(true),
            ..create.clone()
        };
        let a = client.create_sandbox(&keep).await.unwrap().id;
        let b = client.create_sandbox(&create).await.unwrap().id;
        sh(&client, &a, "echo alpha > /root/a.txt; echo keepme-5a1f > /root/keep.txt; sync").await;
        sh(
            &client,
            &a,
            "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' >/dev/null 2>&1 < /dev/null &",
        )
        .await;
        let boot_id = sh(&client, &a, "cat /proc/sys/kernel/random/boot_id").await;
        // A server in A (busybox httpd daemonizes), reached through its
        // network from outside.
        sh(&client, &a, "busybox httpd -p 8000 -h /root").await;
        assert_eq!(via_port(&service, &a, "a.txt").await, "alpha\n");
        sh(&client, &b, "echo beta > /dev/shm/b; echo disk > /root/b.txt").await;
        client.pause_sandbox(&b).await.unwrap();
        (a, b, boot_id)
    });
    let a_vm = pid_of_vm(&home_path, &a);

    // 2. warren crashes: A's VM keeps running without it.
    service.crash();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        warren_vmm::qemu::process_alive(a_vm),
        "A's VM died with warren"
    );

    // A corrupt sandbox directory and a trash leftover appear meanwhile.
    let corrupt = home_path.join("sandboxes/sb-corrupt00000");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("sandbox.json"), b"{ not json").unwrap();
    std::fs::create_dir_all(home_path.join("trash/leftover.1")).unwrap();
    std::fs::write(home_path.join("trash/leftover.1/junk"), b"x").unwrap();

    // 3. The restarted warren re-attaches A (the same VM: same boot id,
    //    the counter went on) and still has B paused.
    let service = Service::start(&home_path, port, &[]);
    let client = service.client();
    runtime.block_on(async {
        assert_eq!(state_of(&client, &a).await, SandboxState::Running);
        assert_eq!(state_of(&client, &b).await, SandboxState::Paused);
        assert_eq!(
            sh(&client, &a, "cat /proc/sys/kernel/random/boot_id").await,
            boot_id,
            "A was rebooted instead of re-attached"
        );
        let first: u64 = sh(&client, &a, "cat /tmp/count").await.parse().unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let second: u64 = sh(&client, &a, "cat /tmp/count").await.parse().unwrap();
        assert!(second > first, "A's counter stopped: {first} then {second}");
        assert_eq!(sh(&client, &a, "cat /root/a.txt").await, "alpha");
        // Its network was re-adopted: the server is still reached.
        assert_eq!(via_port(&service, &a, "a.txt").await, "alpha\n");
        client.resume_sandbox(&b).await.unwrap();
        assert_eq!(
            sh(&client, &b, "cat /dev/shm/b /root/b.txt").await,
            "beta\ndisk"
        );
        sh(&client, &b, "echo lost-with-the-vm > /dev/shm/after").await;
    });
    assert_eq!(pid_of_vm(&home_path, &a), a_vm);
    let quarantined: Vec<String> = std::fs::read_dir(home_path.join("quarantine"))
        .expect("a quarantine directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        quarantined
            .iter()
            .any(|n| n.starts_with("sb-corrupt00000.")),
        "{quarantined:?}"
    );
    assert!(!corrupt.exists());
    assert_eq!(
        std::fs::read_dir(home_path.join("trash")).unwrap().count(),
        0,
        "the trash was not swept"
    );

    // 4. warren crashes again and both VMs die while it is down: A (never
    //    paused) is lost, B falls back to its snapshot.
    service.crash();
    let b_daemons = memfs_of(&home_path);
    assert_eq!(
        b_daemons
            .iter()
            .map(|(_, id)| id.as_str())
            .collect::<Vec<_>>(),
        vec![b.as_str()],
        "B's memory daemon must outlive warren"
    );
    for id in [&a, &b] {
        warren_vmm::qemu::kill_vm_process(pid_of_vm(&home_path, id));
    }
    let service = Service::start(&home_path, port, &[]);
    let client = service.client();
    runtime.block_on(async {
        let a_now = client.get_sandbox(&a).await.unwrap();
        assert_eq!(a_now.state, SandboxState::Stopped);
        // A's disk was kept, as it asked, with what it had written.
        let kept: Vec<PathBuf> = std::fs::read_dir(home_path.join("kept"))
            .expect("a kept directory")
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{a}."))
            })
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(kept[0].join("sandbox.json").is_file());
        let disk = std::fs::read(kept[0].join("disk.qcow2")).expect("the kept disk layer");
        assert!(
            disk.windows(11).any(|w| w == b"keepme-5a1f"),
            "the kept disk does not hold A's synced file"
        );
        assert_eq!(state_of(&client, &b).await, SandboxState::Paused);
        assert!(
            memfs_of(&home_path).is_empty(),
            "B's memory daemon was left"
        );
        client.resume_sandbox(&b).await.unwrap();
        assert_eq!(
            sh(&client, &b, "cat /dev/shm/b /root/b.txt").await,
            "beta\ndisk"
        );
        assert_eq!(
            sh(
                &client,
                &b,
                "test -e /dev/shm/after && echo present || echo gone"
            )
            .await,
            "gone"
        );
        let report = client.reconcile().await.unwrap();
        assert!(report.fixes.is_empty(), "{:?}", report.fixes);
    });

    // B's VM dies while warren runs: B falls back to its snapshot too.
    runtime.block_on(async {
        sh(&client, &b, "echo lost-again > /dev/shm/after").await;
        warren_vmm::qemu::kill_vm_process(pid_of_vm(&home_path, &b));
        let deadline = Instant::now() + Duration::from_secs(30);
        while state_of(&client, &b).await != SandboxState::Paused {
            assert!(
                Instant::now() < deadline,
                "B was not reverted to its snapshot"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.resume_sandbox(&b).await.unwrap();
        assert_eq!(
            sh(
                &client,
                &b,
                "cat /dev/shm/b; test -e /dev/shm/after || echo gone"
            )
            .await,
            "beta\ngone"
        );
    });
    let dirs: Vec<String> = std::fs::read_dir(home_path.join("sandboxes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, vec![b.clone()], "only B's directory should remain");

    // 5. SIGTERM pauses B (the default); after the restart any operation
    //    resumes it.
    service.stop();
    assert!(
        vms_of(&home_path).is_empty(),
        "a VM outlived a SIGTERM pause"
    );
    assert!(memfs_of(&home_path).is_empty());
    let service = Service::start(&home_path, port, &[]);
    let client = service.client();
    runtime.block_on(async {
        assert_eq!(state_of(&client, &b).await, SandboxState::Paused);
        assert_eq!(sh(&client, &b, "cat /dev/shm/b").await, "beta");
        assert_eq!(state_of(&client, &b).await, SandboxState::Running);
        client.delete_sandbox(&b).await.unwrap();
    });
    service.stop();
    assert!(vms_of(&home_path).is_empty());
    assert!(
        std::fs::read_dir(home_path.join("sandboxes"))
            .unwrap()
            .next()
            .is_none(),
        "a sandbox directory was left"
    );
}
