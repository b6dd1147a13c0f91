//! Doing things inside a sandbox's network namespace from warren's own
//! process: a short-lived thread joins the namespace, makes what is asked
//! (a socket, the TAP descriptor, a sysctl write) and ends. What it made
//! stays in the namespace, so warren can serve a resolver or proxy there,
//! or connect to the guest, without a process per sandbox.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Why work inside a namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// The namespace does not exist (or cannot be opened).
    #[error("cannot open network namespace {}", path.display())]
    Open {
        /// Its bind mount.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Joining it was refused (needs CAP_SYS_ADMIN).
    #[error("cannot enter network namespace {}; warren must run as root to give sandboxes a network", path.display())]
    Join {
        /// Its bind mount.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The work itself failed.
    #[error("inside network namespace {}", path.display())]
    Work {
        /// Its bind mount.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The path of namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs `work` on a thread that has joined namespace `name`.
pub fn run_in<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, EnterError> {
    let path = netns_path(name);
    let ns = File::open(&path).map_err(|source| EnterError::Open {
        path: path.clone(),
        source,
    })?;
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name("warren-netns".into())
        .spawn(move || {
            // setns on this thread only: the rest of the process stays put,
            // and the thread ends (taking its namespace with it) afterwards.
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| EnterError::Join {
                path: thread_path.clone(),
                source,
            })?;
            work().map_err(|source| EnterError::Work {
                path: thread_path,
                source,
            })
        })
        .map_err(|source| EnterError::Work {
            path: path.clone(),
            source,
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(EnterError::Work {
                path,
                source: io::Error::other("the namespace thread panicked"),
            })
        })
}

/// Writes a per-namespace sysctl (a path under `/proc/sys/net`): opened
/// from a thread inside the namespace, it is that namespace's value.
pub fn write_sysctl(name: &str, key: &'static str, value: &'static str) -> Result<(), EnterError> {
    run_in(name, move || {
        std::fs::write(format!("/proc/sys/{key}"), value)
    })
}
