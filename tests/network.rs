//! Sandbox networks with real VMs: a Debian guest on its TAP, a peer host
//! on 198.51.100.64/28 in a namespace this test makes (an HTTP server and
//! the DNS server warren's resolver forwards to), and nothing else: no
//! traffic leaves this machine.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command as Host;
use std::time::Duration;

use warren_sandbox::{Command, NetworkPolicy, Sandbox};
use warren_testkit::netns::ip;
use warren_tests::{TestEnv, within};

const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const PEER_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 65);

/// One peer at a time: every peer has the same address (the tests'
/// documentation range), so two would fight over the host's route.
static PEER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The peer namespace and its link, removed when the test ends.
struct Peer {
    ns: String,
    link: String,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Host::new("ip").args(["netns", "delete", &self.ns]).status();
        let _ = Host::new("ip")
            .args(["link", "delete", &self.link])
            .status();
    }
}

/// Serves `body` over HTTP/1.0 on every connection of `listener`.
fn serve(listener: TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 2048];
            let _ = conn.read(&mut buf);
            let reply = format!(
                "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
        }
    });
}

/// A DNS server answering `peer.test` (and names under `cdn.test`) with
/// the peer's address, NXDOMAIN otherwise.
fn dns(ns: &str) -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{RData, Record, rdata::A};
    let addr = SocketAddr::from((PEER, 53));
    let socket = warren_net::run_in(ns, move || std::net::UdpSocket::bind(addr)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(q) = query.queries().first().cloned() else {
                continue;
            };
            let mut answer = Message::new();
            answer.set_id(query.id());
            answer.set_message_type(MessageType::Response);
            answer.set_recursion_available(true);
            answer.add_query(q.clone());
            let name = q.name().to_ascii().trim_end_matches('.').to_owned();
            let known = name == "peer.test" || name.ends_with(".cdn.test");
            if known && q.query_type() == hickory_proto::rr::RecordType::A {
                answer.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(PEER))));
            } else if !known {
                answer.set_response_code(ResponseCode::NXDomain);
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), from);
        }
    });
    addr
}

async fn peer() -> Peer {
    let turn = PEER_TURN.lock().await;
    let tag = std::process::id() % 100_000;
    let peer = Peer {
        ns: format!("wtvp-{tag}"),
        link: format!("wtvp{tag}"),
        _turn: turn,
    };
    ip(&format!("netns add {}", peer.ns));
    ip(&format!(
        "link add {} type veth peer name eth0 netns {}",
        peer.link, peer.ns
    ));
    ip(&format!("addr add {PEER_HOST_SIDE}/28 dev {}", peer.link));
    ip(&format!("link set {} up", peer.link));
    ip(&format!("-n {} addr add {PEER}/28 dev eth0", peer.ns));
    ip(&format!("-n {} link set eth0 up", peer.ns));
    ip(&format!("-n {} link set lo up", peer.ns));
    let web = warren_net::run_in(&peer.ns, || TcpListener::bind((PEER, 8080))).unwrap();
    serve(web, "hello from the peer");
    let web80 = warren_net::run_in(&peer.ns, || TcpListener::bind((PEER, 80))).unwrap();
    serve(web80, "port 80");
    peer
}

/// What the guest gets fetching `url` (3 s limit): the body, or
/// `blocked` when the connection fails.
async fn fetch(sandbox: &Sandbox, url: &str, host: Option<&str>) -> String {
    let headers = host
        .map(|h| format!("{{'Host': '{h}'}}"))
        .unwrap_or_else(|| "{}".into());
    let script = format!(
        "import urllib.request\n\
         try:\n    print(urllib.request.urlopen(urllib.request.Request('{url}', headers={headers}), timeout=3).read().decode(), end='')\n\
         except Exception as e:\n    print('blocked', end='')\n"
    );
    let out = sandbox
        .run(Command::from_argv(["python3", "-c", &script]))
        .await
        .expect("python3 runs");
    out.stdout_text()
}

async fn resolve(sandbox: &Sandbox, name: &str) -> String {
    let script = format!(
        "import socket\ntry:\n    print(socket.gethostbyname('{name}'), end='')\nexcept Exception:\n    print('unresolved', end='')\n"
    );
    sandbox
        .run(Command::from_argv(["python3", "-c", &script]))
        .await
        .expect("python3 runs")
        .stdout_text()
}

/// A manager whose sandboxes' names are resolved by `upstream` (the
/// test's DNS server).
fn resolving_through(upstream: SocketAddr) -> TestEnv {
    TestEnv::with_config(|config| {
        if let Some(network) = config.network.as_mut() {
            network.upstream = upstream;
        }
    })
}

fn policy(internet: bool, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    NetworkPolicy::parse(internet, &v(allow), &v(deny)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_reaches_what_its_policy_allows_and_never_the_host() {
    let peer = peer().await;
    let upstream = dns(&peer.ns);
    let env = resolving_through(upstream);
    // What the host serves on every address (warren's API would be one).
    let on_host = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let host_port = on_host.local_addr().unwrap().port();
    serve(on_host, "the host");

    let sandbox = within(300, "create", env.sandbox()).await;
    assert!(
        sandbox.network_policy().is_some(),
        "networks are on by default"
    );
    let url = format!("http://{PEER}:8080/");
    assert_eq!(fetch(&sandbox, &url, None).await, "hello from the peer");
    assert_eq!(resolve(&sandbox, "peer.test").await, PEER.to_string());
    assert_eq!(resolve(&sandbox, "nothing.test").await, "unresolved");
    for addr in [
        PEER_HOST_SIDE.to_string(),
        "10.231.0.1".into(),
        "169.254.169.254".into(),
        "169.254.0.22".into(),
    ] {
        assert_eq!(
            fetch(&sandbox, &format!("http://{addr}:{host_port}/"), None).await,
            "blocked",
            "the guest reached {addr}:{host_port}"
        );
    }

    // Changed while it runs: denied by CIDR, then only a name.
    sandbox
        .set_network_policy(policy(true, &[], &["198.51.100.0/24"]))
        .unwrap();
    assert_eq!(fetch(&sandbox, &url, None).await, "blocked");
    sandbox
        .set_network_policy(policy(true, &["peer.test"], &["0.0.0.0/0"]))
        .unwrap();
    assert_eq!(resolve(&sandbox, "peer.test").await, PEER.to_string());
    assert_eq!(
        fetch(&sandbox, &url, None).await,
        "hello from the peer",
        "a name allowed and resolved through warren opens its address"
    );
    // By HTTP Host on port 80: the name decides on a shared address.
    sandbox
        .set_network_policy(policy(true, &[], &["evil.cdn.test"]))
        .unwrap();
    let web = format!("http://{PEER}/");
    assert_eq!(
        fetch(&sandbox, &web, Some("good.cdn.test")).await,
        "port 80"
    );
    assert_eq!(
        fetch(&sandbox, &web, Some("evil.cdn.test")).await,
        "blocked"
    );

    // A server in the guest, reached from the host through its namespace.
    let _server = sandbox
        .exec(Command::shell(
            "cd /tmp && echo served > index.html && exec python3 -m http.server 8000 --bind 0.0.0.0",
        ))
        .await
        .expect("start the server");
    let mut answer = String::new();
    for _ in 0..100 {
        answer = match sandbox.connect_port(8000).await {
            Ok(stream) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = stream;
                let mut text = String::new();
                match stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await {
                    Ok(()) => match stream.read_to_string(&mut text).await {
                        Ok(_) => text,
                        Err(e) => format!("read: {e}"),
                    },
                    Err(e) => format!("write: {e}"),
                }
            }
            Err(e) => format!("connect: {e}: {:?}", std::error::Error::source(&e)),
        };
        if answer.ends_with("served\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.ends_with("served\n"), "{answer:?}");

    // Pause and resume: the policy and the network come back.
    let report = within(300, "pause", sandbox.pause(&Default::default()))
        .await
        .expect("pause");
    assert!(report.memory_bytes > 0);
    assert!(
        env.networks().is_empty(),
        "a paused sandbox holds no network"
    );
    let (resumed, _) = within(300, "resume", env.manager.resume(sandbox.id()))
        .await
        .expect("resume");
    drop(sandbox);
    assert_eq!(
        resumed.network_policy(),
        Some(policy(true, &[], &["evil.cdn.test"]))
    );
    assert_eq!(fetch(&resumed, &url, None).await, "hello from the peer");
    within(60, "destroy", resumed.destroy()).await.unwrap();
    env.assert_clean();
    drop(peer);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_made_without_a_network_has_no_card_and_no_namespace() {
    let env = TestEnv::new();
    let spec = warren_sandbox::SandboxSpec {
        image: "tiny".into(),
        network: None,
        ..Default::default()
    };
    let sandbox = within(300, "create", env.sandbox_with(spec)).await;
    assert_eq!(sandbox.network_policy(), None);
    assert!(env.networks().is_empty());
    let out = sandbox
        .run(Command::shell(
            "cat /sys/class/net/*/address | sort | tr '\\n' ' '",
        ))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "00:00:00:00:00:00 ", "only loopback");
    assert!(
        sandbox
            .set_network_policy(NetworkPolicy::default())
            .is_err()
    );
    within(60, "destroy", sandbox.destroy()).await.unwrap();
    env.assert_clean();
}

/// What TCP connections to `port` of the peer carried first (a TLS
/// ClientHello names its server in clear), each as lossy text.
fn record_first_bytes(ns: &str, port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = warren_net::run_in(ns, move || TcpListener::bind((PEER, port))).unwrap();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    seen
}

/// A TLS handshake from the guest to the peer's address with `name` as
/// its SNI (the peer never answers it: only what reached it counts).
async fn tls_hello(sandbox: &Sandbox, name: &str) {
    let script = format!(
        "import socket, ssl\n\
         try:\n    s = socket.create_connection(('{PEER}', 443), timeout=3)\n    ssl.create_default_context().wrap_socket(s, server_hostname='{name}')\n\
         except Exception:\n    pass\n"
    );
    sandbox
        .run(Command::from_argv(["python3", "-c", &script]))
        .await
        .expect("python3 runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_names_are_judged_and_a_clone_of_a_networked_template_reaches_the_peer() {
    let peer = peer().await;
    let upstream = dns(&peer.ns);
    let env = resolving_through(upstream);
    let hellos = record_first_bytes(&peer.ns, 443);
    let source = within(300, "create", env.sandbox()).await;
    source
        .set_network_policy(policy(true, &[], &["evil.cdn.test"]))
        .unwrap();

    // Both names are the same address: the ClientHello's SNI decides.
    tls_hello(&source, "good.cdn.test").await;
    tls_hello(&source, "evil.cdn.test").await;
    let seen = hellos.lock().unwrap().clone();
    assert!(
        seen.iter().any(|h| h.contains("good.cdn.test")),
        "the allowed name never reached the peer: {seen:?}"
    );
    assert!(
        !seen.iter().any(|h| h.contains("evil.cdn.test")),
        "the denied name reached the peer: {seen:?}"
    );

    // A template of the networked sandbox: its clone has a network of its
    // own (another slot, the same guest address) and reaches the peer.
    within(300, "pause", source.pause(&Default::default()))
        .await
        .expect("pause");
    let source_id = source.id().to_string();
    drop(source);
    let name = format!("net-template-{}", std::process::id());
    within(
        300,
        "template",
        env.manager.create_template(&source_id, &name),
    )
    .await
    .expect("template");
    env.manager.remove_paused(&source_id).unwrap();
    let (clone, _) = within(
        300,
        "clone",
        env.manager
            .clone_template(&name, &warren_sandbox::SandboxSpec::default()),
    )
    .await
    .expect("clone");
    assert!(clone.network_policy().is_some(), "the clone has a network");
    assert_eq!(env.networks().len(), 1, "{:?}", env.networks());
    let url = format!("http://{PEER}:8080/");
    assert_eq!(fetch(&clone, &url, None).await, "hello from the peer");
    assert_eq!(resolve(&clone, "peer.test").await, PEER.to_string());
    within(60, "destroy", clone.destroy()).await.unwrap();
    env.manager.delete_template(&name).unwrap();
    env.assert_clean();
    drop(peer);
}
