//! Booting real VMs and running processes in them.

use std::time::{Duration, Instant};

use warren_sandbox::{Command, ExecError, GuestErrorKind, ProcessEvent};
use warren_tests::{TestEnv, within};

#[tokio::test(flavor = "multi_thread")]
async fn boots_a_guest_that_knows_who_it_is_and_goes_away_cleanly() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let info = sandbox.info().await.expect("info");
    assert_eq!(info.hostname, sandbox.id());
    assert!(
        info.kernel_release.starts_with("6.1."),
        "{}",
        info.kernel_release
    );
    assert_eq!(info.cpus, 1);
    assert!(
        info.mem_total_bytes > 400 << 20,
        "{} bytes of RAM",
        info.mem_total_bytes
    );
    // The clock was set at create: within a few seconds of the host's.
    warren_tests::assert_guest_clock_close(info.unix_time_ms, "after create");
    // The root disk is the overlay, writable, with the Debian userland.
    let output = sandbox
        .run(Command::shell(
            "touch /rootfs-is-writable && python3 -c 'print(6*7)'",
        ))
        .await
        .unwrap();
    assert_eq!(
        output.stdout_text(),
        "42\n",
        "stderr: {}",
        output.stderr_text()
    );
    let pid = sandbox.vm_pid();
    let dir = sandbox.dir().to_path_buf();
    within(30, "destroy", sandbox.destroy())
        .await
        .expect("destroy");
    assert!(!dir.exists(), "sandbox directory survived destroy");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "VM process survived destroy"
    );
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_reports_codes_output_env_cwd_stdin_and_user() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;

    let output = sandbox.run(Command::shell("exit 3")).await.unwrap();
    assert_eq!(output.status.code, Some(3));
    assert!(!output.status.success());

    let output = sandbox
        .run(Command::shell("echo out; echo err >&2; kill -TERM $$"))
        .await
        .unwrap();
    assert_eq!(output.stdout_text(), "out\n");
    assert_eq!(output.stderr_text(), "err\n");
    assert_eq!(output.status.signal, Some(15));
    assert_eq!(output.status.shell_code(), 143);

    let output = sandbox
        .run(
            Command::new("sh")
                .args(["-c", "echo \"$GREETING $0\""])
                .env("GREETING", "hello"),
        )
        .await
        .unwrap();
    assert_eq!(output.stdout_text(), "hello sh\n");

    let output = sandbox
        .run(Command::new("pwd").cwd("/usr/share"))
        .await
        .unwrap();
    assert_eq!(output.stdout_text(), "/usr/share\n");
    // Default working directory is the user's home.
    let output = sandbox.run(Command::new("pwd").user("user")).await.unwrap();
    assert_eq!(output.stdout_text(), "/home/user\n");

    let output = sandbox
        .run(Command::shell("id -un; id -u; echo $HOME").user("user"))
        .await
        .unwrap();
    assert_eq!(output.stdout_text(), "user\n1000\n/home/user\n");
    // A non-root user really lacks root's rights.
    let output = sandbox
        .run(Command::shell("touch /etc/nope").user("user"))
        .await
        .unwrap();
    assert_ne!(output.status.code, Some(0));
    assert!(
        output.stderr_text().contains("Permission denied"),
        "{}",
        output.stderr_text()
    );

    // stdin round trip through `sha256sum`.
    let process = sandbox
        .exec(Command::new("sha256sum").stdin(true))
        .await
        .unwrap();
    let payload = vec![b'x'; 300_000];
    process.write_stdin(payload.clone()).await.unwrap();
    process.close_stdin().await.unwrap();
    let output = process.wait_with_output().await.unwrap();
    let expected = warren_tests::sha256_hex(&payload);
    assert_eq!(output.stdout_text(), format!("{expected}  -\n"));

    // A command that does not exist is an error, not an exit status.
    match sandbox.run(Command::new("definitely-not-a-command")).await {
        Err(ExecError::CommandNotFound(message)) => {
            assert!(message.contains("definitely-not-a-command"), "{message}")
        }
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    // So is a user that does not exist.
    match sandbox.run(Command::new("true").user("nobody-here")).await {
        Err(ExecError::Guest(error)) => {
            assert_eq!(error.kind, GuestErrorKind::InvalidArgument);
            assert!(error.message.contains("nobody-here"), "{}", error.message);
        }
        other => panic!("expected an invalid user error, got {other:?}"),
    }
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_kills_the_whole_process_group() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let start = Instant::now();
    let output = sandbox
        .run(Command::shell("sleep 300 & sleep 300; echo never").timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(output.status.timed_out);
    assert_eq!(output.status.shell_code(), 124);
    assert!(!output.stdout_text().contains("never"));
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "timeout took {:?}",
        start.elapsed()
    );
    // The background sleep of that group is gone too.
    let output = sandbox
        .run(Command::shell("pgrep -x sleep || echo none"))
        .await
        .unwrap();
    assert_eq!(output.stdout_text(), "none\n");
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_concurrent_execs_each_get_their_own_output() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    sandbox.make_dir("/tmp/barrier", true).await.unwrap();
    // Each exec waits at a barrier until all ten are running: if the
    // channel serialised them, this could never finish.
    let runs = (0..10).map(|i| {
        let sandbox = &sandbox;
        async move {
            let script = format!(
                "touch /tmp/barrier/{i}; \
                 while [ $(ls /tmp/barrier | wc -l) -lt 10 ]; do sleep 0.1; done; \
                 for n in $(seq 1 200); do echo {i}-$n; echo err-{i}-$n >&2; done"
            );
            let output = sandbox.run(Command::shell(script)).await.unwrap();
            (i, output)
        }
    });
    let results = within(240, "10 concurrent execs", futures::future::join_all(runs)).await;
    for (i, output) in results {
        assert!(
            output.status.success(),
            "exec {i}: {}",
            output.stderr_text()
        );
        let lines: Vec<String> = output.stdout_text().lines().map(str::to_string).collect();
        let expected: Vec<String> = (1..=200).map(|n| format!("{i}-{n}")).collect();
        assert_eq!(lines, expected, "stdout of exec {i} was mixed up");
        let lines: Vec<String> = output.stderr_text().lines().map(str::to_string).collect();
        let expected: Vec<String> = (1..=200).map(|n| format!("err-{i}-{n}")).collect();
        assert_eq!(lines, expected, "stderr of exec {i} was mixed up");
    }
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pty_echoes_and_resizes() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let mut shell = sandbox
        .exec(
            Command::new("bash")
                .args(["--norc", "--noprofile", "-i"])
                .pty(30, 100),
        )
        .await
        .unwrap();
    let input = shell.input().unwrap();
    let mut screen = String::new();
    async fn read_until(process: &mut warren_sandbox::Process, screen: &mut String, needle: &str) {
        within(60, &format!("waiting for {needle:?}"), async {
            while !screen.contains(needle) {
                match process.next_event().await.unwrap() {
                    Some(ProcessEvent::Stdout(data)) => {
                        screen.push_str(&String::from_utf8_lossy(&data))
                    }
                    Some(other) => panic!("unexpected event {other:?}; screen so far: {screen}"),
                    None => panic!("shell ended; screen: {screen}"),
                }
            }
        })
        .await
    }
    input
        .write("stty size; echo mark-$((6*7))\n")
        .await
        .unwrap();
    read_until(&mut shell, &mut screen, "mark-42").await;
    assert!(screen.contains("30 100"), "initial size not seen: {screen}");
    // Typed characters are echoed by the terminal.
    assert!(screen.contains("echo mark-$((6*7))"), "no echo: {screen}");

    input.resize(40, 120).await.unwrap();
    screen.clear();
    input.write("stty size\n").await.unwrap();
    read_until(&mut shell, &mut screen, "40 120").await;

    input.write("exit 7\n").await.unwrap();
    let status = within(60, "shell exit", async {
        loop {
            match shell.next_event().await.unwrap() {
                Some(ProcessEvent::Exited(status)) => break status,
                Some(_) => continue,
                None => panic!("no exit status"),
            }
        }
    })
    .await;
    assert_eq!(status.code, Some(7));
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn background_processes_can_be_listed_fed_and_reattached() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let process = sandbox
        .exec(
            Command::shell("echo started; while read line; do echo got-$line; done; echo bye")
                .stdin(true)
                .background()
                .tag("reader"),
        )
        .await
        .unwrap();
    let pid = process.pid();
    // The handle goes away; the background process does not.
    drop(process);
    let listed = sandbox.processes().await.unwrap();
    let entry = listed.iter().find(|p| p.pid == pid).expect("listed");
    assert_eq!(entry.tag, "reader");
    assert!(entry.background);
    assert!(entry.exit.is_none());

    sandbox.send_input(pid, "one\n", false).await.unwrap();
    sandbox.send_input(pid, "two\n", true).await.unwrap();
    let output = within(
        60,
        "attach",
        sandbox.attach(pid, true).await.unwrap().wait_with_output(),
    )
    .await
    .unwrap();
    assert_eq!(output.stdout_text(), "started\ngot-one\ngot-two\nbye\n");
    assert!(output.status.success());

    // A foreground process dies with its caller's handle.
    let process = sandbox
        .exec(Command::new("sleep").arg("300"))
        .await
        .unwrap();
    let pid = process.pid();
    drop(process);
    within(30, "foreground process reaped", async {
        loop {
            let output = sandbox
                .run(Command::shell(format!(
                    "kill -0 {pid} 2>/dev/null && echo alive || echo gone"
                )))
                .await
                .unwrap();
            if output.stdout_text() == "gone\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

/// PID 1 runs the shell once with the default locale before it starts the
/// agent, so a ready guest already holds the shell, the C library and the
/// locale in its page cache: the first command after a resume must not read
/// them into fresh pages, which the next pause's diff would then have to
/// store (~3 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_guest_has_the_shell_and_the_default_locale_in_its_page_cache() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    // fincore runs without a shell and in the C locale, so it loads neither
    // of the files it looks at.
    let files = ["/usr/bin/dash", "/usr/lib/locale/C.utf8/LC_CTYPE"];
    let probe = Command::from_argv(
        [
            "/usr/bin/fincore",
            "--bytes",
            "--noheadings",
            "--output",
            "RES",
        ]
        .into_iter()
        .chain(files),
    )
    .env("LANG", "C");
    let output = sandbox.run(probe).await.expect("fincore");
    assert!(output.status.success(), "{}", output.stderr_text());
    let resident: Vec<u64> = output
        .stdout_text()
        .lines()
        .map(|line| line.trim().parse().expect("a byte count"))
        .collect();
    assert_eq!(resident.len(), files.len(), "{}", output.stdout_text());
    assert!(
        resident.iter().all(|&bytes| bytes > 0),
        "resident bytes of {files:?} in a ready guest: {resident:?}"
    );
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}
