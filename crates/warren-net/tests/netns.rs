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

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
