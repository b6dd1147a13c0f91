//! `warren bench ...`: the benchmarks and the fault harness are the
//! `warren-bench` binary, so that `warren` ships none of their code; this
//! is the entry that runs it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

use anyhow::{Context, Error, anyhow};

/// Replaces this process with `warren-bench ARGS`, the `warren-bench`
/// found beside the running `warren`; returns only on failure. The global
/// options given to `warren` (`--data-dir`, `--accel`) are passed on, and
/// `WARREN_BENCH_WARREN` names this executable, so the benchmarks that
/// start `warren up` start this very `warren`.
pub fn exec(cli: &crate::Cli, args: &[OsString]) -> Error {
    let warren = match std::env::current_exe().context("finding the warren executable") {
        Ok(path) => path,
        Err(error) => return error,
    };
    let bench = beside(&warren);
    if !bench.is_file() {
        return anyhow!(
            "warren-bench not found beside {}; build it with cargo build --release -p warren-bench",
            warren.display()
        );
    }
    let mut command = std::process::Command::new(&bench);
    command
        .args(cli.global.to_args())
        .args(args)
        .env("WARREN_BENCH_WARREN", &warren);
    let error = command.exec();
    anyhow!("running {}: {error}", bench.display())
}

/// Where `warren-bench` must be: the directory of the running `warren`.
fn beside(warren: &std::path::Path) -> PathBuf {
    warren.with_file_name("warren-bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warren_bench_is_looked_up_beside_warren() {
        assert_eq!(
            beside(std::path::Path::new("/opt/warren/bin/warren")),
            PathBuf::from("/opt/warren/bin/warren-bench")
        );
    }
}
