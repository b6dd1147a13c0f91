//! Pseudo-terminals for interactive processes.
//!
//! Opened by hand (posix_openpt with O_CLOEXEC, then the slave with
//! O_CLOEXEC) instead of `openpty(3)`, whose descriptors are inheritable:
//! a concurrently spawned process would otherwise keep a copy of another
//! process's terminal open, and that terminal would never hang up.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use warren_proto::pb;

/// Rows and columns when the caller gives zero.
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// An open terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The agent's end.
    pub master: OwnedFd,
    /// The process's end (becomes its stdin, stdout, stderr).
    pub slave: OwnedFd,
}

/// Converts a requested size to a kernel `winsize`, clamped to what the
/// kernel stores (u16) and defaulting zero dimensions.
pub fn winsize(size: &pb::PtySize) -> libc::winsize {
    let clamp = |v: u32, default: u16| {
        if v == 0 {
            default
        } else {
            v.min(u16::MAX as u32) as u16
        }
    };
    libc::winsize {
        ws_row: clamp(size.rows, DEFAULT_SIZE.0),
        ws_col: clamp(size.cols, DEFAULT_SIZE.1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a new terminal of `size`.
pub fn open(size: &pb::PtySize) -> io::Result<Pty> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(io::Error::from)?;
    nix::pty::grantpt(&master).map_err(io::Error::from)?;
    nix::pty::unlockpt(&master).map_err(io::Error::from)?;
    let name = nix::pty::ptsname_r(&master).map_err(io::Error::from)?;
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: open(2) of a NUL-terminated path; the result is checked.
    let slave = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: PtyMaster gives up its descriptor; we own it from here.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    resize(master.as_raw_fd(), size)?;
    Ok(Pty { master, slave })
}

/// Sets the window size of the terminal behind `fd` (master or slave); the
/// kernel sends SIGWINCH to the terminal's foreground process group.
pub fn resize(fd: RawFd, size: &pb::PtySize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a `struct winsize`.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_sizes() {
        let ws = winsize(&pb::PtySize { rows: 0, cols: 0 });
        assert_eq!((ws.ws_row, ws.ws_col), (24, 80));
        let ws = winsize(&pb::PtySize {
            rows: 50,
            cols: 1_000_000,
        });
        assert_eq!((ws.ws_row, ws.ws_col), (50, u16::MAX));
    }

    #[test]
    fn opens_a_terminal_of_the_requested_size() {
        let pty = open(&pb::PtySize { rows: 33, cols: 99 }).unwrap();
        // SAFETY: winsize is plain integers; all zeroes is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize into the one we own.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 99));
    }
}
