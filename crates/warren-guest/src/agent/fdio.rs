//! Non-blocking I/O on raw descriptors (pipes and PTY masters) through the
//! tokio reactor.
//!
//! tokio's process pipes cannot carry a PTY master, and the output pumps
//! need a non-blocking "read what is there right now" for draining a pipe
//! after the process exited; one small type covers both.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A descriptor registered with the reactor for reading and/or writing.
#[derive(Debug)]
pub struct FdIo {
    fd: AsyncFd<OwnedFd>,
}

impl FdIo {
    /// Makes `fd` non-blocking and registers it.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (and
        // its number) until dropped.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(Self { fd })
    }

    /// The raw descriptor (for ioctls).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    fn read_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, exclusively borrowed buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        // A PTY master reports EIO once every slave descriptor is closed:
        // that is its end of file.
        if error.raw_os_error() == Some(libc::EIO) {
            return Ok(0);
        }
        Err(error)
    }

    /// Reads what is available, waiting until something is; 0 = end.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Self::read_now(fd.get_ref().as_raw_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what is available right now without waiting; `WouldBlock` if
    /// nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Self::read_now(self.raw_fd(), buf)
    }

    /// Writes all of `data`, waiting while the pipe or terminal is full.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: writing from a valid buffer.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// A pipe whose both ends are close-on-exec (the child's end gets dup'ed
/// onto its stdio, which clears the flag only there).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_round_trip_and_eof() {
        let (r, w) = pipe().unwrap();
        let reader = FdIo::new(r).unwrap();
        let writer = FdIo::new(w).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            reader.try_read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        writer.write_all(b"hello").await.unwrap();
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        drop(writer);
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
    }
}
