//! The loopback interface. Nothing else configures networking in the
//! sandbox, and many programs (test servers, language tooling, databases)
//! need `localhost` to work.

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

/// Brings `lo` up and gives it 127.0.0.1/8 unless it already has an
/// address (the kernel normally adds it when the interface comes up).
pub fn bring_up_loopback() -> Result<(), String> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
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
