//! Network namespaces and links that tests make themselves (peers on
//! documentation ranges), through iproute2 as a person would.

use std::process::Command;

/// Runs `ip ARGS` (split on white space) and panics with its stderr if it
/// fails: a test's own set-up, which must work for the test to mean
/// anything.
pub fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("running ip {args}: {e} (install iproute2)"));
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
