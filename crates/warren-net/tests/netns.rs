//! Real namespaces, veths and nftables rules on this host: a sandbox
//! network made by warren-net, a peer host on 198.51.100.0/24 in a
//! namespace this test makes, and traffic only between them and loopback.
//!
//! The guest here is a stand-in: a namespace joined to the sandbox
//! namespace by a veth named `tap0` in place of the TAP (no VM runs in
//! these tests; the rules key on the device name, so they see the same
//! traffic a VM's virtio-net would send). The real-VM tests in `tests/`
//! boot a guest on the real TAP.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use warren_net::layout::{HostRange, guest};
use warren_net::{DEFAULT_CLAIMS_DIR, HostNet, NetworkPolicy, SandboxNet, run_in};
use warren_testkit::netns::ip;

/// Each test's peer link is its own /28 of 198.51.100.0/24, so tests
/// running at once do not share a route.
fn peer_addr(test: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, test * 16 + 2)
}

fn peer_host_side(test: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, test * 16 + 1)
}

/// A sandbox network removed when the test ends, however it ends.
struct Net<'a>(&'a HostNet, SandboxNet);

impl Drop for Net<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy(&self.1) {
            eprintln!("removing test network: {e}");
        }
    }
}

impl std::ops::Deref for Net<'_> {
    type Target = SandboxNet;
    fn deref(&self) -> &SandboxNet {
        &self.1
    }
}

fn usable() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root for namespaces");
        return false;
    }
    true
}

/// Namespaces and links the test made itself, removed when it ends.
struct Scratch {
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        for link in &self.links {
            let _ = Command::new("ip").args(["link", "delete", link]).status();
        }
    }
}

/// A peer namespace on 198.51.100.0/24 (unique per test by `tag`) serving
/// HTTP on `peer_addr(test):port`, and its name.
fn peer(scratch: &mut Scratch, tag: &str, test: u8, port: u16) -> String {
    let (peer, host_side) = (peer_addr(test), peer_host_side(test));
    let ns = format!("wtp-{tag}");
    let host_if = format!("wtp{tag}");
    scratch.namespaces.push(ns.clone());
    scratch.links.push(host_if.clone());
    ip(&format!("netns add {ns}"));
    ip(&format!(
        "link add {host_if} type veth peer name eth0 netns {ns}"
    ));
    ip(&format!("addr add {host_side}/28 dev {host_if}"));
    ip(&format!("link set {host_if} up"));
    ip(&format!("-n {ns} addr add {peer}/28 dev eth0"));
    ip(&format!("-n {ns} link set eth0 up"));
    ip(&format!("-n {ns} link set lo up"));
    let listener = run_in(&ns, move || TcpListener::bind((peer, port))).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello");
        }
    });
    ns
}

/// Replaces the sandbox's TAP by a veth to a guest stand-in namespace
/// configured as the guest init configures eth0.
fn guest_standin(scratch: &mut Scratch, net: &SandboxNet, tag: &str) -> String {
    let sandbox_ns = net.layout().netns();
    let ns = format!("wtg-{tag}");
    scratch.namespaces.push(ns.clone());
    ip(&format!("netns add {ns}"));
    ip(&format!("-n {sandbox_ns} link delete tap0"));
    ip(&format!(
        "-n {ns} link add eth0 type veth peer name tap0 netns {sandbox_ns}"
    ));
    ip(&format!(
        "-n {sandbox_ns} addr add {}/30 dev tap0",
        guest::GATEWAY
    ));
    ip(&format!("-n {sandbox_ns} link set tap0 up"));
    ip(&format!("-n {ns} addr add {}/30 dev eth0", guest::ADDRESS));
    ip(&format!("-n {ns} link set eth0 up"));
    ip(&format!("-n {ns} link set lo up"));
    ip(&format!("-n {ns} route add default via {}", guest::GATEWAY));
    ns
}

/// An HTTP GET from inside `ns`: `Some(body)` when it was answered,
/// `None` when the connection was refused or dropped.
fn fetch(ns: &str, to: SocketAddr) -> Option<String> {
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(800))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .ok()
    .map(|r| r.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned())
}

fn host_net(tag: &str) -> (HostNet, tempfile::TempDir) {
    let owner = tempfile::Builder::new().prefix(tag).tempdir().unwrap();
    let owner_name = owner.path().display().to_string();
    (
        HostNet::init(HostRange::default(), DEFAULT_CLAIMS_DIR, owner_name).unwrap(),
        owner,
    )
}

fn policy(internet: bool, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    NetworkPolicy::parse(internet, &v(allow), &v(deny)).unwrap()
}

#[test]
fn the_guest_reaches_a_peer_and_a_policy_change_takes_effect_while_running() {
    if !usable() {
        return;
    }
    let tag = format!("a{}", std::process::id() % 100000);
    let mut scratch = Scratch {
        namespaces: vec![],
        links: vec![],
    };
    let _peer = peer(&mut scratch, &tag, 0, 8080);
    let (host, _owner) = host_net(&tag);
    let net = Net(
        &host,
        host.create("sb-a", &NetworkPolicy::default()).unwrap(),
    );
    let g = guest_standin(&mut scratch, &net, &tag);
    let to = SocketAddr::from((peer_addr(0), 8080));
    assert_eq!(
        fetch(&g, to).as_deref(),
        Some("hello"),
        "default policy: internet on"
    );

    net.apply_policy(&policy(true, &[], &["198.51.100.0/24"]), host.range())
        .unwrap();
    assert_eq!(fetch(&g, to), None, "denied by CIDR");
    net.apply_policy(
        &policy(true, &["198.51.100.2"], &["0.0.0.0/0"]),
        host.range(),
    )
    .unwrap();
    assert_eq!(
        fetch(&g, to).as_deref(),
        Some("hello"),
        "allow_out beats deny_out"
    );
    net.apply_policy(&policy(false, &[], &[]), host.range())
        .unwrap();
    assert_eq!(fetch(&g, to), None, "internet off");

    let layout = net.layout().clone();
    drop(net);
    assert!(
        !std::path::Path::new("/run/netns")
            .join(layout.netns())
            .exists()
    );
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(layout.host_iface())
            .exists()
    );
}

#[test]
fn the_guest_cannot_reach_the_host_metadata_or_another_sandbox() {
    if !usable() {
        return;
    }
    let tag = format!("b{}", std::process::id() % 100000);
    let mut scratch = Scratch {
        namespaces: vec![],
        links: vec![],
    };
    let _peer = peer(&mut scratch, &tag, 1, 8081);
    let (host, _owner) = host_net(&tag);
    let a = Net(
        &host,
        host.create("sb-a", &NetworkPolicy::default()).unwrap(),
    );
    let b = Net(
        &host,
        host.create("sb-b", &NetworkPolicy::default()).unwrap(),
    );
    let ga = guest_standin(&mut scratch, &a, &tag);

    // A server on every host address (what warren's API would be).
    let on_host = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let host_port = on_host.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in on_host.incoming() {
            let Ok(mut c) = c else { break };
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost");
        }
    });
    // A server in sandbox b's namespace.
    let in_b = b
        .listen_tcp(SocketAddr::from((b.layout().ns_addr, 9000)))
        .unwrap();
    std::thread::spawn(move || {
        for c in in_b.incoming() {
            let Ok(mut c) = c else { break };
            // Read the request first: closing with it unread would reset
            // the connection before the client reads the answer.
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nother");
        }
    });
    // Even a policy that allows everything explicitly cannot open these.
    a.apply_policy(&policy(true, &["0.0.0.0/0"], &[]), host.range())
        .unwrap();
    assert_eq!(
        fetch(&ga, SocketAddr::from((peer_addr(1), 8081))).as_deref(),
        Some("hello")
    );
    for (what, addr) in [
        (
            "the host's side of this sandbox's veth",
            a.layout().host_addr,
        ),
        ("the host's address on the peer link", peer_host_side(1)),
        ("the host's loopback", Ipv4Addr::LOCALHOST),
        ("the metadata address", Ipv4Addr::new(169, 254, 169, 254)),
    ] {
        assert_eq!(
            fetch(&ga, SocketAddr::from((addr, host_port))),
            None,
            "{what} {addr}"
        );
    }
    assert_eq!(
        fetch(&ga, SocketAddr::from((b.layout().ns_addr, 9000))),
        None,
        "another sandbox"
    );
    // The server is there: from b's own namespace it answers.
    assert_eq!(
        fetch(
            &b.layout().netns(),
            SocketAddr::from((b.layout().ns_addr, 9000))
        )
        .as_deref(),
        Some("other")
    );
}

#[test]
fn a_sweep_removes_the_networks_of_gone_sandboxes_only() {
    if !usable() {
        return;
    }
    let tag = format!("c{}", std::process::id() % 100000);
    let (host, _owner) = host_net(&tag);
    let keep = Net(
        &host,
        host.create("sb-keep", &NetworkPolicy::default()).unwrap(),
    );
    let gone = host.create("sb-gone", &NetworkPolicy::default()).unwrap();
    let tap = keep.open_tap().unwrap();
    // A restarted warren finds a sandbox's network by its claim.
    assert_eq!(
        host.find("sb-keep").unwrap().map(|n| n.layout().slot),
        Some(keep.layout().slot)
    );
    assert!(host.find("sb-none").unwrap().is_none());
    let removed = host.sweep(|id| id == "sb-keep").unwrap();
    assert_eq!(removed, vec![gone.layout().slot]);
    assert!(
        !std::path::Path::new("/run/netns")
            .join(gone.layout().netns())
            .exists()
    );
    assert!(
        std::path::Path::new("/run/netns")
            .join(keep.layout().netns())
            .exists()
    );
    drop(tap);
    drop(keep);
    assert!(host.sweep(|_| false).unwrap().is_empty());
}

/// A DNS server in the peer namespace answering `names` with A records
/// (anything else: NXDOMAIN); the test's upstream for warren's resolver.
fn dns_server(ns: &str, at: Ipv4Addr, names: Vec<(&'static str, Ipv4Addr)>) -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{RData, Record, rdata::A};
    let addr = SocketAddr::from((at, 53));
    let socket = run_in(ns, move || std::net::UdpSocket::bind(addr)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::new();
            answer.set_id(query.id());
            answer.set_message_type(MessageType::Response);
            answer.set_recursion_available(true);
            answer.add_queries(query.queries().to_vec());
            let qname = query.queries()[0].name().clone();
            let wanted = qname.to_ascii().trim_end_matches('.').to_owned();
            match names.iter().find(|(n, _)| *n == wanted) {
                Some((_, ip)) => {
                    answer.add_answer(Record::from_rdata(qname, 60, RData::A(A(*ip))));
                }
                None => {
                    answer.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), from);
        }
    });
    addr
}

/// Resolves `name` from inside `ns` through the sandbox's resolver (the
/// gateway, as the guest's resolv.conf says), returning the A addresses.
fn resolve_in(ns: &str, name: &str) -> Vec<Ipv4Addr> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut query = Message::new();
    query.set_id(4242);
    query.set_recursion_desired(true);
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let bytes = query.to_vec().unwrap();
    let answer = run_in(ns, move || {
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.send_to(&bytes, (guest::GATEWAY, 53))?;
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    })
    .unwrap();
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.id(), 4242);
    answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// An HTTP GET with `Host: host` from inside `ns` to `to`.
fn fetch_host(ns: &str, to: SocketAddr, host: &str) -> Option<String> {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(800))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .ok()
    .filter(|r| !r.is_empty())
    .map(|r| r.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_rules_hold_through_the_resolver_and_the_http_host() {
    if !usable() {
        return;
    }
    let tag = format!("d{}", std::process::id() % 100000);
    let mut scratch = Scratch {
        namespaces: vec![],
        links: vec![],
    };
    let peer_ns = peer(&mut scratch, &tag, 2, 8082);
    let peer_ip = peer_addr(2);
    // The same peer also serves HTTP on port 80 (a "CDN" address shared by
    // an allowed and a denied name).
    let web = run_in(&peer_ns, move || TcpListener::bind((peer_ip, 80))).unwrap();
    std::thread::spawn(move || {
        for c in web.incoming() {
            let Ok(mut c) = c else { break };
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nweb");
        }
    });
    let upstream = dns_server(
        &peer_ns,
        peer_ip,
        vec![
            ("pkgs.allowed.test", peer_ip),
            ("evil.test", Ipv4Addr::new(198, 51, 100, 40)),
        ],
    );
    let (host, _owner) = host_net(&tag);
    let allow_only = policy(true, &["*.allowed.test"], &["0.0.0.0/0"]);
    let net = Net(&host, host.create("sb-d", &allow_only).unwrap());
    let egress = warren_net::Egress::start(&net, allow_only.clone(), upstream).unwrap();
    let g = guest_standin(&mut scratch, &net, &tag);

    let any_port = SocketAddr::from((peer_ip, 8082));
    let g2 = g.clone();
    let blocked = tokio::task::spawn_blocking(move || fetch(&g2, any_port))
        .await
        .unwrap();
    assert_eq!(blocked, None, "nothing resolved yet: denied by 0.0.0.0/0");
    let g2 = g.clone();
    let resolved = tokio::task::spawn_blocking(move || resolve_in(&g2, "pkgs.allowed.test"))
        .await
        .unwrap();
    assert_eq!(resolved, vec![peer_ip]);
    let g2 = g.clone();
    let after = tokio::task::spawn_blocking(move || fetch(&g2, any_port))
        .await
        .unwrap();
    assert_eq!(
        after.as_deref(),
        Some("hello"),
        "a resolved allowed name opens its address"
    );
    let g2 = g.clone();
    let nx = tokio::task::spawn_blocking(move || resolve_in(&g2, "nothing.test"))
        .await
        .unwrap();
    assert!(nx.is_empty());

    // By Host on port 80: the name decides, whatever the address.
    let web_addr = SocketAddr::from((peer_ip, 80));
    let denying = policy(true, &[], &["evil.test"]);
    net.apply_policy(&denying, host.range()).unwrap();
    egress.set_policy(denying);
    let g2 = g.clone();
    let (good, bad) = tokio::task::spawn_blocking(move || {
        (
            fetch_host(&g2, web_addr, "fine.test"),
            fetch_host(&g2, web_addr, "EVIL.test:80"),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        good.as_deref(),
        Some("web"),
        "another name on the same address works"
    );
    assert_eq!(
        bad, None,
        "a denied name stays denied when reached by address"
    );

    let only = policy(false, &["pkgs.allowed.test"], &[]);
    net.apply_policy(&only, host.range()).unwrap();
    egress.set_policy(only);
    let g2 = g.clone();
    let (good, bad) = tokio::task::spawn_blocking(move || {
        (
            fetch_host(&g2, web_addr, "pkgs.allowed.test"),
            fetch_host(&g2, web_addr, "other.test"),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        good.as_deref(),
        Some("web"),
        "an allowed name works behind a shared address"
    );
    assert_eq!(bad, None, "internet off: another name on it does not");
    drop(egress);
}
