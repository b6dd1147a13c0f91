//! Flags of `warren up` that are refused before anything starts: the real
//! binary, no VM, nothing listening afterwards.

use std::process::Command;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

#[test]
fn up_refuses_bad_network_flags_with_what_to_give() {
    let home = tempfile::tempdir().unwrap();
    for (args, env_net, needle) in [
        (
            vec!["up", "--net-range", "127.0.0.0/8"],
            None,
            "overlaps loopback",
        ),
        (vec!["up", "--net-range", "10.9.0.0/30"], None, "too small"),
        (vec!["up", "--net-range", "ten"], None, "not an IPv4 CIDR"),
        (
            vec!["up", "--dns-upstream", "resolver"],
            None,
            "not an address such as 192.0.2.53",
        ),
        (
            vec!["up", "--no-network", "--dns-upstream", "192.0.2.53"],
            None,
            "cannot be used with",
        ),
        (
            vec!["up", "--net-range", "10.77.0.0/16"],
            Some("off"),
            "WARREN_NET=off",
        ),
        (
            vec!["up", "--domain", "http://sandboxes.example.com"],
            None,
            "is not a domain such as localhost:7700",
        ),
        (
            vec!["up", "--domain", "example.com:0"],
            None,
            "an optional :PORT",
        ),
    ] {
        let mut command = Command::new(WARREN);
        command
            .args(&args)
            .env("WARREN_HOME", home.path())
            .env_remove("WARREN_NET");
        if let Some(value) = env_net {
            command.env("WARREN_NET", value);
        }
        let output = command.output().expect("run warren");
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Nothing was started: no service file, no sandbox directory.
    assert!(!home.path().join("sandboxes").exists());
    assert!(!home.path().join("service.json").exists());
}
