//! The loopback interface (many programs, test servers, language tooling
//! and databases among them, need `localhost`), and `eth0` when the host
//! gave the sandbox a network: a static address from the kernel command
//! line, so there is no DHCP wait.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// `struct ifreq` for `name` with everything else zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> Result<(), Errno> {
    // SAFETY: every request used here takes a `struct ifreq *`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    Errno::result(rc).map(drop)
}

fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the
    // kernel reads it back as sockaddr_in because the family says so.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// A datagram socket to send interface ioctls through.
fn ioctl_socket() -> Result<OwnedFd, String> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))
}

/// Brings `lo` up and gives it 127.0.0.1/8 unless it already has an
/// address (the kernel normally adds it when the interface comes up).
pub fn bring_up_loopback() -> Result<(), String> {
    let sock = ioctl_socket()?;
    let mut req = ifreq("lo");
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req).map_err(|e| format!("SIOCGIFFLAGS lo: {e}"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short == 0 {
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut req)
            .map_err(|e| format!("SIOCSIFFLAGS lo up: {e}"))?;
    }
    let mut req = ifreq("lo");
    match ioctl(&sock, libc::SIOCGIFADDR, &mut req) {
        Ok(()) => Ok(()),
        Err(Errno::EADDRNOTAVAIL) => {
            let mut req = ifreq("lo");
            req.ifr_ifru.ifru_addr = sockaddr_in([127, 0, 0, 1]);
            ioctl(&sock, libc::SIOCSIFADDR, &mut req)
                .map_err(|e| format!("SIOCSIFADDR lo 127.0.0.1: {e}"))?;
            let mut req = ifreq("lo");
            req.ifr_ifru.ifru_netmask = sockaddr_in([255, 0, 0, 0]);
            ioctl(&sock, libc::SIOCSIFNETMASK, &mut req)
                .map_err(|e| format!("SIOCSIFNETMASK lo 255.0.0.0: {e}"))?;
            Ok(())
        }
        Err(e) => Err(format!("SIOCGIFADDR lo: {e}")),
    }
}

/// Waits for `eth0` (its driver binds asynchronously after the module
/// loads), gives it the host's static address, brings it up, adds the
/// default route and points `/etc/resolv.conf` at the host's resolver.
pub fn configure_eth0(
    net: &super::cmdline::GuestNet,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    while !std::path::Path::new("/sys/class/net/eth0").exists() {
        if started.elapsed() > timeout {
            return Err(format!(
                "no eth0 after {} s (is virtio_net in the initramfs modules?)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sock = ioctl_socket()?;
    let mut req = ifreq("eth0");
    req.ifr_ifru.ifru_addr = sockaddr_in(net.address.octets());
    ioctl(&sock, libc::SIOCSIFADDR, &mut req).map_err(|e| format!("SIOCSIFADDR eth0: {e}"))?;
    let mask = u32::MAX << (32 - u32::from(net.prefix_len));
    let mut req = ifreq("eth0");
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask.to_be_bytes());
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req)
        .map_err(|e| format!("SIOCSIFNETMASK eth0: {e}"))?;
    let mut req = ifreq("eth0");
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req).map_err(|e| format!("SIOCGIFFLAGS eth0: {e}"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(|e| format!("SIOCSIFFLAGS eth0 up: {e}"))?;

    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in([0, 0, 0, 0]);
    route.rt_genmask = sockaddr_in([0, 0, 0, 0]);
    route.rt_gateway = sockaddr_in(net.gateway.octets());
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT takes a `struct rtentry *`; rt_dev is null (the
    // kernel picks the interface that reaches the gateway).
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut route as *mut libc::rtentry,
        )
    };
    match Errno::result(rc) {
        Ok(_) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(format!("SIOCADDRT default via {}: {e}", net.gateway)),
    }
    write_resolv_conf(net.dns).map_err(|e| format!("writing /etc/resolv.conf: {e}"))
}

/// Replaces `/etc/resolv.conf` (a file or a symlink into a resolver the
/// image may have) by one naming `dns`, atomically.
fn write_resolv_conf(dns: std::net::Ipv4Addr) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = "/etc/.resolv.conf.warren";
    let mut file = std::fs::File::create(tmp)?;
    writeln!(
        file,
        "# written by warren at boot: the sandbox's resolver\nnameserver {dns}"
    )?;
    file.sync_all()?;
    std::fs::rename(tmp, "/etc/resolv.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_requests() {
        let req = ifreq("lo");
        assert_eq!(req.ifr_name[0] as u8, b'l');
        assert_eq!(req.ifr_name[2], 0);
        let long = ifreq(&"x".repeat(40));
        assert_eq!(long.ifr_name[libc::IFNAMSIZ - 1], 0);
        let addr = sockaddr_in([127, 0, 0, 1]);
        assert_eq!(addr.sa_family as i32, libc::AF_INET);
    }
}
