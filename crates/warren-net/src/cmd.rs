//! Running `ip` and `nft`.
//!
//! Written by hand rather than with a netlink crate: iproute2 and nftables
//! are the kernel's reference userland, their batch modes apply many
//! changes in one call (`nft -f` is one atomic transaction, which is what a
//! policy update needs), and the Rust netlink crates would still need
//! namespace handling written here. The cost is a process per call,
//! measured by `warren bench net` (`network_setup_ms_p50`).

use std::io::Write;
use std::process::{Command, Stdio};

/// A tool failed; carries what was run and what it said, for the log and
/// the operator. Never inspected for its text.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started at all (not installed).
    #[error("cannot run {program}; install it (Debian: apt-get install {package})")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line (and, for batch input, the first failing line is in stderr).
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
}

/// A program this crate runs, with the package that provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    program: &'static str,
    package: &'static str,
}

impl Tool {
    const fn new(program: &'static str, package: &'static str) -> Self {
        Self { program, package }
    }
}

/// iproute2's `ip`.
pub(crate) const IP: Tool = Tool::new("ip", "iproute2");
/// nftables' `nft`.
pub(crate) const NFT: Tool = Tool::new("nft", "nftables");

/// Runs `tool args...` with `stdin` as its input, returning stdout.
pub(crate) fn run(tool: Tool, args: &[&str], stdin: Option<&str>) -> Result<String, CommandError> {
    let spawn_err = |source| CommandError::Spawn {
        program: tool.program,
        package: tool.package,
        source,
    };
    let mut child = Command::new(tool.program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        // A tool that exits early closes the pipe; its status says why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Err(CommandError::Failed {
        command: format!("{} {}", tool.program, args.join(" ")),
        status: out.status,
        stderr: tail,
    })
}
