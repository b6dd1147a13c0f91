//! The PID 1 loop: runs the agent as a child, restarts it if it dies,
//! reaps every orphan of the guest, and shuts the guest down cleanly on
//! SIGTERM/SIGINT/SIGPWR (SIGTERM is also how the agent asks for it).

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::agent::{self, ShutdownMode};
use crate::logging::{self, LogTarget, console, console_debug};

/// Signals PID 1 waits for. The kernel drops signals to PID 1 that have no
/// handler, so each gets a no-op handler and is then blocked and taken
/// synchronously with `sigtimedwait`.
const SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGPWR,
    Signal::SIGCHLD,
];
/// First restart delay of a dead agent; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// An agent that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Time processes get to exit after SIGTERM at shutdown.
const TERM_GRACE: Duration = Duration::from_secs(2);

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Makes a panic in PID 1 log its reason and power off: returning from a
/// panic would end PID 1, which panics the kernel and hangs the VM.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        console(&format!("PID 1 panicked: {info}; powering off"));
        power_off();
    }));
}

/// Syncs and powers the VM off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let error = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    console(&format!("power-off failed: {error:?}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in SIGNALS {
        set.add(signal);
    }
    set
}

/// Installs no-op handlers for [`SIGNALS`] and blocks them, so they queue
/// for [`wait_signal`] instead of being dropped by the kernel.
fn setup_signals() {
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in SIGNALS {
        // SAFETY: installing a handler that does nothing.
        if let Err(errno) = unsafe { sigaction(signal, &action) } {
            console(&format!("installing a handler for {signal}: {errno}"));
        }
    }
    if let Err(errno) =
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None)
    {
        console(&format!("blocking signals: {errno}"));
    }
    // Ctrl-Alt-Del (QEMU `system_reset` keys) becomes SIGINT: a shutdown.
    let _ = nix::sys::reboot::set_cad_enabled(false);
}

/// Undoes [`setup_signals`] in the forked agent.
fn reset_signals() {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in SIGNALS {
        // SAFETY: restoring the default disposition.
        let _ = unsafe { sigaction(signal, &action) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Waits for one of [`SIGNALS`] for at most `timeout`.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timespec; siginfo is optional.
    let signal = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (signal > 0).then_some(signal)
}

/// Forks the agent. The child never returns from here.
fn spawn_agent(debug: bool) -> Option<Pid> {
    // SAFETY: PID 1 is single-threaded (no runtime exists in it), so the
    // child may do anything after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Some(child),
        Ok(ForkResult::Child) => {
            reset_signals();
            std::panic::set_hook(Box::new(|info| {
                console(&format!("agent panicked: {info}"));
            }));
            logging::init_tracing(LogTarget::Console, debug);
            let result = std::panic::catch_unwind(|| {
                agent::run_port(warren_proto::AGENT_PORT_NAME, ShutdownMode::SignalInit)
            });
            let code = match result {
                Ok(Ok(())) => 0,
                Ok(Err(error)) => {
                    console(&format!("agent failed: {error}"));
                    1
                }
                Err(_) => 101,
            };
            std::process::exit(code)
        }
        Err(errno) => {
            console(&format!("forking the agent failed: {errno}"));
            None
        }
    }
}

/// Reaps every exited child. Returns the agent's status if it was among
/// them, and whether no child is left at all.
fn reap(agent: Option<Pid>) -> (Option<WaitStatus>, bool) {
    let mut agent_status = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return (agent_status, false),
            Ok(status) => {
                if status.pid().is_some() && status.pid() == agent {
                    agent_status = Some(status);
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return (agent_status, true),
            Err(errno) => {
                console(&format!("waitpid: {errno}"));
                return (agent_status, false);
            }
        }
    }
}

/// Shell the page-cache warm-up runs; images without one skip it.
const WARM_UP_SHELL: &str = "/bin/sh";
/// What the warm-up shell runs: `env` sets up the default locale (as most
/// programs do at start) before it runs `true`. A missing `env` only costs
/// an error message nobody reads.
const WARM_UP_SCRIPT: &str = "exec env true";
/// Longest the warm-up may take before boot goes on without it.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the image's shell once, with the environment commands get, so the
/// pages every command needs (shell, dynamic loader, C library, the default
/// locale) are in the guest's page cache from boot on. Otherwise the first
/// command after a resume reads them from disk into fresh guest pages, and
/// all of them (~3 MiB) land in the next pause's diff.
///
/// It runs before the agent starts, so a sandbox is only ready once it is
/// done: a snapshot taken right after create must not hold a half-run
/// warm-up that every clone of it would then finish on its own (measured:
/// +18 MiB idle PSS per clone). A missing shell is not an error.
fn warm_page_cache() {
    use std::process::{Command, Stdio};
    if !std::path::Path::new(WARM_UP_SHELL).exists() {
        return;
    }
    let spawned = Command::new(WARM_UP_SHELL)
        .args(["-c", WARM_UP_SCRIPT])
        .env_clear()
        .env("PATH", agent::exec::DEFAULT_PATH)
        .env("LANG", agent::exec::DEFAULT_LANG)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            console_debug(&format!(
                "warming the page cache ({WARM_UP_SHELL}): {error}"
            ));
            return;
        }
    };
    let deadline = Instant::now() + WARM_UP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                console(&format!(
                    "the page-cache warm-up ({WARM_UP_SHELL} -c '{WARM_UP_SCRIPT}') did not finish within {WARM_UP_TIMEOUT:?}; starting the agent without it"
                ));
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Err(error) => {
                console_debug(&format!("waiting for the page-cache warm-up: {error}"));
                return;
            }
        }
    }
}

/// The supervisor loop. Never returns.
pub fn supervise(debug: bool) -> ! {
    warm_page_cache();
    setup_signals();
    let set = handled_set();
    let mut agent: Option<Pid> = None;
    let mut started = Instant::now();
    let mut backoff = MIN_BACKOFF;
    let mut restart_at = Instant::now();
    loop {
        let now = Instant::now();
        if agent.is_none() && now >= restart_at {
            agent = spawn_agent(debug);
            started = now;
            if agent.is_none() {
                restart_at = now + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        let timeout = if agent.is_none() {
            restart_at.saturating_duration_since(now)
        } else {
            Duration::from_secs(60)
        };
        match wait_signal(&set, timeout) {
            Some(libc::SIGTERM) => shutdown("SIGTERM"),
            Some(libc::SIGINT) => shutdown("SIGINT"),
            Some(libc::SIGPWR) => shutdown("SIGPWR"),
            _ => {}
        }
        let (agent_status, _) = reap(agent);
        if let Some(status) = agent_status {
            if started.elapsed() >= STABLE_AFTER {
                backoff = MIN_BACKOFF;
            }
            console(&format!(
                "the agent ended ({status:?}); restarting it in {backoff:?}"
            ));
            agent = None;
            restart_at = Instant::now() + backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Stops every process, unmounts and powers off. Never returns.
fn shutdown(reason: &str) -> ! {
    console_debug(&format!("shutting down ({reason})"));
    // SAFETY: kill(2) of every process but PID 1.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if reap(None).1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && !reap(None).1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::unistd::sync();
    super::mounts::unmount_all();
    power_off()
}
