//! The two services warren runs inside each sandbox's namespace (as
//! sockets of its own process, no process per sandbox): the resolver the
//! guest's `/etc/resolv.conf` names, and the proxy that TCP to ports 80
//! and 443 passes through when the policy has domain rules.
//!
//! The resolver forwards each query to warren's upstream and, before it
//! answers, puts the addresses of names a domain rule names into the
//! kernel's `resolved_allow`/`resolved_deny` sets, so a domain rule holds
//! for every port. The proxy reads the TLS server name or HTTP Host of a
//! connection and judges by that name ([`NetworkPolicy::decide`]), so an
//! allowed name works behind a CDN address it shares with others and a
//! denied name stays denied when reached by address.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::cmd::{self, IP};
use crate::layout::guest;
use crate::nft::{PROXY_PORT, RESOLVED_ALLOW_SET, RESOLVED_DENY_SET, RESOLVER_PORT, SANDBOX_TABLE};
use crate::policy::{NetworkPolicy, Verdict};
use crate::sandbox::{NetError, SandboxNet};
use crate::sni::{self, Sniffed};

/// How long the upstream resolver may take to answer one query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the proxy waits for a connection's first bytes to name it.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an address learned from an answer stays in a kernel set, at
/// least and at most (the record's TTL in between): short TTLs are
/// stretched because programs cache answers longer than they should.
const LEARNED_MIN: Duration = Duration::from_secs(300);
const LEARNED_MAX: Duration = Duration::from_secs(3600);
/// Queries one sandbox may have in flight at once (a flood from a guest
/// waits; it cannot make warren open unbounded sockets).
const MAX_QUERIES: usize = 64;
/// Proxied connections one sandbox may have open at once.
const MAX_PROXIED: usize = 1024;

/// State the services of one sandbox share.
#[derive(Debug)]
struct Shared {
    net: SandboxNet,
    upstream: SocketAddr,
    policy: RwLock<Arc<NetworkPolicy>>,
    /// What the resolver learned: address -> verdict of the named rule, and
    /// until when.
    learned: Mutex<HashMap<Ipv4Addr, (Verdict, Instant)>>,
}

impl Shared {
    fn policy(&self) -> Arc<NetworkPolicy> {
        self.policy.read().expect("policy lock").clone()
    }

    fn learned(&self, ip: Ipv4Addr) -> Option<Verdict> {
        let mut learned = self.learned.lock().expect("learned lock");
        match learned.get(&ip) {
            Some((verdict, until)) if *until > Instant::now() => Some(*verdict),
            Some(_) => {
                learned.remove(&ip);
                None
            }
            None => None,
        }
    }
}

/// The running resolver and proxy of one sandbox; dropping it stops them.
#[derive(Debug)]
pub struct Egress {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Egress {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Egress {
    /// Binds the resolver (UDP and TCP port 53) and the proxy on the
    /// gateway address inside `net`'s namespace and serves them on the
    /// current tokio runtime. `upstream` is where queries go.
    pub fn start(
        net: &SandboxNet,
        policy: NetworkPolicy,
        upstream: SocketAddr,
    ) -> Result<Self, NetError> {
        let udp = net.bind_udp(SocketAddr::from((guest::GATEWAY, RESOLVER_PORT)))?;
        let tcp = net.listen_tcp(SocketAddr::from((guest::GATEWAY, RESOLVER_PORT)))?;
        let proxy = net.listen_tcp(SocketAddr::from((guest::GATEWAY, PROXY_PORT)))?;
        let tokio_err = |source| NetError::Socket {
            slot: net.layout().slot.0,
            source,
        };
        let udp = {
            udp.set_nonblocking(true).map_err(tokio_err)?;
            UdpSocket::from_std(udp).map_err(tokio_err)?
        };
        let tcp = {
            tcp.set_nonblocking(true).map_err(tokio_err)?;
            TcpListener::from_std(tcp).map_err(tokio_err)?
        };
        let proxy = {
            proxy.set_nonblocking(true).map_err(tokio_err)?;
            TcpListener::from_std(proxy).map_err(tokio_err)?
        };
        let shared = Arc::new(Shared {
            net: net.clone(),
            upstream,
            policy: RwLock::new(Arc::new(policy)),
            learned: Mutex::new(HashMap::new()),
        });
        let queries = Arc::new(Semaphore::new(MAX_QUERIES));
        let tasks = vec![
            tokio::spawn(serve_udp(shared.clone(), Arc::new(udp), queries.clone())),
            tokio::spawn(serve_tcp_dns(shared.clone(), tcp, queries)),
            tokio::spawn(serve_proxy(shared.clone(), proxy)),
        ];
        Ok(Egress { shared, tasks })
    }

    /// Takes a new policy (after [`SandboxNet::apply_policy`] replaced the
    /// kernel's rules, which also emptied the learned sets).
    pub fn set_policy(&self, policy: NetworkPolicy) {
        *self.shared.policy.write().expect("policy lock") = Arc::new(policy);
        self.shared.learned.lock().expect("learned lock").clear();
    }
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>, queries: Arc<Semaphore>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(permit) = queries.clone().acquire_owned().await else {
            return;
        };
        let query = buf[..n].to_vec();
        let shared = shared.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Some(answer) = resolve(&shared, &query, Transport::Udp).await {
                let _ = socket.send_to(&answer, from).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp_dns(shared: Arc<Shared>, listener: TcpListener, queries: Arc<Semaphore>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let queries = queries.clone();
        tokio::spawn(async move {
            // One connection may carry several queries, one after another.
            loop {
                let Ok(Ok(len)) = tokio::time::timeout(SNIFF_TIMEOUT, conn.read_u16()).await else {
                    return;
                };
                let mut query = vec![0u8; usize::from(len)];
                if conn.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Ok(permit) = queries.acquire().await else {
                    return;
                };
                let answer = resolve(&shared, &query, Transport::Tcp).await;
                drop(permit);
                let Some(answer) = answer else { return };
                let Ok(len) = u16::try_from(answer.len()) else {
                    return;
                };
                if conn.write_u16(len).await.is_err() || conn.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// Forwards one query upstream and returns the answer to give the guest,
/// after putting what it says about named rules into the kernel's sets.
/// `None` (no answer; the guest retries) for anything that is not one
/// well-formed query, or when upstream fails.
async fn resolve(shared: &Shared, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query || request.queries().len() != 1 {
        return None;
    }
    let qname = request.queries()[0].name().to_ascii();
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        match transport {
            Transport::Udp => exchange_udp(shared.upstream, query, request.id()).await,
            Transport::Tcp => exchange_tcp(shared.upstream, query).await,
        }
    })
    .await
    .ok()??;
    let response = Message::from_vec(&answer).ok()?;
    if response.id() != request.id() || response.message_type() != MessageType::Response {
        return None;
    }
    learn(shared, &qname, &response).await;
    Some(answer)
}

async fn exchange_udp(upstream: SocketAddr, query: &[u8], id: u16) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await.ok()?;
        // A stray datagram with another id is not the answer.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let mut conn = TcpStream::connect(upstream).await.ok()?;
    conn.write_u16(u16::try_from(query.len()).ok()?)
        .await
        .ok()?;
    conn.write_all(query).await.ok()?;
    let len = conn.read_u16().await.ok()?;
    let mut answer = vec![0u8; usize::from(len)];
    conn.read_exact(&mut answer).await.ok()?;
    Some(answer)
}

/// Puts the A records of `response` into the kernel set of the named rule
/// that the queried name (or, through a CNAME, the record's own name)
/// falls under. Runs before the guest gets the answer, so its connection
/// never races the rule.
async fn learn(shared: &Shared, qname: &str, response: &Message) {
    let policy = shared.policy();
    if !policy.has_domain_rules() {
        return;
    }
    let by_query = policy.domain_verdict(qname);
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for record in response.answers() {
        let RData::A(a) = record.data() else { continue };
        let verdict = by_query.or_else(|| policy.domain_verdict(&record.name().to_ascii()));
        let ttl = Duration::from_secs(u64::from(record.ttl())).clamp(LEARNED_MIN, LEARNED_MAX);
        match verdict {
            Some(Verdict::Allow) => allow.push((a.0, ttl)),
            Some(Verdict::Deny) => deny.push((a.0, ttl)),
            None => {}
        }
    }
    if allow.is_empty() && deny.is_empty() {
        return;
    }
    {
        let now = Instant::now();
        let mut learned = shared.learned.lock().expect("learned lock");
        for (ip, ttl) in &allow {
            learned.insert(*ip, (Verdict::Allow, now + *ttl));
        }
        for (ip, ttl) in &deny {
            learned.insert(*ip, (Verdict::Deny, now + *ttl));
        }
    }
    let script = learned_script(&allow, &deny);
    let netns = shared.net.layout().netns();
    let applied = tokio::task::spawn_blocking(move || {
        cmd::run(
            IP,
            &["netns", "exec", &netns, "nft", "-f", "-"],
            Some(&script),
        )
    })
    .await;
    match applied {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(name = qname, "recording resolved addresses: {e}"),
        Err(e) => tracing::warn!(name = qname, "recording resolved addresses: {e}"),
    }
}

fn learned_script(allow: &[(Ipv4Addr, Duration)], deny: &[(Ipv4Addr, Duration)]) -> String {
    let mut out = String::new();
    for (set, entries) in [(RESOLVED_ALLOW_SET, allow), (RESOLVED_DENY_SET, deny)] {
        if entries.is_empty() {
            continue;
        }
        let elements: Vec<String> = entries
            .iter()
            .map(|(ip, ttl)| format!("{ip} timeout {}s", ttl.as_secs()))
            .collect();
        out.push_str(&format!(
            "add element inet {SANDBOX_TABLE} {set} {{ {} }}\n",
            elements.join(", ")
        ));
    }
    out
}

async fn serve_proxy(shared: Arc<Shared>, listener: TcpListener) {
    let open = Arc::new(Semaphore::new(MAX_PROXIED));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Too many at once: refuse this one rather than queue it.
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            proxy_one(&shared, conn).await;
            drop(permit);
        });
    }
}

/// The destination the guest asked for, before the kernel redirected it.
fn original_destination(conn: &TcpStream) -> Option<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: SO_ORIGINAL_DST writes at most `len` bytes of a sockaddr_in
    // into `addr`, which lives across the call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

async fn proxy_one(shared: &Shared, mut guest_conn: TcpStream) {
    let Some(dest) = original_destination(&guest_conn) else {
        return;
    };
    if dest.ip() == &guest::GATEWAY && dest.port() == PROXY_PORT {
        return; // the guest dialled the proxy itself: nothing to forward to
    }
    let mut first = Vec::with_capacity(4096);
    let sniffed = tokio::time::timeout(SNIFF_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match sni::sniff(&first) {
                Sniffed::NeedMore => {}
                other => return other,
            }
            match guest_conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return Sniffed::Unnamed,
                Ok(n) => first.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or(Sniffed::Unnamed);
    let policy = shared.policy();
    let (verdict, name) = match &sniffed {
        Sniffed::Named(name) => (policy.decide(*dest.ip(), Some(name)), Some(name.as_str())),
        _ => (
            policy.decide_unnamed(*dest.ip(), shared.learned(*dest.ip())),
            None,
        ),
    };
    if verdict == Verdict::Deny {
        tracing::debug!(slot = %shared.net.layout().slot, %dest, name, "egress denied");
        return;
    }
    let Ok(mut upstream) = shared.net.connect_out(SocketAddr::V4(dest)).await else {
        return;
    };
    if upstream.write_all(&first).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut guest_conn, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_addresses_become_one_nft_transaction_with_timeouts() {
        let s = learned_script(
            &[(Ipv4Addr::new(198, 51, 100, 7), Duration::from_secs(300))],
            &[
                (Ipv4Addr::new(203, 0, 113, 1), Duration::from_secs(600)),
                (Ipv4Addr::new(203, 0, 113, 2), Duration::from_secs(600)),
            ],
        );
        assert_eq!(
            s,
            "add element inet warren resolved_allow { 198.51.100.7 timeout 300s }\n\
             add element inet warren resolved_deny { 203.0.113.1 timeout 600s, 203.0.113.2 timeout 600s }\n"
        );
        assert_eq!(learned_script(&[], &[]), "");
    }
}
