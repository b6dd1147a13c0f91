//! What warren's two command lines share, once: `warren` (the product) and
//! `warren-bench` (benchmarks and the fault harness, run by `warren bench`)
//! take the same global flags, turn them into the same
//! [`ManagerConfig`], and show image builds with the same spinner.
//!
//! Not an API boundary: it changes with the two binaries.

mod progress;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use warren_sandbox::{AccelChoice, ManagerConfig};

pub use progress::SpinnerProgress;

/// Logs to stderr at the level `$WARREN_LOG` names (`warn` by default), so
/// both binaries' output on stdout stays what scripts parse.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The flags every subcommand of `warren` and `warren-bench` takes
/// (`#[command(flatten)]` them into the top-level parser).
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Data directory (images, sandboxes; where API commands look for a
    /// local `warren up`). Default: $WARREN_HOME, or /var/lib/warren as
    /// root.
    #[arg(long, global = true, env = "WARREN_HOME")]
    pub data_dir: Option<PathBuf>,
    /// Accelerator: auto (KVM when usable, else TCG), kvm, or tcg.
    #[arg(long, global = true, env = "WARREN_ACCEL", default_value = "auto")]
    pub accel: String,
}

impl GlobalArgs {
    /// The manager configuration of the environment, with these flags
    /// applied over it.
    pub fn manager_config(&self) -> Result<ManagerConfig> {
        let mut config = ManagerConfig::from_env()?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        config.accel = self.accel.parse::<AccelChoice>()?;
        Ok(config)
    }

    /// The same flags as arguments, to pass them on to a child command
    /// line (`warren bench` runs `warren-bench` with them).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(dir) = &self.data_dir {
            args.push("--data-dir".into());
            args.push(dir.clone().into_os_string());
        }
        args.push("--accel".into());
        args.push(self.accel.clone().into());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Top {
        #[command(flatten)]
        global: GlobalArgs,
    }

    #[test]
    fn flags_pass_on_as_they_were_given() {
        let top = Top::parse_from(["x", "--data-dir", "/d", "--accel", "tcg"]);
        assert_eq!(
            top.global.data_dir.as_deref(),
            Some(std::path::Path::new("/d"))
        );
        let again =
            Top::parse_from(std::iter::once(OsString::from("x")).chain(top.global.to_args()));
        assert_eq!(again.global.data_dir, top.global.data_dir);
        assert_eq!(again.global.accel, "tcg");
    }
}
