//! Logging to the sandbox console.
//!
//! In a VM the host records the serial console as the sandbox's console
//! log, so that is where the init and the agent write: it is the one place
//! a person can look when a sandbox does not come up. On a normal host
//! (`--listen-unix`) logs go to stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Turns on the init's verbose messages (`warren.debug=1`).
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// Whether verbose messages are on.
pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

fn open_console() -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/console")
        .ok()
}

/// Writes one line to the console (or stderr if there is none yet). Used
/// by the init, which has no tracing subscriber and must never fail on a
/// log line.
pub fn console(message: &str) {
    let line = format!("warren-init: {message}\n");
    match open_console() {
        Some(mut console) => {
            let _ = console.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// [`console`] only when debugging is on.
pub fn console_debug(message: &str) {
    if debug_enabled() {
        console(message);
    }
}

/// Where the agent's tracing output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// `/dev/console` (in the VM).
    Console,
    /// The process's stderr (development mode).
    Stderr,
}

/// A writer that holds the console open (falls back to stderr), shared by
/// the tracing subscriber.
struct ConsoleWriter(Mutex<Option<File>>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ConsoleWriter {
    type Writer = ConsoleLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        ConsoleLine(&self.0)
    }
}

/// One log record being written to the console.
struct ConsoleLine<'a>(&'a Mutex<Option<File>>);

impl Write for ConsoleLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut console = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match console.as_mut() {
            Some(file) => file.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the agent's tracing subscriber: `RUST_LOG` if set, otherwise
/// warnings (debug with `debug`). Safe to call once per process.
pub fn init_tracing(target: LogTarget, debug: bool) {
    let default = if debug {
        "warren_guest=debug,warren_proto=debug,info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(true);
    let result = match target {
        LogTarget::Console => builder
            .with_writer(ConsoleWriter(Mutex::new(open_console())))
            .try_init(),
        LogTarget::Stderr => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second call (the agent restarted in-process) keeps the first one.
    let _ = result;
}
