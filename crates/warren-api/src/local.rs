//! Where a warren service on this machine keeps its data, so that a client
//! on the same machine (the CLI) finds the service's admin key and address
//! with no configuration. Shared here because the service and its clients
//! must agree on it, and a client should not depend on the service's crates.

use std::path::PathBuf;

/// Environment variable that overrides the data directory.
pub const HOME_ENV: &str = "WARREN_HOME";

/// Where warren keeps images and sandboxes: `$WARREN_HOME` if set, else
/// `/var/lib/warren` for root (a system service), else
/// `$XDG_DATA_HOME/warren` or `~/.local/share/warren`.
pub fn default_data_dir() -> PathBuf {
    data_dir_from(
        std::env::var_os(HOME_ENV),
        effective_uid() == 0,
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

fn data_dir_from(
    warren_home: Option<std::ffi::OsString>,
    is_root: bool,
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    let set = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(warren_home) {
        return dir;
    }
    if is_root {
        return PathBuf::from("/var/lib/warren");
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = set(xdg_data_home).filter(|d| d.is_absolute()) {
        return dir.join("warren");
    }
    match set(home) {
        Some(home) => home.join(".local/share/warren"),
        None => std::env::temp_dir().join(format!("warren-{}", effective_uid())),
    }
}

/// The caller's effective user id.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory
    // of ours.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_precedence() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(
            data_dir_from(s("/w"), true, s("/x"), s("/h")),
            PathBuf::from("/w")
        );
        assert_eq!(
            data_dir_from(s(""), true, s("/x"), s("/h")),
            PathBuf::from("/var/lib/warren")
        );
        assert_eq!(
            data_dir_from(None, false, s("/x"), s("/h")),
            PathBuf::from("/x/warren")
        );
        assert_eq!(
            data_dir_from(None, false, s("rel"), s("/h")),
            PathBuf::from("/h/.local/share/warren")
        );
        assert_eq!(
            data_dir_from(None, false, None, s("/h")),
            PathBuf::from("/h/.local/share/warren")
        );
    }
}
