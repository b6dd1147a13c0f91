//! Pause, resume, snapshot templates and clones, on real VMs.

use std::path::Path;

use warren_sandbox::{Command, PauseOptions, Sandbox, SandboxSpec, SnapshotOpError};
use warren_tests::{TestEnv, processes_mentioning, within};

/// Runs a shell line and returns its stdout, failing the test on error.
async fn sh(sandbox: &Sandbox, line: &str) -> String {
    let output = within(120, line, sandbox.run(Command::shell(line)))
        .await
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(
        output.status.success(),
        "{line}: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        output.stdout_text(),
        output.stderr_text()
    );
    output.stdout_text()
}

async fn pause(sandbox: &Sandbox) -> warren_sandbox::PauseReport {
    within(300, "pause", sandbox.pause(&PauseOptions::default()))
        .await
        .unwrap_or_else(|e| panic!("pausing {} failed: {e}", sandbox.id()))
}

async fn resume(env: &TestEnv, id: &str) -> Sandbox {
    within(300, "resume", env.manager.resume(id))
        .await
        .unwrap_or_else(|e| panic!("resuming {id} failed: {e}"))
        .0
}

/// A sandbox with 1 GiB of guest memory.
async fn one_gib_sandbox(env: &TestEnv) -> Sandbox {
    let spec = SandboxSpec {
        memory_mib: 1024,
        ..SandboxSpec::default()
    };
    within(300, "create", env.sandbox_with(spec)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_counter_and_a_python_dict_survive_pause_and_resume() {
    let env = TestEnv::new();
    let mut spec = SandboxSpec::default();
    spec.env.insert("WARREN_TEST_VAR".into(), "kept".into());
    spec.metadata.insert("owner".into(), "tests".into());
    let sandbox = within(300, "create", env.sandbox_with(spec.clone())).await;
    let id = sandbox.id().to_string();

    // A shell counter and a Python process whose dict lives only in memory.
    sandbox
        .exec(
            Command::shell(
                "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done",
            )
            .background(),
        )
        .await
        .expect("start the counter");
    sandbox
        .exec(
            Command::shell(
                "exec python3 -c \"
import time, os
d = {i: str(i * i) for i in range(200000)}
d['boot'] = os.urandom(8).hex()
while True:
    with open('/tmp/py.tmp', 'w') as f:
        f.write('%d %s %d' % (os.getpid(), d['boot'], sum(len(v) for v in d.values())))
    os.replace('/tmp/py.tmp', '/tmp/py')
    time.sleep(0.1)
\"",
            )
            .background(),
        )
        .await
        .expect("start python");
    let mut before_py = String::new();
    for _ in 0..600 {
        before_py = sh(&sandbox, "cat /tmp/py 2>/dev/null || true").await;
        if !before_py.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!before_py.is_empty(), "python never wrote its state");
    let before_count: u64 = sh(&sandbox, "cat /tmp/counter")
        .await
        .trim()
        .parse()
        .unwrap();

    let report = pause(&sandbox).await;
    assert!(report.full, "the first pause writes a full snapshot");
    assert!(report.memory_bytes > 0);
    assert!(
        report.memory_bytes < 512 << 20,
        "a full snapshot leaves zero pages out ({} bytes for 512 MiB)",
        report.memory_bytes
    );
    // The handle is dead; the sandbox lives on disk.
    let error = sandbox.run(Command::shell("true")).await.unwrap_err();
    assert!(error.to_string().contains("paused"), "{error}");
    assert!(env.manager.is_paused(&id));
    drop(sandbox);
    assert!(
        env.manager.is_paused(&id),
        "dropping the paused handle must keep the snapshot"
    );

    // Let wall-clock time pass while paused; the guest clock must catch up.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let sandbox = resume(&env, &id).await;
    assert_eq!(sandbox.id(), id);
    assert_eq!(
        sandbox
            .spec()
            .env
            .get("WARREN_TEST_VAR")
            .map(String::as_str),
        Some("kept")
    );
    assert_eq!(
        sandbox.spec().metadata.get("owner").map(String::as_str),
        Some("tests")
    );
    assert_eq!(sh(&sandbox, "echo $WARREN_TEST_VAR").await.trim(), "kept");
    let info = sandbox.info().await.unwrap();
    assert_eq!(info.hostname, id);
    warren_tests::assert_guest_clock_close(info.unix_time_ms, "after resume");

    // The same processes go on from where they were.
    let after_count: u64 = sh(&sandbox, "cat /tmp/counter")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        after_count >= before_count,
        "counter went back: {before_count} -> {after_count}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let later_count: u64 = sh(&sandbox, "cat /tmp/counter")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        later_count > after_count,
        "the counter stopped: {after_count} -> {later_count}"
    );
    let after_py = sh(&sandbox, "cat /tmp/py").await;
    assert_eq!(
        after_py, before_py,
        "the python process or its dict changed"
    );
    let pid = before_py.split_whitespace().next().unwrap();
    sh(&sandbox, &format!("test -d /proc/{pid}")).await;

    within(60, "destroy", sandbox.destroy()).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_pause_resume_cycles_keep_every_file_and_memory_checksum() {
    let env = TestEnv::new();
    let mut sandbox = within(300, "create", env.sandbox()).await;
    let id = sandbox.id().to_string();
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut merged_once = false;
    for cycle in 0..12 {
        // A file on the root disk and a buffer in guest RAM (tmpfs).
        let file = format!("/root/cycle-{cycle}");
        let shm = format!("/dev/shm/cycle-{cycle}");
        sh(
            &sandbox,
            &format!(
                "head -c 2097152 /dev/urandom > {file} && head -c 1048576 /dev/urandom > {shm}"
            ),
        )
        .await;
        for path in [&file, &shm] {
            let sum = sh(&sandbox, &format!("sha256sum {path} | cut -d' ' -f1")).await;
            expected.push((path.clone(), sum.trim().to_string()));
        }
        let report = pause(&sandbox).await;
        assert_eq!(report.full, cycle == 0, "cycle {cycle}: {report:?}");
        assert!(
            report.chain_length <= warren_sandbox::snapshot::DEFAULT_MERGE_CAP,
            "cycle {cycle}: the chain grew past the cap: {report:?}"
        );
        merged_once |= report.merged;
        drop(sandbox);
        sandbox = resume(&env, &id).await;
        let sums = sh(
            &sandbox,
            &format!(
                "sha256sum {} | cut -d' ' -f1",
                expected
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )
        .await;
        let sums: Vec<&str> = sums.lines().collect();
        for ((path, want), got) in expected.iter().zip(&sums) {
            assert_eq!(
                want, got,
                "cycle {cycle}: {path} changed across pause/resume"
            );
        }
        assert_eq!(sums.len(), expected.len(), "cycle {cycle}: files missing");
    }
    assert!(merged_once, "12 cycles must cross the merge cap of 10");
    // The disk chain was flattened with the memory chain: fewer layers
    // than cycles.
    let layers = std::fs::read_dir(sandbox.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("disk.g"))
        .count();
    assert!(layers < 12, "{layers} disk layers after 12 cycles");
    within(60, "destroy", sandbox.destroy()).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_1_gib_sandbox_gives_its_memory_back() {
    let env = TestEnv::new();
    let sandbox = one_gib_sandbox(&env).await;
    let id = sandbox.id().to_string();
    sh(&sandbox, "head -c 268435456 /dev/urandom > /dev/shm/big").await;
    let before = sandbox.host_memory().expect("VM memory");
    assert!(
        before.rss_bytes > 256 << 20,
        "the VM should hold the 256 MiB it wrote ({} bytes RSS)",
        before.rss_bytes
    );
    let pid = sandbox.vm_pid();
    let dir = sandbox.dir().to_path_buf();
    pause(&sandbox).await;
    drop(sandbox);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU survived the pause"
    );
    let mut holders = warren_testkit::processes_mapping(&dir);
    if let Some(ram) = env.manager.volatile_ram_dir() {
        holders.extend(warren_testkit::processes_mapping(ram));
    }
    assert!(
        holders.is_empty(),
        "processes still map the paused sandbox's memory: {holders:?}"
    );
    let ram = env.ram_files();
    assert!(
        ram.is_empty(),
        "guest RAM still held in host memory: {ram:?}"
    );
    let running = processes_mentioning(env.data_dir.path());
    assert!(
        running.is_empty(),
        "processes left running while paused: {running:?}"
    );

    let sandbox = resume(&env, &id).await;
    let sum_after = sh(&sandbox, "sha256sum /dev/shm/big | cut -c1-64").await;
    assert_eq!(sum_after.trim().len(), 64);
    within(60, "destroy", sandbox.destroy()).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_that_dies_after_its_state_is_saved_is_still_paused_not_lost() {
    let env = TestEnv::new();
    let sandbox = one_gib_sandbox(&env).await;
    let id = sandbox.id().to_string();
    // Enough RAM that copying it to disk takes a while.
    sh(&sandbox, "head -c 402653184 /dev/urandom > /dev/shm/big").await;
    let sum = sh(&sandbox, "sha256sum /dev/shm/big | cut -c1-64").await;
    let pid = sandbox.vm_pid();
    let copy = sandbox.dir().join("memory.tmp");
    // QEMU crashes once its device state is saved (the RAM copy has begun):
    // nothing is lost, so the pause must stand and whoever handles the
    // unrequested exit (the host's exit watcher) must find it paused.
    let crash = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
        while !copy.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the pause never began copying RAM"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    let exit_watcher = async {
        let mut exit = sandbox.vm_exit_watch();
        exit.wait_for(Option::is_some).await.unwrap();
        sandbox.fall_back_to_snapshot().await
    };
    let options = PauseOptions::default();
    let (paused, (), fell_back) = within(300, "pause with a crash", async {
        tokio::join!(sandbox.pause(&options), crash, exit_watcher)
    })
    .await;
    paused.unwrap_or_else(|e| panic!("the pause must stand: {e}"));
    assert!(
        fell_back,
        "the crashed VM's sandbox must be paused, not lost"
    );
    drop(sandbox);

    let sandbox = resume(&env, &id).await;
    assert_eq!(
        sh(&sandbox, "sha256sum /dev/shm/big | cut -c1-64").await,
        sum
    );
    within(60, "destroy", sandbox.destroy()).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diff_after_dirtying_32_mib_is_about_32_mib() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let id = sandbox.id().to_string();
    pause(&sandbox).await;
    drop(sandbox);
    let sandbox = resume(&env, &id).await;
    sh(&sandbox, "head -c 33554432 /dev/urandom > /dev/shm/dirty").await;
    let report = pause(&sandbox).await;
    assert!(!report.full);
    let dirtied = 32u64 << 20;
    assert!(
        report.memory_bytes >= dirtied,
        "the diff ({} bytes) is smaller than what was dirtied",
        report.memory_bytes
    );
    assert!(
        report.memory_bytes <= dirtied + dirtied / 4 + (8 << 20),
        "the diff ({} bytes) is far larger than the 32 MiB dirtied",
        report.memory_bytes
    );
    drop(sandbox);
    // A small command dirties ~1.5 MiB of guest-kernel bookkeeping (slab,
    // page tables, stacks), which the packed diff compresses.
    let sandbox = resume(&env, &id).await;
    sh(&sandbox, "true").await;
    let report = pause(&sandbox).await;
    assert!(
        report.memory_bytes < 1 << 20,
        "the diff after one small command is {} bytes",
        report.memory_bytes
    );
    drop(sandbox);
    // Both diffs read back: the 32 MiB are still there.
    let sandbox = resume(&env, &id).await;
    assert_eq!(
        sh(&sandbox, "wc -c < /dev/shm/dirty").await.trim(),
        "33554432"
    );
    within(60, "destroy", sandbox.destroy()).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn five_clones_of_a_template_run_independently_and_keep_it_alive() {
    let env = TestEnv::new();
    let source = within(300, "create", env.sandbox()).await;
    let source_id = source.id().to_string();
    sh(
        &source,
        "echo from-template > /root/base && echo shm-template > /dev/shm/base",
    )
    .await;
    pause(&source).await;
    drop(source);
    let template = within(
        300,
        "template",
        env.manager.create_template(&source_id, "tpl"),
    )
    .await
    .expect("create template");
    assert_eq!(template.spec.memory_mib, 512);
    assert!(template.memory_bytes > 0 && template.disk_bytes > 0);
    // The source can go on; the template does not depend on it.
    env.manager.remove_paused(&source_id).unwrap();

    let mut clones = Vec::new();
    for n in 0..5 {
        let mut request = SandboxSpec::default();
        request.env.insert("CLONE".to_string(), n.to_string());
        let (clone, _) = within(300, "clone", env.manager.clone_template("tpl", &request))
            .await
            .unwrap_or_else(|e| panic!("clone {n}: {e}"));
        clones.push(clone);
    }
    let ids: std::collections::BTreeSet<_> = clones.iter().map(|c| c.id().to_string()).collect();
    assert_eq!(ids.len(), 5, "clones must have distinct ids");
    // Each clone's random generator was reseeded: clones of one snapshot
    // must not hand out the same "random" bytes (keys, tokens, UUIDs).
    let mut randoms = std::collections::BTreeSet::new();
    for clone in &clones {
        randoms.insert(sh(clone, "head -c 16 /dev/urandom | od -An -tx1").await);
    }
    assert_eq!(
        randoms.len(),
        5,
        "clones drew the same random bytes: {randoms:?}"
    );
    for (n, clone) in clones.iter().enumerate() {
        assert_eq!(
            sh(clone, "cat /root/base /dev/shm/base").await,
            "from-template\nshm-template\n"
        );
        assert_eq!(sh(clone, "hostname").await.trim(), clone.id());
        assert_eq!(sh(clone, "echo $CLONE").await.trim(), n.to_string());
        sh(
            clone,
            &format!("echo {n} > /root/mine && echo {n} > /dev/shm/mine"),
        )
        .await;
    }
    for (n, clone) in clones.iter().enumerate() {
        assert_eq!(
            sh(clone, "cat /root/mine /dev/shm/mine").await,
            format!("{n}\n{n}\n"),
            "clone {n} sees another clone's writes"
        );
    }
    // In use: deleting is refused.
    match env.manager.delete_template("tpl") {
        Err(SnapshotOpError::TemplateInUse { users, .. }) => assert_eq!(users.len(), 5),
        other => panic!("deleting a template in use: {other:?}"),
    }
    // A template of a clone stands on its own: once the clones are gone,
    // the template they came from can be deleted and it still clones.
    let mut clones = clones.into_iter();
    let first = clones.next().unwrap();
    let first_id = first.id().to_string();
    pause(&first).await;
    drop(first);
    within(
        300,
        "template of a clone",
        env.manager.create_template(&first_id, "tpl2"),
    )
    .await
    .expect("create a template from a clone");
    env.manager.remove_paused(&first_id).unwrap();
    for clone in clones {
        within(60, "destroy", clone.destroy()).await.unwrap();
    }
    env.manager
        .delete_template("tpl")
        .expect("delete the unused template");
    let (second, _) = within(
        300,
        "clone of the clone's template",
        env.manager.clone_template("tpl2", &SandboxSpec::default()),
    )
    .await
    .expect("clone a template whose source's template is gone");
    assert_eq!(
        sh(&second, "cat /root/base /root/mine /dev/shm/mine").await,
        "from-template\n0\n0\n"
    );
    within(60, "destroy", second.destroy()).await.unwrap();
    env.manager.delete_template("tpl2").unwrap();
    assert!(env.manager.templates().is_empty());
    env.assert_clean();
}

/// A small tmpfs as the data directory, so the disk can be filled.
struct SmallDisk {
    path: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mib: u64) -> Self {
        let path = tempfile::Builder::new()
            .prefix("wt-full")
            .tempdir()
            .unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            path.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={mib}m").as_str()),
        )
        .expect("mount a small tmpfs (the tests run as root)");
        Self { path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.path.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills the filesystem of `dir` with a file, leaving `leave` bytes free.
fn fill(dir: &Path, leave: u64) -> std::path::PathBuf {
    let stat = nix::sys::statvfs::statvfs(dir).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    let filler = dir.join("filler");
    let file = std::fs::File::create(&filler).unwrap();
    nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::empty(),
        0,
        free.saturating_sub(leave) as i64,
    )
    .expect("fill the disk");
    filler
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_on_a_full_disk_keeps_the_sandbox_and_says_so() {
    let disk = SmallDisk::new(1536);
    let env = TestEnv::at(disk.path.path());
    let spec = SandboxSpec {
        memory_mib: 256,
        ..SandboxSpec::default()
    };
    let sandbox = within(300, "create", env.sandbox_with(spec)).await;
    let id = sandbox.id().to_string();
    sh(&sandbox, "head -c 8388608 /dev/urandom > /dev/shm/keep").await;
    let keep = sh(&sandbox, "sha256sum /dev/shm/keep").await;
    pause(&sandbox).await;
    drop(sandbox);
    let sandbox = resume(&env, &id).await;

    let filler = fill(env.data_dir.path(), 0);
    // The guest dirties memory that has nowhere to go.
    sh(&sandbox, "head -c 67108864 /dev/urandom > /dev/shm/more").await;
    let more = sh(&sandbox, "sha256sum /dev/shm/more").await;
    let error = within(
        300,
        "pause on a full disk",
        sandbox.pause(&PauseOptions::default()),
    )
    .await
    .expect_err("a pause on a full disk must fail");
    assert!(
        error.no_space(),
        "the error must say the disk is full: {error}"
    );
    assert!(error.to_string().contains("full"), "{error}");
    assert!(
        error.still_running(),
        "the sandbox must keep running: {error}"
    );
    // Nothing was lost: it still runs with its memory intact.
    assert_eq!(sh(&sandbox, "sha256sum /dev/shm/keep").await, keep);
    assert_eq!(sh(&sandbox, "sha256sum /dev/shm/more").await, more);

    // With space again, the pause goes through and everything is there.
    std::fs::remove_file(&filler).unwrap();
    pause(&sandbox).await;
    drop(sandbox);
    let sandbox = resume(&env, &id).await;
    assert_eq!(sh(&sandbox, "sha256sum /dev/shm/keep").await, keep);
    assert_eq!(sh(&sandbox, "sha256sum /dev/shm/more").await, more);
    within(60, "destroy", sandbox.destroy()).await.unwrap();
    env.assert_clean();
    drop(env);
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_an_unknown_or_running_sandbox_is_a_clear_error() {
    let env = TestEnv::new();
    match env.manager.resume("sb-doesnotexist").await {
        Err(SnapshotOpError::NotPaused(id)) => assert_eq!(id, "sb-doesnotexist"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("resumed a sandbox that does not exist"),
    }
    match env
        .manager
        .clone_template("nope", &SandboxSpec::default())
        .await
    {
        Err(SnapshotOpError::NoTemplate(name)) => assert_eq!(name, "nope"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("cloned a template that does not exist"),
    }
    assert!(matches!(
        env.manager.create_template("sb-x", "../evil").await,
        Err(SnapshotOpError::InvalidName(_))
    ));
    env.assert_clean();
}
