//! The README's commands must set up a *fresh* machine, not only the one CI
//! runs on (where the packages were installed long ago). These tests ask apt,
//! in simulation, what `./dev.sh`'s install step would do from a recorded
//! fresh state (`fixtures/dpkg-status-fresh-debian12.gz`) and from this
//! machine's state, with exactly the arguments `dev.sh` computes
//! (`./dev.sh plan`, the same function its install step calls).
//!
//! They need Debian's package lists (`apt-get update`; `./dev.sh test` makes
//! sure they are there) and no root: simulation changes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A dpkg database directory holding the recorded fresh machine's status.
fn fresh_admindir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let gz = std::fs::File::open(repo().join("tests/fixtures/dpkg-status-fresh-debian12.gz"))
        .expect("open the fresh-machine dpkg status fixture");
    let mut status = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut status)
        .expect("decompress the fixture");
    std::fs::write(dir.path().join("status"), status).expect("write status");
    dir
}

fn require_apt_lists() {
    let lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    assert!(
        lists,
        "apt has no package lists; run `apt-get update` (./dev.sh test does)"
    );
}

/// `./dev.sh plan ROLE` against the dpkg database in `admindir`.
fn plan(role: &str, admindir: &Path) -> Vec<String> {
    let out = Command::new("bash")
        .arg(repo().join("dev.sh"))
        .args(["plan", role])
        .env("WARREN_DPKG_ADMINDIR", admindir)
        .output()
        .expect("run dev.sh plan");
    assert!(
        out.status.success(),
        "dev.sh plan {role} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 plan")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What `apt-get install` would do with `args` on the machine whose dpkg
/// database is `admindir`: (exit status success, stdout + stderr).
fn simulate(args: &[String], admindir: &Path) -> (bool, String) {
    let out = Command::new("apt-get")
        .args([
            "-s",
            "-q",
            "install",
            "--no-install-recommends",
            "--allow-downgrades",
        ])
        .arg("-o")
        .arg(format!(
            "Dir::State::status={}",
            admindir.join("status").display()
        ))
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("run apt-get -s");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The version dpkg records as installed for `pkg` in `admindir`, if any.
fn installed(pkg: &str, admindir: &Path) -> Option<String> {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args(["-W", "-f=${Status} ${Version}", pkg])
        .output()
        .expect("run dpkg-query");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    match (words.next(), words.nth(1), words.next()) {
        (Some("install"), Some("installed"), Some(version)) => Some(version.to_owned()),
        _ => None,
    }
}

/// Asserts that apt plans to leave every package of `plan` installed at the
/// version the plan pins: either it already is, or an `Inst` line installs it.
fn assert_plan_resolves(plan: &[String], admindir: &Path) {
    let (ok, output) = simulate(plan, admindir);
    assert!(ok, "apt cannot resolve dev.sh's plan {plan:?}:\n{output}");
    for arg in plan {
        let (pkg, version) = match arg.split_once('=') {
            Some((p, v)) => (p, Some(v)),
            None => (arg.as_str(), None),
        };
        let have = installed(pkg, admindir);
        let already = match (version, &have) {
            (Some(v), Some(h)) => v == h,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if already {
            continue;
        }
        let inst = output
            .lines()
            .find(|l| l.starts_with(&format!("Inst {pkg} ")))
            .unwrap_or_else(|| panic!("apt does not plan to install {arg}:\n{output}"));
        if let Some(v) = version {
            assert!(
                inst.contains(&format!("({v} ")),
                "apt plans another version than {arg}: {inst}"
            );
        }
    }
}

fn pinned<'a>(plan: &'a [String], pkg: &str) -> &'a str {
    plan.iter()
        .find_map(|a| a.strip_prefix(&format!("{pkg}=")))
        .unwrap_or_else(|| panic!("dev.sh's plan does not pin {pkg}: {plan:?}"))
}

#[test]
fn a_fresh_machine_with_a_newer_qemu_utils_gets_a_plan_apt_can_carry_out() {
    require_apt_lists();
    let fresh = fresh_admindir();
    let admindir = fresh.path();
    // The recorded state is the one that broke the set-up: a backported
    // qemu-utils, no qemu-system-x86, and apt refusing the unpinned request.
    let backported = installed("qemu-utils", admindir).expect("fixture has qemu-utils");
    assert!(
        backported.starts_with("1:10."),
        "fixture qemu-utils {backported}"
    );
    assert_eq!(installed("qemu-system-x86", admindir), None);
    let unpinned: Vec<String> = ["qemu-system-x86", "qemu-utils"].map(String::from).to_vec();
    let (ok, output) = simulate(&unpinned, admindir);
    assert!(
        !ok,
        "the unpinned request resolved; the fixture no longer shows the problem:\n{output}"
    );

    for role in ["up", "test"] {
        let plan = plan(role, admindir);
        let system = pinned(&plan, "qemu-system-x86");
        assert_eq!(
            pinned(&plan, "qemu-utils"),
            system,
            "qemu-utils must match qemu-system-x86"
        );
        assert_plan_resolves(&plan, admindir);
        let (_, output) = simulate(&plan, admindir);
        assert!(
            output
                .lines()
                .any(|l| l.starts_with(&format!("Inst qemu-utils [{backported}] ({system} "))),
            "apt does not plan to replace qemu-utils {backported} by {system}:\n{output}"
        );
    }
    let test_plan = plan("test", admindir);
    assert!(
        test_plan.iter().any(|p| p == "chromium"),
        "the test plan installs the browser"
    );
}

#[test]
fn this_machine_gets_a_plan_apt_can_carry_out() {
    require_apt_lists();
    let admindir = Path::new("/var/lib/dpkg");
    for role in ["up", "test"] {
        let plan = plan(role, admindir);
        assert_eq!(
            pinned(&plan, "qemu-utils"),
            pinned(&plan, "qemu-system-x86")
        );
        assert_plan_resolves(&plan, admindir);
    }
}
