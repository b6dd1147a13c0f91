//! End-to-end tests of the agent on the host: the real binary in
//! `--listen-unix` mode, reached through the real link (frames, epochs)
//! and a tonic client, exactly as the host library talks to a VM.
//!
//! They run as root (as on the project's machines and CI), which the
//! `user: "nobody"` test needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};
use warren_proto::link::HostLink;
use warren_proto::pb::{self, agent_client::AgentClient, exec_event::Event, exec_input::Input};

/// A running agent and a client connected to it.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    client: AgentClient<Channel>,
    _link: HostLink,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_warren-guest"))
            .arg("agent")
            .arg("--listen-unix")
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .expect("start warren-guest");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the agent socket never appeared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (client, link, _) = connect(&socket).await;
        Self {
            child,
            dir,
            client,
            _link: link,
        }
    }

    /// A second, independent connection (as a new host process would
    /// make); the returned socket handle can cut it off.
    async fn connect(
        &self,
    ) -> (
        AgentClient<Channel>,
        HostLink,
        std::os::unix::net::UnixStream,
    ) {
        connect(&self.dir.path().join("agent.sock")).await
    }

    fn client(&self) -> AgentClient<Channel> {
        self.client.clone()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// Connects a link and a gRPC client to the agent's socket.
async fn connect(
    socket: &Path,
) -> (
    AgentClient<Channel>,
    HostLink,
    std::os::unix::net::UnixStream,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("connecting to the agent failed: {e}"),
        }
    };
    let cutter = stream.try_clone().unwrap();
    stream.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(stream).unwrap();
    let mut link = HostLink::establish(stream, Duration::from_secs(10))
        .await
        .unwrap();
    let slot = Arc::new(Mutex::new(link.take_stream()));
    let channel = Endpoint::from_static("http://agent")
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .connect_with_connector(tower::service_fn(move |_| {
            let stream = slot.lock().unwrap().take();
            async move {
                stream
                    .map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the link stream was already used"))
            }
        }))
        .await
        .unwrap();
    let client = AgentClient::new(channel)
        .max_decoding_message_size(warren_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(warren_proto::MAX_MESSAGE_BYTES);
    (client, link, cutter)
}

/// What a finished process produced.
#[derive(Debug, Default)]
struct Output {
    pid: u32,
    stdout: String,
    stderr: String,
    exited: Option<pb::ExecExited>,
}

fn start_input(start: pb::ExecStart) -> pb::ExecInput {
    pb::ExecInput {
        input: Some(Input::Start(start)),
    }
}

fn argv(args: &[&str]) -> pb::ExecStart {
    pb::ExecStart {
        argv: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn shell(command: &str) -> pb::ExecStart {
    pb::ExecStart {
        shell: command.to_string(),
        ..Default::default()
    }
}

async fn collect(mut events: Streaming<pb::ExecEvent>) -> Output {
    let mut out = Output::default();
    while let Some(event) = events.message().await.unwrap() {
        match event.event.unwrap() {
            Event::Started(s) => out.pid = s.pid,
            Event::Stdout(b) => out.stdout.push_str(&String::from_utf8_lossy(&b)),
            Event::Stderr(b) => out.stderr.push_str(&String::from_utf8_lossy(&b)),
            Event::Exited(e) => out.exited = Some(e),
        }
    }
    out
}

/// Runs a command with no stdin and collects everything.
async fn run(
    client: &mut AgentClient<Channel>,
    start: pb::ExecStart,
) -> Result<Output, tonic::Status> {
    let events = client
        .exec(tokio_stream::iter(vec![start_input(start)]))
        .await?
        .into_inner();
    Ok(collect(events).await)
}

/// Starts an interactive exec; returns the input sender and the events.
async fn open_exec(
    client: &mut AgentClient<Channel>,
    start: pb::ExecStart,
) -> (mpsc::Sender<pb::ExecInput>, Streaming<pb::ExecEvent>, u32) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(start_input(start)).await.unwrap();
    let mut events = client
        .exec(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let pid = match events.message().await.unwrap().unwrap().event.unwrap() {
        Event::Started(s) => s.pid,
        other => panic!("expected started, got {other:?}"),
    };
    (tx, events, pid)
}

/// Reads events until the concatenated output contains `needle`.
async fn read_until(events: &mut Streaming<pb::ExecEvent>, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        while !seen.contains(needle) {
            match events.message().await.unwrap().map(|e| e.event.unwrap()) {
                Some(Event::Stdout(b) | Event::Stderr(b)) => {
                    seen.push_str(&String::from_utf8_lossy(&b))
                }
                Some(other) => {
                    panic!("unexpected {other:?} while waiting for {needle:?} (seen {seen:?})")
                }
                None => panic!("stream ended while waiting for {needle:?} (seen {seen:?})"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; seen {seen:?}"));
    seen
}

#[tokio::test]
async fn info_reports_versions() {
    let agent = Agent::start().await;
    let info = agent
        .client()
        .info(pb::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.protocol_version, warren_proto::PROTOCOL_VERSION);
    assert!(info.cpus >= 1 && info.mem_total_bytes > 0);
}

#[tokio::test]
async fn exec_reports_exit_codes_output_env_and_cwd() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let out = run(&mut client, shell("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.exited.unwrap().exit_code, Some(3));
    assert!(out.pid > 0);

    let mut start = shell("echo \"$FOO|$HOME|$USER|$PATH|$LANG\"; pwd");
    start.env = HashMap::from([("FOO".to_string(), "bar baz".to_string())]);
    start.cwd = "/tmp".into();
    let out = run(&mut client, start).await.unwrap();
    assert_eq!(
        out.stdout,
        "bar baz|/root|root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|C.UTF-8\n/tmp\n"
    );

    // The environment starts clean: nothing leaks from the agent.
    let out = run(&mut client, argv(&["env"])).await.unwrap();
    assert!(!out.stdout.contains("CARGO"), "{}", out.stdout);

    let out = run(&mut client, shell("kill -TERM $$")).await.unwrap();
    let exited = out.exited.unwrap();
    assert_eq!((exited.exit_code, exited.signal), (None, Some(15)));
}

#[tokio::test]
async fn exec_errors_are_clear() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let err = run(&mut client, argv(&["warren-no-such-command", "x"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "command not found: warren-no-such-command");

    let mut start = argv(&["true"]);
    start.cwd = "/no/such/dir".into();
    let err = run(&mut client, start).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "working directory /no/such/dir does not exist"
    );

    let mut start = argv(&["true"]);
    start.user = "warren-no-such-user".into();
    let err = run(&mut client, start).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "no user named warren-no-such-user in the sandbox"
    );

    let err = run(&mut client, pb::ExecStart::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let not_start = pb::ExecInput {
        input: Some(Input::Stdin(Bytes::from_static(b"x"))),
    };
    let err = client
        .exec(tokio_stream::iter(vec![not_start]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn stdin_round_trips() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let mut start = argv(&["sh", "-c", "cat; echo end"]);
    start.stdin = true;
    let (tx, events, _) = open_exec(&mut client, start).await;
    // More than a pipe holds, so backpressure is exercised.
    let payload: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for chunk in payload.chunks(50_000) {
        tx.send(pb::ExecInput {
            input: Some(Input::Stdin(Bytes::copy_from_slice(chunk))),
        })
        .await
        .unwrap();
    }
    tx.send(pb::ExecInput {
        input: Some(Input::CloseStdin(pb::StdinClose {})),
    })
    .await
    .unwrap();
    let out = collect(events).await;
    assert_eq!(out.stdout.len(), payload.len() + 4);
    assert!(out.stdout.starts_with("abcdefghijklmnopqrstuvwxyzabc"));
    assert!(out.stdout.ends_with("end\n"));
    assert_eq!(out.exited.unwrap().exit_code, Some(0));
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let mut start = shell("sleep 30 & sleep 30");
    start.timeout_ms = 300;
    let began = Instant::now();
    let out = run(&mut client, start).await.unwrap();
    let exited = out.exited.unwrap();
    assert!(exited.timed_out);
    assert_eq!(exited.signal, Some(9));
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn daemons_holding_pipes_do_not_hang_exec() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let began = Instant::now();
    let out = run(&mut client, shell("sleep 3 & echo started"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "started\n");
    assert_eq!(out.exited.unwrap().exit_code, Some(0));
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn ten_concurrent_execs() {
    let agent = Agent::start().await;
    let runs = (0..10).map(|i| {
        let mut client = agent.client();
        async move {
            run(&mut client, shell(&format!("sleep 0.2; echo {i}")))
                .await
                .unwrap()
        }
    });
    let began = Instant::now();
    let outputs = futures_join_all(runs).await;
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out.stdout, format!("{i}\n"));
    }
    assert!(began.elapsed() < Duration::from_secs(5));
}

/// Joins futures without pulling in the futures crate.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn cancelled_foreground_exec_is_killed() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let (tx, events, pid) = open_exec(&mut client, argv(&["sleep", "30"])).await;
    drop(events);
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // The agent kills and reaps it: the pid disappears.
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "process {pid} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn background_process_list_attach_input_signal() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let mut start = shell("echo ready; while read line; do echo got:$line; done");
    start.background = true;
    start.stdin = true;
    start.tag = "worker".into();
    let (tx, mut events, pid) = open_exec(&mut client, start).await;
    read_until(&mut events, "ready").await;
    // The caller goes away; a background process keeps running.
    drop(events);
    drop(tx);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let list = client
        .list_processes(pb::ListProcessesRequest {})
        .await
        .unwrap()
        .into_inner();
    let info = list
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .expect("listed");
    assert!(info.background && info.exited.is_none());
    assert_eq!(info.tag, "worker");

    let mut attached = client
        .attach(pb::AttachRequest { pid, replay: true })
        .await
        .unwrap()
        .into_inner();
    read_until(&mut attached, "ready\n").await;
    let mut live = client
        .attach(pb::AttachRequest { pid, replay: false })
        .await
        .unwrap()
        .into_inner();

    client
        .send_input(pb::SendInputRequest {
            pid,
            data: Bytes::from_static(b"hello\n"),
            close: false,
        })
        .await
        .unwrap();
    read_until(&mut attached, "got:hello\n").await;
    read_until(&mut live, "got:hello\n").await;

    let err = client
        .resize_pty(pb::ResizePtyRequest {
            pid,
            size: Some(pb::PtySize { rows: 1, cols: 1 }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    client
        .signal(pb::SignalRequest { pid, signal: 15 })
        .await
        .unwrap();
    let rest = collect(attached).await;
    assert_eq!(rest.exited.unwrap().signal, Some(15));
    let rest = collect(live).await;
    assert_eq!(rest.exited.unwrap().signal, Some(15));

    // Exited and seen: inputs and signals are refused, then it is reaped.
    let err = client
        .signal(pb::SignalRequest { pid, signal: 15 })
        .await
        .unwrap_err();
    assert!(matches!(
        err.code(),
        Code::FailedPrecondition | Code::NotFound
    ));

    for unknown in [
        client
            .signal(pb::SignalRequest {
                pid: 999_999_999,
                signal: 15,
            })
            .await
            .unwrap_err(),
        client
            .send_input(pb::SendInputRequest {
                pid: 999_999_999,
                data: Bytes::new(),
                close: true,
            })
            .await
            .unwrap_err(),
        client
            .attach(pb::AttachRequest {
                pid: 999_999_999,
                replay: true,
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(unknown.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn pty_reports_and_changes_its_size() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let mut start = shell("stty size; read line; stty size; echo term=$TERM");
    start.pty = Some(pb::PtySize {
        rows: 30,
        cols: 100,
    });
    let (tx, mut events, _) = open_exec(&mut client, start).await;
    read_until(&mut events, "30 100").await;
    tx.send(pb::ExecInput {
        input: Some(Input::Resize(pb::PtySize {
            rows: 40,
            cols: 120,
        })),
    })
    .await
    .unwrap();
    tx.send(pb::ExecInput {
        input: Some(Input::Stdin(Bytes::from_static(b"go\n"))),
    })
    .await
    .unwrap();
    let seen = read_until(&mut events, "term=xterm-256color").await;
    // The typed line is echoed by the terminal, then the new size.
    assert!(seen.contains("go\r\n"), "{seen:?}");
    assert!(seen.contains("40 120\r\n"), "{seen:?}");
    let rest = collect(events).await;
    assert_eq!(rest.exited.unwrap().exit_code, Some(0));
}

#[tokio::test]
async fn runs_as_another_user() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let mut start = shell("id -u; id -g; echo $USER");
    start.user = "nobody".into();
    let out = run(&mut client, start).await.unwrap();
    assert_eq!(out.stdout, "65534\n65534\nnobody\n");
}

fn test_data(len: usize) -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def0u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn writes_and_reads_a_large_file() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let path = agent.path("sub/dir/big.bin");
    let data = test_data(20 * 1024 * 1024);
    let mut messages = vec![pb::WriteFileChunk {
        chunk: Some(pb::write_file_chunk::Chunk::Header(pb::WriteFileHeader {
            path: path.clone(),
            mode: 0o600,
            create_parents: true,
            size_hint: data.len() as u64,
            ..Default::default()
        })),
    }];
    for chunk in data.chunks(warren_proto::CHUNK_BYTES) {
        messages.push(pb::WriteFileChunk {
            chunk: Some(pb::write_file_chunk::Chunk::Data(Bytes::copy_from_slice(
                chunk,
            ))),
        });
    }
    messages.push(end_of_upload(data.len() as u64));
    let began = Instant::now();
    let response = client
        .write_file(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.bytes_written, data.len() as u64);
    let stat = response.stat.unwrap();
    assert_eq!(
        (stat.size, stat.mode, stat.owner.as_str()),
        (data.len() as u64, 0o600, "root")
    );

    let mut stream = client
        .read_file(pb::ReadFileRequest {
            path: path.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut hasher = Sha256::new();
    let mut total = 0;
    let mut first = true;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.stat.is_some(), first);
        first = false;
        assert!(chunk.data.len() <= warren_proto::CHUNK_BYTES);
        total += chunk.data.len();
        hasher.update(&chunk.data);
    }
    assert_eq!(total, data.len());
    assert_eq!(hasher.finalize(), Sha256::digest(&data));
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );

    // offset + length
    let mut stream = client
        .read_file(pb::ReadFileRequest {
            path: path.clone(),
            offset: 1000,
            length: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let chunk = stream.message().await.unwrap().unwrap();
    assert_eq!(&chunk.data[..], &data[1000..1010]);
    assert!(stream.message().await.unwrap().is_none());

    // No temp files are left behind.
    let names: Vec<_> = std::fs::read_dir(agent.path("sub/dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big.bin"]);
}

#[tokio::test]
async fn file_errors_are_clear() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    // An empty file still yields one chunk with its stat.
    std::fs::write(agent.path("empty"), b"").unwrap();
    let mut stream = client
        .read_file(pb::ReadFileRequest {
            path: agent.path("empty"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let chunk = stream.message().await.unwrap().unwrap();
    assert_eq!(chunk.stat.unwrap().size, 0);
    assert!(stream.message().await.unwrap().is_none());

    let err = client
        .read_file(pb::ReadFileRequest {
            path: agent.path(""),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().ends_with("is a directory"),
        "{}",
        err.message()
    );

    let missing = agent.path("nope");
    let err = client
        .stat(pb::StatRequest {
            path: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        format!("no such file or directory: {missing}")
    );

    let header = |path: String| pb::WriteFileChunk {
        chunk: Some(pb::write_file_chunk::Chunk::Header(pb::WriteFileHeader {
            path,
            ..Default::default()
        })),
    };
    let err = client
        .write_file(tokio_stream::iter(vec![header(
            agent.path("no/parent/file"),
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no/parent"), "{}", err.message());

    // Path rules.
    for bad in ["/../etc/passwd", "relative/path", ""] {
        let err = client
            .stat(pb::StatRequest { path: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    let err = client
        .read_file(pb::ReadFileRequest {
            path: "/a/../../x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("escapes"), "{}", err.message());

    // An upload cut off midway (the host went away) leaves neither the
    // target nor a temp file.
    let (mut second, _link, cutter) = agent.connect().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(header(agent.path("cancelled"))).await.unwrap();
    tx.send(pb::WriteFileChunk {
        chunk: Some(pb::write_file_chunk::Chunk::Data(Bytes::from_static(
            b"partial",
        ))),
    })
    .await
    .unwrap();
    let call = tokio::spawn(async move { second.write_file(ReceiverStream::new(rx)).await });
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(agent.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("cancelled"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while leftovers().is_empty() {
        assert!(Instant::now() < deadline, "the temp file never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cutter.shutdown(std::net::Shutdown::Both).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !leftovers().is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", leftovers());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(call.await.unwrap().is_err());
    drop(tx);
    // The first connection is unaffected.
    client.info(pb::InfoRequest {}).await.unwrap();
}

#[tokio::test]
async fn lists_a_huge_directory_in_batches() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let dir = PathBuf::from(agent.path("many"));
    std::fs::create_dir(&dir).unwrap();
    for i in 0..5000 {
        std::fs::write(dir.join(format!("f{i:04}")), b"").unwrap();
    }
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/inner"), b"x").unwrap();

    let mut stream = client
        .list_dir(pb::ListDirRequest {
            path: dir.to_str().unwrap().into(),
            depth: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    let mut batches = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.entries.len() <= 1000);
        batches += 1;
        names.extend(chunk.entries.into_iter().map(|e| e.path));
    }
    assert_eq!(names.len(), 5001);
    assert!(batches >= 6, "{batches}");
    assert!(names.contains(&format!("{}/f4999", dir.display())));
    assert!(!names.iter().any(|n| n.ends_with("/inner")));

    let mut stream = client
        .list_dir(pb::ListDirRequest {
            path: dir.join("sub").to_str().unwrap().into(),
            depth: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let entries = stream.message().await.unwrap().unwrap().entries;
    assert_eq!(entries.len(), 1);

    let mut stream = client
        .list_dir(pb::ListDirRequest {
            path: dir.to_str().unwrap().into(),
            depth: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut found_inner = false;
    while let Some(chunk) = stream.message().await.unwrap() {
        found_inner |= chunk.entries.iter().any(|e| e.path.ends_with("/sub/inner"));
    }
    assert!(found_inner);

    let err = client
        .list_dir(pb::ListDirRequest {
            path: dir.join("f0001").to_str().unwrap().into(),
            depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn mkdir_stat_rename_remove() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let deep = agent.path("a/b/c");
    let made = client
        .make_dir(pb::MakeDirRequest {
            path: deep.clone(),
            parents: true,
            mode: 0o750,
            user: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .stat
        .unwrap();
    assert_eq!(
        (made.file_type, made.mode),
        (pb::FileType::Dir as i32, 0o750)
    );
    // mkdir -p of an existing directory succeeds; plain mkdir does not.
    client
        .make_dir(pb::MakeDirRequest {
            path: deep.clone(),
            parents: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = client
        .make_dir(pb::MakeDirRequest {
            path: deep.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    std::fs::write(agent.path("x"), b"x").unwrap();
    std::fs::write(agent.path("y"), b"y").unwrap();
    std::os::unix::fs::symlink("x", agent.path("link")).unwrap();
    let stat = client
        .stat(pb::StatRequest {
            path: agent.path("link"),
        })
        .await
        .unwrap()
        .into_inner()
        .stat
        .unwrap();
    assert_eq!(
        (stat.file_type, stat.symlink_target.as_str()),
        (pb::FileType::Symlink as i32, "x")
    );
    assert_eq!((stat.owner.as_str(), stat.group.as_str()), ("root", "root"));

    let rename = |overwrite| pb::RenameRequest {
        from: agent.path("x"),
        to: agent.path("y"),
        overwrite,
    };
    let err = client.rename(rename(false)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    client.rename(rename(true)).await.unwrap();
    assert_eq!(std::fs::read(agent.path("y")).unwrap(), b"x");
    client
        .rename(pb::RenameRequest {
            from: agent.path("y"),
            to: agent.path("a/z"),
            overwrite: false,
        })
        .await
        .unwrap();

    let err = client
        .remove(pb::RemoveRequest {
            path: agent.path("a"),
            recursive: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    client
        .remove(pb::RemoveRequest {
            path: agent.path("a"),
            recursive: true,
        })
        .await
        .unwrap();
    let err = client
        .stat(pb::StatRequest { path: deep })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The symlink is removed, not its target's directory entry.
    client
        .remove(pb::RemoveRequest {
            path: agent.path("link"),
            recursive: false,
        })
        .await
        .unwrap();
    let err = client
        .remove(pb::RemoveRequest {
            path: "/".into(),
            recursive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn sync_and_shutdown() {
    let mut agent = Agent::start().await;
    let mut client = agent.client();
    client
        .sync(pb::SyncRequest { drop_caches: false })
        .await
        .unwrap();
    client.shutdown(pb::ShutdownRequest {}).await.unwrap();
    // In --listen-unix mode "power off" means the agent process exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The message that commits an upload of `total_bytes`.
fn end_of_upload(total_bytes: u64) -> pb::WriteFileChunk {
    pb::WriteFileChunk {
        chunk: Some(pb::write_file_chunk::Chunk::End(pb::WriteFileEnd {
            total_bytes,
        })),
    }
}

/// An upload whose stream ends cleanly but without the end marker (the
/// sender's source failed), or whose end marker disagrees with the data,
/// must leave the target as it was.
#[tokio::test]
async fn an_upload_without_a_matching_end_changes_nothing() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let path = agent.path("kept.txt");
    let header = pb::WriteFileHeader {
        path: path.clone(),
        ..Default::default()
    };
    write(&mut client, header.clone(), b"original")
        .await
        .unwrap();
    let data = pb::WriteFileChunk {
        chunk: Some(pb::write_file_chunk::Chunk::Data(Bytes::from_static(
            b"truncated upload",
        ))),
    };
    let head = pb::WriteFileChunk {
        chunk: Some(pb::write_file_chunk::Chunk::Header(header)),
    };

    let err = client
        .write_file(tokio_stream::iter(vec![head.clone(), data.clone()]))
        .await
        .unwrap_err();
    assert!(err.message().contains("cancelled"), "{}", err.message());
    assert_eq!(std::fs::read(&path).unwrap(), b"original");

    let err = client
        .write_file(tokio_stream::iter(vec![head, data, end_of_upload(1 << 20)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(std::fs::read(&path).unwrap(), b"original");
    let leftovers: Vec<_> = std::fs::read_dir(agent.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("warren-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

async fn write(
    client: &mut AgentClient<Channel>,
    header: pb::WriteFileHeader,
    data: &[u8],
) -> Result<pb::WriteFileResponse, tonic::Status> {
    let messages = vec![
        pb::WriteFileChunk {
            chunk: Some(pb::write_file_chunk::Chunk::Header(header)),
        },
        pb::WriteFileChunk {
            chunk: Some(pb::write_file_chunk::Chunk::Data(Bytes::copy_from_slice(
                data,
            ))),
        },
        end_of_upload(data.len() as u64),
    ];
    Ok(client
        .write_file(tokio_stream::iter(messages))
        .await?
        .into_inner())
}

#[tokio::test]
async fn write_modes_owners_and_append() {
    let agent = Agent::start().await;
    let mut client = agent.client();
    let path = agent.path("owned/file.txt");
    let header = pb::WriteFileHeader {
        path: path.clone(),
        user: "nobody".into(),
        create_parents: true,
        ..Default::default()
    };
    let response = write(&mut client, header.clone(), b"one\n").await.unwrap();
    let stat = response.stat.unwrap();
    assert_eq!(
        (stat.mode, stat.uid, stat.owner.as_str()),
        (0o644, 65534, "nobody")
    );
    let parent = client
        .stat(pb::StatRequest {
            path: agent.path("owned"),
        })
        .await
        .unwrap()
        .into_inner()
        .stat
        .unwrap();
    assert_eq!(parent.uid, 65534);

    let append = pb::WriteFileHeader {
        path: path.clone(),
        append: true,
        ..Default::default()
    };
    let response = write(&mut client, append, b"two\n").await.unwrap();
    assert_eq!(response.bytes_written, 4);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    // Appending keeps the owner; replacing without a user keeps it too.
    let replace = pb::WriteFileHeader {
        path: path.clone(),
        mode: 0o640,
        ..Default::default()
    };
    let stat = write(&mut client, replace, b"new")
        .await
        .unwrap()
        .stat
        .unwrap();
    assert_eq!((stat.mode, stat.uid, stat.size), (0o640, 65534, 3));

    let err = write(
        &mut client,
        pb::WriteFileHeader {
            path: agent.path("x"),
            user: "warren-no-such-user".into(),
            ..Default::default()
        },
        b"",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = write(
        &mut client,
        pb::WriteFileHeader {
            path: agent.path("huge"),
            size_hint: u64::MAX / 2,
            ..Default::default()
        },
        b"",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}
