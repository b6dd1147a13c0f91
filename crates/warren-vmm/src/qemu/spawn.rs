//! Spawning VMM processes (QEMU, and helpers such as the snapshot memory
//! daemon) from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not the process. Async runtimes fork from whatever worker or blocking
//! thread runs the task, and blocking threads are retired after idling, which
//! would kill healthy VMs. Forking from a dedicated thread that lives as
//! long as the process makes "die with the parent" mean exactly that.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

/// What to start.
pub struct SpawnRequest {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// Receives the process's stdout and stderr.
    pub log: File,
    /// Deliver SIGKILL to the child when this process dies.
    pub die_with_parent: bool,
}

type Job = (SpawnRequest, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vmm-spawner".into())
            .spawn(move || {
                for (request, reply) in rx {
                    let _ = reply.send(spawn_here(request));
                }
            })
            .expect("start the VMM spawner thread");
        tx
    })
}

/// Starts the process on the spawner thread and returns its handle.
pub fn spawn(request: SpawnRequest) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .send((request, tx))
        .map_err(|_| std::io::Error::other("VMM spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("VMM spawner thread is gone"))?
}

fn spawn_here(request: SpawnRequest) -> std::io::Result<Child> {
    let stderr = request.log.try_clone()?;
    let mut command = Command::new(&request.binary);
    command
        .args(&request.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(request.log))
        .stderr(Stdio::from(stderr))
        // Own process group: a terminal's signals never reach it, and
        // killpg takes the whole VMM down.
        .process_group(0);
    if request.die_with_parent {
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
    }
    command.spawn()
}
