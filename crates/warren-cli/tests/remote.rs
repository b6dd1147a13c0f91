//! The API commands end to end: a real `warren up` on a free loopback
//! port, a real VM, and the `warren` binary used as a person or a script
//! would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// A `warren up` for this test; stopped with SIGTERM when dropped, even
/// when the test panics.
struct Service {
    up: warren_testkit::WarrenUp,
    home: tempfile::TempDir,
    /// An empty directory, so explicit-URL runs cannot find the service
    /// locally by accident.
    elsewhere: tempfile::TempDir,
    url: String,
    key: String,
}

fn free_port() -> u16 {
    warren_testkit::free_port().unwrap()
}

impl Service {
    fn start() -> Self {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let mut up = warren_testkit::UpCommand::new(WARREN, home.path())
            .unwrap()
            .args(["--on-shutdown", "kill"])
            .spawn()
            .expect("start warren up");
        let key = up
            .wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            url: up.url().to_string(),
            up,
            home,
            elsewhere,
            key,
        }
    }

    fn log(&self) -> String {
        self.up.log()
    }

    /// Runs `warren` with WARREN_URL and WARREN_API_KEY.
    fn warren(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.warren_with(
            args,
            stdin,
            &[("WARREN_URL", &self.url), ("WARREN_API_KEY", &self.key)],
        )
    }

    /// Runs `warren` with a given key.
    fn warren_key(&self, key: &str, args: &[&str]) -> Output {
        self.warren_with(
            args,
            b"",
            &[("WARREN_URL", &self.url), ("WARREN_API_KEY", key)],
        )
    }

    /// Runs `warren` with only WARREN_HOME set: local discovery.
    fn warren_local(&self, args: &[&str]) -> Output {
        let home = self.home.path().to_str().unwrap().to_string();
        self.warren_with(args, b"", &[("WARREN_HOME", &home)])
    }

    fn warren_with(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(WARREN);
        command
            .args(args)
            .env_remove("WARREN_URL")
            .env_remove("WARREN_API_KEY")
            .env("WARREN_HOME", self.elsewhere.path())
            .env(
                "WARREN_CONFIG",
                self.elsewhere.path().join("no-config.toml"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start warren");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let output = child.wait_with_output().expect("warren finished");
        feeder.join().unwrap();
        output
    }

    /// Stops the service with SIGTERM and waits; returns its exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        match self.up.terminate(Duration::from_secs(60)) {
            warren_testkit::Stopped::Exited(status) => Some(status),
            warren_testkit::Stopped::Killed(status) => status,
            warren_testkit::Stopped::NotRunning => None,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts an exit status, showing the output when it differs.
#[track_caller]
fn expect_code(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

fn json(output: &Output) -> serde_json::Value {
    expect_code(output, 0);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&output.stdout)))
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Pseudo-random bytes, so transfers cannot be faked by zeros.
fn pattern(len: usize) -> Vec<u8> {
    warren_testkit::pattern(len, 0x2545_F491_4F6C_DD1D)
}

/// Processes whose command line mentions `dir` and `name`.
fn processes_mentioning(dir: &Path, name: &str) -> Vec<String> {
    warren_testkit::processes_mentioning(dir)
        .into_iter()
        .filter(|p| p.cmdline().contains(name))
        .map(|p| format!("{}: {}", p.pid, p.cmdline()))
        .collect()
}

#[test]
fn a_sandbox_through_the_api_as_a_user_would() {
    let mut service = Service::start();
    let work = tempfile::tempdir().unwrap();

    // Usage errors are clap's 2, before any request.
    expect_code(&service.warren(&["create", "--cpus", "many"], b""), 2);
    expect_code(&service.warren(&["ls", "--meta", "novalue"], b""), 2);

    let templates = text(&service.warren(&["templates"], b"").stdout);
    assert!(
        templates.contains("debian") && templates.contains("tiny"),
        "{templates}"
    );

    // create prints the id (the spinner is on stderr, hidden without a
    // terminal).
    let created = service.warren(
        &[
            "create",
            "--memory",
            "256",
            "--meta",
            "suite=remote",
            "--env",
            "GREETING=hello",
        ],
        b"",
    );
    expect_code(&created, 0);
    let id = text(&created.stdout).trim().to_string();
    assert!(id.starts_with("sb-") && !id.contains('\n'), "{id:?}");

    // ls: a table for people, JSON for scripts, filters.
    let table = text(&service.warren(&["ls"], b"").stdout);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("ID "), "{table}");
    let row = lines
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("running") && row.contains("suite=remote"),
        "{row}"
    );
    let list = json(&service.warren(&["ls", "--json"], b""));
    let entry = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("the new sandbox is listed");
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["memory_mib"], 256);
    assert!(
        ids(&json(
            &service.warren(&["ls", "--meta", "suite=remote", "--json"], b"")
        ))
        .contains(&id)
    );
    assert!(
        ids(&json(
            &service.warren(&["ls", "--meta", "suite=other", "--json"], b"")
        ))
        .is_empty()
    );
    assert!(
        !ids(&json(
            &service.warren(&["ls", "--state", "stopped", "--json"], b"")
        ))
        .contains(&id)
    );
    let got = json(&service.warren(&["get", &id, "--json"], b""));
    assert_eq!(got["env"]["GREETING"], "hello");

    // Local discovery: only WARREN_HOME, no URL or key.
    assert!(ids(&json(&service.warren_local(&["ls", "--json"]))).contains(&id));

    // exec: the command's status, stdout and stderr kept apart, the
    // sandbox's env plus --env.
    let output = service.warren(
        &[
            "exec",
            "-e",
            "X=1",
            &id,
            "--",
            "sh",
            "-c",
            "echo out-$GREETING-$X; echo err >&2; exit 3",
        ],
        b"",
    );
    expect_code(&output, 3);
    assert_eq!(text(&output.stdout), "out-hello-1\n");
    assert_eq!(text(&output.stderr), "err\n");
    // stdin is piped through, byte for byte.
    let input = pattern(200_000);
    let output = service.warren(&["exec", &id, "--", "cat"], &input);
    expect_code(&output, 0);
    assert!(
        output.stdout == input,
        "cat returned {} bytes",
        output.stdout.len()
    );
    let output = service.warren(
        &["exec", "--cwd", "/tmp", &id, "--", "sh", "-c", "pwd; wc -c"],
        b"12345",
    );
    assert_eq!(text(&output.stdout), "/tmp\n5\n");
    // A shell's statuses: 127 not found, 124 timed out.
    let output = service.warren(&["exec", &id, "--", "no-such-command"], b"");
    expect_code(&output, 127);
    assert!(
        text(&output.stderr).contains("no-such-command"),
        "{}",
        text(&output.stderr)
    );
    expect_code(
        &service.warren(&["exec", "--timeout", "1", &id, "--", "sleep", "30"], b""),
        124,
    );
    let result = service.warren(
        &["exec", "--json", &id, "--", "sh", "-c", "echo hi; exit 4"],
        b"",
    );
    expect_code(&result, 4);
    let result: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(result["stdout"], "hi\n");
    assert_eq!(result["exit_code"], 4);

    // cp both ways (a few MiB), and stdout/stdin as `-`.
    let data = pattern(3 * 1024 * 1024 + 123);
    let local = work.path().join("data.bin");
    std::fs::write(&local, &data).unwrap();
    expect_code(
        &service.warren(
            &[
                "cp",
                local.to_str().unwrap(),
                &format!("{id}:/tmp/data.bin"),
            ],
            b"",
        ),
        0,
    );
    let back = work.path().join("back.bin");
    expect_code(
        &service.warren(
            &["cp", &format!("{id}:/tmp/data.bin"), back.to_str().unwrap()],
            b"",
        ),
        0,
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the round trip changed the bytes"
    );
    let output = service.warren(&["cp", &format!("{id}:/tmp/data.bin"), "-"], b"");
    expect_code(&output, 0);
    assert!(
        output.stdout == data,
        "cp to - gave {} bytes",
        output.stdout.len()
    );
    // Into a directory: the source's name is kept.
    expect_code(
        &service.warren(&["cp", "-", &format!("{id}:/tmp/piped.bin")], &data[..1000]),
        0,
    );
    let dir = work.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    expect_code(
        &service.warren(
            &["cp", &format!("{id}:/tmp/piped.bin"), dir.to_str().unwrap()],
            b"",
        ),
        0,
    );
    assert_eq!(std::fs::read(dir.join("piped.bin")).unwrap(), &data[..1000]);
    let output = service.warren(
        &["cp", &format!("{id}:/tmp/missing"), back.to_str().unwrap()],
        b"",
    );
    expect_code(&output, 3);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "a failed copy must not touch the target"
    );

    // logs: the guest console.
    let logs = service.warren(&["logs", &id], b"");
    expect_code(&logs, 0);
    assert!(!logs.stdout.is_empty());

    // timeout; pause says what it wrote, resume continues where it was.
    let updated = json(&service.warren(&["timeout", &id, "600", "--json"], b""));
    assert_eq!(updated["timeout_secs"], 600);
    expect_code(
        &service.warren(
            &["exec", &id, "--", "sh", "-c", "echo kept > /tmp/kept"],
            b"",
        ),
        0,
    );
    let paused = service.warren(&["pause", &id], b"");
    expect_code(&paused, 0);
    let line = text(&paused.stdout);
    assert!(
        line.starts_with(&format!("paused {id}: ")) && line.contains(" written ("),
        "{line}"
    );
    assert!(
        ids(&json(
            &service.warren(&["ls", "--state", "paused", "--json"], b"")
        ))
        .contains(&id)
    );
    let got = text(&service.warren(&["get", &id], b"").stdout);
    assert!(
        got.contains("paused") && got.contains("auto resume:"),
        "{got}"
    );
    // Pausing twice is a conflict (4); so is resuming a running sandbox.
    expect_code(&service.warren(&["pause", &id], b""), 4);
    let resumed = json(&service.warren(&["resume", &id, "--json"], b""));
    assert_eq!(resumed["state"], "running");
    expect_code(&service.warren(&["resume", &id], b""), 4);
    let output = service.warren(&["exec", &id, "--", "cat", "/tmp/kept"], b"");
    expect_code(&output, 0);
    assert_eq!(text(&output.stdout), "kept\n");

    // Snapshots: a template clones start from; deleting it waits for them.
    let snapshot = json(&service.warren(&["snapshot", &id, "cli-snap", "--json"], b""));
    assert_eq!(snapshot["name"], "cli-snap");
    assert_eq!(snapshot["memory_mib"], 256);
    let table = text(&service.warren(&["snapshots"], b"").stdout);
    assert!(
        table.starts_with("NAME ") && table.contains("cli-snap"),
        "{table}"
    );
    expect_code(&service.warren(&["snapshot", &id, "cli-snap"], b""), 4);
    // Human output: the result line, then the hint on a line of its own.
    let human = service.warren(&["snapshot", &id, "cli-snap-2"], b"");
    expect_code(&human, 0);
    let lines: Vec<String> = text(&human.stdout).lines().map(String::from).collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with(&format!("snapshot cli-snap-2 of {id}: "))
            && lines[1] == "create clones with `warren create --template cli-snap-2`",
        "{lines:?}"
    );
    expect_code(&service.warren(&["snapshots", "rm", "cli-snap-2"], b""), 0);
    let clone = service.warren(&["create", "--template", "cli-snap"], b"");
    expect_code(&clone, 0);
    let clone = text(&clone.stdout).trim().to_string();
    let output = service.warren(&["exec", &clone, "--", "cat", "/tmp/kept"], b"");
    assert_eq!(text(&output.stdout), "kept\n");
    let got = json(&service.warren(&["snapshots", "get", "cli-snap", "--json"], b""));
    assert_eq!(got["used_by"], serde_json::json!([clone]));
    let refused = service.warren(&["snapshots", "rm", "cli-snap"], b"");
    expect_code(&refused, 4);
    assert!(
        text(&refused.stderr).contains(&clone),
        "{}",
        text(&refused.stderr)
    );
    expect_code(&service.warren(&["kill", &clone], b""), 0);
    expect_code(&service.warren(&["snapshots", "rm", "cli-snap"], b""), 0);
    expect_code(&service.warren(&["snapshots", "get", "cli-snap"], b""), 3);

    // An interactive shell, fed from a pipe.
    let shell = service.warren(&["shell", &id], b"echo shell-$((6*7))\nexit 7\n");
    expect_code(&shell, 7);
    assert!(
        text(&shell.stdout).contains("shell-42"),
        "{}",
        text(&shell.stdout)
    );

    // Errors scripts can tell apart.
    let missing = service.warren(&["get", "sb-doesnotexist"], b"");
    expect_code(&missing, 3);
    let stderr = text(&missing.stderr);
    assert!(
        stderr.contains("warren: ") && stderr.contains("hint: "),
        "{stderr}"
    );
    expect_code(&service.warren(&["kill", "sb-doesnotexist"], b""), 3);
    expect_code(
        &service.warren(&["exec", "sb-doesnotexist", "--", "true"], b""),
        125,
    );
    let refused = service.warren_key("wrn_not_a_real_key", &["ls"]);
    expect_code(&refused, 5);
    assert!(
        text(&refused.stderr).contains("WARREN_API_KEY"),
        "{}",
        text(&refused.stderr)
    );

    // Keys: a new key works until it is revoked.
    let key = json(&service.warren(&["keys", "create", "ci", "--json"], b""));
    let (key_id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    expect_code(&service.warren_key(secret, &["ls"]), 0);
    assert!(text(&service.warren(&["keys", "ls"], b"").stdout).contains(key_id));
    expect_code(&service.warren(&["keys", "revoke", key_id], b""), 0);
    expect_code(&service.warren_key(secret, &["ls"]), 5);

    // What the commands do not reach, through the client library.
    client_api(&service.url, &service.key, &id);

    // kill: the record stays, stopped; exec then fails as warren's own
    // failure (125), a second kill is fine.
    let killed = service.warren(&["kill", &id], b"");
    expect_code(&killed, 0);
    assert_eq!(text(&killed.stdout).trim(), id);
    let stopped = json(&service.warren(&["ls", "--state", "stopped", "--json"], b""));
    let entry = stopped["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("the killed sandbox is listed as stopped");
    assert_eq!(entry["stop_reason"], "killed");
    assert!(text(&service.warren(&["ls"], b"").stdout).contains("stopped (killed)"));
    expect_code(&service.warren(&["exec", &id, "--", "true"], b""), 125);
    expect_code(&service.warren(&["kill", &id], b""), 0);

    let events = json(&service.warren(&["events", "--sandbox", &id, "--json"], b""));
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "sandbox.created",
        "sandbox.timeout_changed",
        "sandbox.paused",
        "sandbox.resumed",
        "sandbox.killed",
    ] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }

    let home: PathBuf = service.home.path().to_path_buf();
    let status = service.stop().expect("the service was running");
    assert!(status.success(), "warren up: {status}\n{}", service.log());
    let left = processes_mentioning(&home, "qemu");
    assert!(left.is_empty(), "QEMU processes left behind: {left:?}");
}

/// The rest of the API through `warren-client`: background processes,
/// attach, signals, terminals, file operations, templates, events.
fn client_api(url: &str, key: &str, id: &str) {
    use warren_client::{
        Client, ExecEvent, ListEvents, PtyEvent, PtyOptions, PtySize, StartProcess, StreamExec,
        UploadOptions,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::new(url, key).unwrap();
        let health = client.health().await.unwrap();
        assert!(
            client
                .metrics()
                .await
                .unwrap()
                .contains("http_requests_total")
        );
        assert_eq!(health.status, "ok");
        assert!(health.sandboxes_running >= 1);
        assert_eq!(client.get_template("tiny").await.unwrap().kind, "image");
        let missing = client.get_template("no-such-template").await.unwrap_err();
        assert_eq!(missing.status(), Some(404));

        // A background process fed through /stdin, collected by attach.
        let started = client
            .start_process(
                id,
                &StartProcess {
                    argv: Some(vec!["cat".into()]),
                    stdin: Some(true),
                    tag: Some("echoer".into()),
                    ..StartProcess::default()
                },
            )
            .await
            .unwrap();
        let listed = client.list_processes(id).await.unwrap();
        let entry = listed
            .processes
            .iter()
            .find(|p| p.pid == started.pid)
            .expect("the background process is listed");
        assert_eq!(entry.tag, "echoer");
        client
            .process_stdin(id, started.pid, b"line\x00binary\n", true)
            .await
            .unwrap();
        let output = client
            .attach(id, started.pid, true)
            .await
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        assert_eq!(output.stdout, b"line\x00binary\n");
        assert!(output.status.success(), "{:?}", output.status);

        // Signals reach background processes.
        let sleeper = client
            .start_process(
                id,
                &StartProcess {
                    argv: Some(vec!["sleep".into(), "300".into()]),
                    ..StartProcess::default()
                },
            )
            .await
            .unwrap();
        let session = client.attach(id, sleeper.pid, true).await.unwrap();
        client.signal_process(id, sleeper.pid, 9).await.unwrap();
        let status = session.wait_with_output().await.unwrap().status;
        assert_eq!(status.signal, Some(9), "{status:?}");
        assert_eq!(status.shell_code(), 137);

        // Streamed exec under a terminal, resized while it runs.
        let request = StreamExec {
            pty: Some(PtySize { cols: 80, rows: 24 }),
            ..StreamExec::shell("sleep 1; stty size")
        };
        let mut session = client.exec_stream(id, &request).await.unwrap();
        session
            .input()
            .resize(PtySize {
                cols: 100,
                rows: 30,
            })
            .await
            .unwrap();
        let mut seen = Vec::new();
        let status = loop {
            match session.next_event().await.unwrap().unwrap() {
                ExecEvent::Stdout(data) | ExecEvent::Stderr(data) => seen.extend_from_slice(&data),
                ExecEvent::Exit(status) => break status,
            }
        };
        assert!(status.success());
        assert!(
            String::from_utf8_lossy(&seen).contains("30 100"),
            "{seen:?}"
        );
        // stdin, then a signal, over exec/ws.
        let session = client
            .exec_stream(id, &StreamExec::shell("read x; echo got-$x; sleep 300"))
            .await
            .unwrap();
        let input = session.input();
        input.write(b"it\n").await.unwrap();
        let mut session = session;
        let mut out = Vec::new();
        loop {
            match session.next_event().await.unwrap().unwrap() {
                ExecEvent::Stdout(data) => {
                    out.extend_from_slice(&data);
                    if out.ends_with(b"got-it\n") {
                        input.signal(15).await.unwrap();
                    }
                }
                ExecEvent::Stderr(_) => {}
                ExecEvent::Exit(status) => {
                    assert_eq!(status.signal, Some(15), "{status:?}");
                    break;
                }
            }
        }

        // A terminal session.
        let mut pty = client
            .pty(
                id,
                &PtyOptions {
                    cmd: Some("echo pty-$((40+2)); exit 3".into()),
                    ..PtyOptions::default()
                },
            )
            .await
            .unwrap();
        let mut screen = Vec::new();
        let status = loop {
            match pty.next_event().await.unwrap().unwrap() {
                PtyEvent::Output(data) => screen.extend_from_slice(&data),
                PtyEvent::Exit(status) => break status,
            }
        };
        assert_eq!(status.exit_code, Some(3));
        assert!(String::from_utf8_lossy(&screen).contains("pty-42"));

        // Files: mkdir, multipart upload, list, stat, rename, read, remove.
        let dir = client.mkdir(id, "/tmp/api/sub", true).await.unwrap();
        assert_eq!(dir.kind, warren_client::FileKind::Dir);
        let body = b"multipart body".to_vec();
        let size = body.len() as u64;
        let info = client
            .upload_multipart(
                id,
                "/tmp/api/sub/m.txt",
                std::io::Cursor::new(body.clone()),
                Some(size),
                &UploadOptions {
                    mode: Some(0o640),
                    ..UploadOptions::default()
                },
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!((info.size, info.mode & 0o777), (size, 0o640));
        let listing = client.list_files(id, "/tmp/api", 1).await.unwrap();
        assert!(
            listing
                .entries
                .iter()
                .any(|e| e.path == "/tmp/api/sub/m.txt"),
            "{listing:?}"
        );
        client
            .rename(id, "/tmp/api/sub/m.txt", "/tmp/api/n.txt", false)
            .await
            .unwrap();
        assert_eq!(client.read_file(id, "/tmp/api/n.txt").await.unwrap(), body);
        let written = client
            .write_file(
                id,
                "/tmp/api/new/x.sh",
                "#!/bin/sh\necho x\n",
                &UploadOptions {
                    create_parents: true,
                    mode: Some(0o755),
                    ..UploadOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(written.mode & 0o777, 0o755);
        client.remove(id, "/tmp/api", true).await.unwrap();
        let gone = client.stat(id, "/tmp/api").await.unwrap_err();
        assert_eq!(gone.status(), Some(404), "{gone}");

        let events = client.sandbox_events(id).await.unwrap();
        assert!(events.events.iter().any(|e| e.kind == "sandbox.created"));
        let latest = client
            .list_events(&ListEvents {
                limit: Some(1),
                ..ListEvents::default()
            })
            .await
            .unwrap();
        assert_eq!(latest.events.len(), 1);
    });
}

#[test]
fn without_a_service_the_error_says_how_to_fix_it() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(WARREN)
        .args(["ls"])
        .env_remove("WARREN_URL")
        .env_remove("WARREN_API_KEY")
        .env("WARREN_HOME", home.path())
        .env("WARREN_CONFIG", home.path().join("none.toml"))
        .output()
        .unwrap();
    expect_code(&output, 8);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("warren up") && stderr.contains("WARREN_URL"),
        "{stderr}"
    );

    // A URL where nothing listens.
    let output = Command::new(WARREN)
        .args(["ls"])
        .env("WARREN_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("WARREN_API_KEY", "wrn_x")
        .env("WARREN_CONFIG", home.path().join("none.toml"))
        .output()
        .unwrap();
    expect_code(&output, 8);
    assert!(
        text(&output.stderr).contains("cannot reach"),
        "{}",
        text(&output.stderr)
    );
}

/// A WebSocket echo server (Python's standard library only, text frames
/// under 126 bytes), for the port proxy's upgrade path.
const WS_ECHO: &str = r#"
import base64, hashlib, socket, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def serve(c):
    f = c.makefile("rb")
    key = None
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if key is None:
        return
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        head = f.read(2)
        if len(head) < 2:
            return
        op, n = head[0] & 15, head[1] & 127
        if n == 126:
            n = int.from_bytes(f.read(2), "big")
        elif n == 127:
            n = int.from_bytes(f.read(8), "big")
        mask = f.read(4) if head[1] & 128 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            return
        if op == 1:
            out = b"echo " + payload
            c.sendall(bytes([0x81, len(out)]) + out)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8765))
s.listen()
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// Polls `port` inside the sandbox until something listens there.
fn wait_for_listener(service: &Service, id: &str, port: u16) {
    let probe = format!("import socket; socket.create_connection(('127.0.0.1', {port}), 1)");
    for _ in 0..200 {
        let output = service.warren(&["exec", id, "--", "python3", "-c", &probe], b"");
        if output.status.code() == Some(0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("nothing listens on port {port} in {id}");
}

#[test]
fn a_server_in_a_sandbox_is_reached_by_its_url_and_through_port_forward() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let service = Service::start();
    let work = tempfile::tempdir().unwrap();
    let created = service.warren(&["create", "--memory", "256"], b"");
    expect_code(&created, 0);
    let id = text(&created.stdout).trim().to_string();

    // Two servers in the guest: python's http.server and a WebSocket echo,
    // started detached (their output goes nowhere, so exec returns).
    let script = work.path().join("ws_echo.py");
    std::fs::write(&script, WS_ECHO).unwrap();
    expect_code(
        &service.warren(
            &[
                "cp",
                script.to_str().unwrap(),
                &format!("{id}:/srv/ws_echo.py"),
            ],
            b"",
        ),
        0,
    );
    let start = "mkdir -p /srv/www && echo 'served from the sandbox' > /srv/www/index.txt \
        && cd /srv/www && (setsid python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 </dev/null &) \
        && (setsid python3 /srv/ws_echo.py >/dev/null 2>&1 </dev/null &)";
    expect_code(
        &service.warren(&["exec", &id, "--", "sh", "-c", start], b""),
        0,
    );
    wait_for_listener(&service, &id, 8000);
    wait_for_listener(&service, &id, 8765);
    // One more on loopback only, which the port forms cannot reach.
    let local_only =
        "(setsid python3 -m http.server 8001 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null &)";
    expect_code(
        &service.warren(&["exec", &id, "--", "sh", "-c", local_only], b""),
        0,
    );
    wait_for_listener(&service, &id, 8001);

    // `warren port ID` lists what listens, from the guest's own tables.
    let listed = json(&service.warren(&["port", &id, "--json"], b""));
    let ports = listed["ports"].as_array().unwrap();
    let find = |port: u16| {
        ports
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("port {port} not listed: {listed}"))
    };
    assert_eq!(find(8000)["loopback_only"], false);
    assert_eq!(find(8765)["loopback_only"], false);
    assert_eq!(find(8001)["loopback_only"], true);
    let table = text(&service.warren(&["port", &id], b"").stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("8001") && l.contains("unreachable")),
        "{table}"
    );

    // `warren port` prints the host-form URL with the access token; a
    // browser (here reqwest, told that *.localhost is loopback, as
    // browsers know) follows it into a cookie and gets the file.
    let printed = service.warren(&["port", &id, "8000"], b"");
    expect_code(&printed, 0);
    let url = text(&printed.stdout).trim().to_string();
    let listener: std::net::SocketAddr = service.url.trim_start_matches("http://").parse().unwrap();
    let host = format!("8000-{id}.localhost");
    assert!(
        url.starts_with(&format!(
            "http://{host}:{}/?warren_token=wat_",
            listener.port()
        )),
        "{url}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let browser = reqwest::Client::builder()
            .resolve(&host, listener)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let index = url.replace("/?", "/index.txt?");
        let first = browser.get(&index).send().await.unwrap();
        assert_eq!(first.status(), 303);
        assert_eq!(first.headers()["location"], "/index.txt");
        let cookie = first.headers()["set-cookie"].to_str().unwrap().to_string();
        let cookie = cookie.split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("warren_token=wat_"), "{cookie}");
        // The cookie alone opens it now.
        let page = browser
            .get(format!("http://{host}:{}/index.txt", listener.port()))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.text().await.unwrap(), "served from the sandbox\n");
        // Without the token: not public.
        let stranger = reqwest::Client::builder()
            .resolve(&host, listener)
            .build()
            .unwrap();
        let refused = stranger
            .get(format!("http://{host}:{}/index.txt", listener.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);

        // A WebSocket through the path form, with the API key.
        let ws_url = format!("ws://{listener}/v1/sandboxes/{id}/ports/8765/");
        let mut request = ws_url.into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", service.key).parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        socket.send(Message::Text("hi there".into())).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "echo hi there");
    });

    // `--public` opens the port to anyone, `--private` closes it again.
    let public = service.warren(&["port", &id, "8000", "--public", "--json"], b"");
    expect_code(&public, 0);
    let public = json(&public);
    assert_eq!(public["public"], true);
    assert_eq!(
        public["url"].as_str().unwrap(),
        format!("http://{host}:{}/", listener.port())
    );
    let got = json(&service.warren(&["get", &id, "--json"], b""));
    assert_eq!(got["public_ports"], serde_json::json!([8000]));
    expect_code(&service.warren(&["port", &id, "8000", "--private"], b""), 0);
    let got = json(&service.warren(&["get", &id, "--json"], b""));
    assert_eq!(got["public_ports"], serde_json::json!([]));

    // `warren port-forward ID 8000:0`: a local port joined to the sandbox's.
    let mut forward = Command::new(WARREN)
        .args(["port-forward", &id, "8000:0"])
        .env("WARREN_URL", &service.url)
        .env("WARREN_API_KEY", &service.key)
        .env("WARREN_HOME", service.elsewhere.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(forward.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let local: std::net::SocketAddr = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    assert!(local.ip().is_loopback() && local.port() != 0, "{local}");
    runtime.block_on(async {
        for _ in 0..3 {
            let page = reqwest::get(format!("http://{local}/index.txt"))
                .await
                .unwrap();
            assert_eq!(page.status(), 200);
            assert_eq!(page.text().await.unwrap(), "served from the sandbox\n");
        }
    });
    forward.kill().unwrap();
    forward.wait().unwrap();

    // A wrong id fails at once, before anything listens.
    let output = service.warren(&["port-forward", "sb-nosuchsandbo", "80"], b"");
    expect_code(&output, 3);
    expect_code(&service.warren(&["kill", &id], b""), 0);
}
