//! One sandbox's network: its namespace, the veth pair to the host, the
//! TAP device QEMU attaches to, and the namespace's policy table.
//!
//! ```text
//!  guest eth0 169.254.0.21 ── tap0 169.254.0.22 │ namespace warren-N │ veth0 10.231.x.2 ══ wrnN 10.231.x.1 ── host ── out
//!                                  resolver :53, proxy :15001 (sockets of warren's process)
//! ```

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::cmd::{self, CommandError, IP, NFT};
use crate::layout::{HostRange, SlotLayout, device, guest};
use crate::netns::{self, EnterError};
use crate::nft;
use crate::policy::NetworkPolicy;

/// Why a sandbox network could not be made, changed or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An `ip` or `nft` call failed.
    #[error("setting up the network of slot {slot}")]
    Command {
        /// The slot.
        slot: u32,
        /// What failed.
        #[source]
        source: CommandError,
    },
    /// A socket made in the namespace could not be handed to the runtime.
    #[error("a socket in the network namespace of slot {slot}")]
    Socket {
        /// The slot.
        slot: u32,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Work inside the namespace failed.
    #[error("in the network namespace of slot {slot}")]
    Namespace {
        /// The slot.
        slot: u32,
        /// What failed.
        #[source]
        source: EnterError,
    },
}

/// A sandbox network that exists on the host. Dropping it removes nothing
/// (the network outlives warren restarts); [`SandboxNet::destroy`] does.
#[derive(Debug, Clone)]
pub struct SandboxNet {
    layout: SlotLayout,
}

impl SandboxNet {
    /// Makes the network of `layout` with `policy`. Anything left of an
    /// earlier network of this slot (a crash mid-create) is removed first;
    /// a failure removes what this call made.
    pub fn create(
        layout: SlotLayout,
        policy: &NetworkPolicy,
        range: &HostRange,
    ) -> Result<Self, NetError> {
        let net = SandboxNet { layout };
        net.destroy()?;
        if let Err(e) = net.build(policy, range) {
            if let Err(cleanup) = net.destroy() {
                tracing::warn!(slot = %net.layout.slot, "removing a half-made network: {cleanup}");
            }
            return Err(e);
        }
        Ok(net)
    }

    /// The network of `layout` as it already exists (re-adopted after a
    /// restart), or `None` when its namespace is gone.
    pub fn adopt(layout: SlotLayout) -> Option<Self> {
        netns::netns_path(&layout.netns())
            .exists()
            .then_some(SandboxNet { layout })
    }

    /// A handle on slot `layout` whether or not its network exists (for
    /// sweeping what a crash left).
    pub(crate) fn from_layout(layout: SlotLayout) -> Self {
        SandboxNet { layout }
    }

    fn command(&self, source: CommandError) -> NetError {
        NetError::Command {
            slot: self.layout.slot.0,
            source,
        }
    }

    fn namespace(&self, source: EnterError) -> NetError {
        NetError::Namespace {
            slot: self.layout.slot.0,
            source,
        }
    }

    fn build(&self, policy: &NetworkPolicy, range: &HostRange) -> Result<(), NetError> {
        let ns = self.layout.netns();
        let host_if = self.layout.host_iface();
        cmd::run(IP, &["netns", "add", &ns], None).map_err(|e| self.command(e))?;
        let host = format!(
            "link add {host_if} type veth peer name {veth} netns {ns}\n\
             addr add {host_addr}/30 dev {host_if}\n\
             link set {host_if} up\n",
            veth = device::VETH,
            host_addr = self.layout.host_addr,
        );
        cmd::run(IP, &["-batch", "-"], Some(&host)).map_err(|e| self.command(e))?;
        let inside = format!(
            "link set lo up\n\
             addr add {ns_addr}/30 dev {veth}\n\
             link set {veth} up\n\
             tuntap add dev {tap} mode tap vnet_hdr\n\
             link set {tap} address {gw_mac}\n\
             addr add {gw}/{len} dev {tap}\n\
             link set {tap} up\n\
             route add default via {host_addr}\n",
            ns_addr = self.layout.ns_addr,
            veth = device::VETH,
            tap = device::TAP,
            gw = guest::GATEWAY,
            gw_mac = guest::gateway_mac_string(),
            len = guest::PREFIX_LEN,
            host_addr = self.layout.host_addr,
        );
        cmd::run(IP, &["-n", &ns, "-batch", "-"], Some(&inside)).map_err(|e| self.command(e))?;
        netns::write_sysctl(&ns, "net/ipv4/ip_forward", "1").map_err(|e| self.namespace(e))?;
        netns::write_sysctl(&ns, "net/ipv6/conf/all/disable_ipv6", "1")
            .map_err(|e| self.namespace(e))?;
        self.apply_policy(policy, range)
    }

    /// Replaces the policy, in one transaction: connections already open
    /// stay open; new ones follow the new rules.
    pub fn apply_policy(&self, policy: &NetworkPolicy, range: &HostRange) -> Result<(), NetError> {
        let script = nft::sandbox_script(policy, range);
        cmd::run(
            IP,
            &[
                "netns",
                "exec",
                &self.layout.netns(),
                NFT_PROGRAM,
                "-f",
                "-",
            ],
            Some(&script),
        )
        .map_err(|e| self.command(e))?;
        Ok(())
    }

    /// Removes the namespace (which takes the veth pair and the TAP with
    /// it) and a host veth end a crash may have left. Removing what is
    /// already gone succeeds.
    pub fn destroy(&self) -> Result<(), NetError> {
        // The host end first: deleting a veth end deletes its peer at once,
        // while a namespace's devices go with it only later, asynchronously
        // (a new network of this slot must not meet the old host end).
        let host_if = self.layout.host_iface();
        let host_link = Path::new("/sys/class/net").join(&host_if);
        if host_link.exists()
            && let Err(e) = cmd::run(IP, &["link", "delete", &host_if], None)
            // Gone meanwhile (its namespace was being removed) is done.
            && host_link.exists()
        {
            return Err(self.command(e));
        }
        let ns = self.layout.netns();
        if netns::netns_path(&ns).exists() {
            cmd::run(IP, &["netns", "delete", &ns], None).map_err(|e| self.command(e))?;
        }
        Ok(())
    }

    /// Its slot layout.
    pub fn layout(&self) -> &SlotLayout {
        &self.layout
    }

    /// Opens the TAP device for QEMU (`-netdev tap,fd=N`): a descriptor
    /// opened inside the namespace, so QEMU itself stays in the host's.
    pub fn open_tap(&self) -> Result<OwnedFd, NetError> {
        netns::run_in(&self.layout.netns(), open_tap).map_err(|e| self.namespace(e))
    }

    /// A TCP connection from the namespace to `port` of the guest (how the
    /// port proxy reaches a server in the sandbox).
    pub fn connect_guest(&self, port: u16, timeout: Duration) -> Result<TcpStream, NetError> {
        let addr = SocketAddr::from((guest::ADDRESS, port));
        netns::run_in(&self.layout.netns(), move || {
            TcpStream::connect_timeout(&addr, timeout)
        })
        .map_err(|e| self.namespace(e))
    }

    /// A TCP listener bound inside the namespace (the resolver's TCP side,
    /// the name-checking proxy).
    pub fn listen_tcp(&self, addr: SocketAddr) -> Result<TcpListener, NetError> {
        netns::run_in(&self.layout.netns(), move || TcpListener::bind(addr))
            .map_err(|e| self.namespace(e))
    }

    /// An outgoing TCP connection from the namespace (the proxy's
    /// upstream side): its socket is made inside the namespace, then
    /// connected on the runtime, so the connection leaves through the
    /// namespace's veth and its rules, never the host's own routes.
    pub async fn connect_out(&self, to: SocketAddr) -> Result<tokio::net::TcpStream, NetError> {
        let socket = netns::run_in(&self.layout.netns(), move || {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM.cloexec(),
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .map_err(|e| self.namespace(e))?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        socket.connect(to).await.map_err(|source| NetError::Socket {
            slot: self.layout.slot.0,
            source,
        })
    }

    /// A UDP socket bound inside the namespace (the resolver).
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<UdpSocket, NetError> {
        netns::run_in(&self.layout.netns(), move || UdpSocket::bind(addr))
            .map_err(|e| self.namespace(e))
    }
}

/// `nft` as `ip netns exec` runs it.
const NFT_PROGRAM: &str = "nft";

/// TUNSETIFF from `<linux/if_tun.h>`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

fn open_tap() -> std::io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(device::TAP.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF takes a `struct ifreq *`, which `req` is, and the
    // descriptor is open for the call's whole duration.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETIFF as _,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file.into())
}

/// Checks that `nft` is reachable, for a clear error at start-up rather
/// than at the first create.
pub(crate) fn nft_available() -> Result<(), CommandError> {
    cmd::run(NFT, &["--version"], None).map(drop)
}
