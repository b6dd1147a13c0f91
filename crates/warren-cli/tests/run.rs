//! `warren run` end to end: the real binary, a real VM.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

fn warren(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let cache = warren_testkit::image_cache();
    let mut child = Command::new(WARREN)
        .args(args)
        .env("WARREN_HOME", home)
        .env("WARREN_IMAGE_CACHE", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warren");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("warren finished")
}

fn assert_no_leftovers(home: &Path) {
    let sandboxes = home.join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox directories left behind: {left:?}");
}

#[test]
fn run_passes_stdio_and_the_exit_status_through() {
    let home = tempfile::tempdir().unwrap();
    let output = warren(
        home.path(),
        &[
            "run",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; read line; echo got:$line; exit 5",
        ],
        b"from-stdin\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "out\ngot:from-stdin\n"
    );
    assert!(stderr.contains("err\n"), "{stderr}");
    assert_no_leftovers(home.path());
}

#[test]
fn run_with_a_terminal_gives_the_command_a_tty() {
    let home = tempfile::tempdir().unwrap();
    let output = warren(
        home.path(),
        &[
            "run",
            "--tty",
            "--cpus",
            "1",
            "--memory",
            "256",
            "--",
            "sh",
            "-c",
            "tty; exit 3",
        ],
        b"",
    );
    assert_eq!(
        output.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("/dev/pts/"));
    assert_no_leftovers(home.path());
}

#[test]
fn run_reports_a_missing_command_like_a_shell() {
    let home = tempfile::tempdir().unwrap();
    let output = warren(home.path(), &["run", "--", "no-such-program", "arg"], b"");
    assert_eq!(output.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("command not found: no-such-program"),
        "{stderr}"
    );
    assert_no_leftovers(home.path());
}

#[test]
fn run_refuses_bad_requests_before_booting() {
    let home = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["run", "--memory", "0", "--", "true"], "at least"),
        (vec!["run", "--image", "nope", "--", "true"], "nope"),
        (
            vec!["run", "--memory", "99999999", "--", "true"],
            "more than this host has",
        ),
    ] {
        let output = warren(home.path(), &args, b"");
        assert_eq!(output.status.code(), Some(125), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert_no_leftovers(home.path());
}
