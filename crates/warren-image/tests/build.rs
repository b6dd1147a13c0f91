//! Builds real images and boots them under QEMU.
//!
//! Needs root, the Debian archive (apt) and `qemu-system-x86_64`, all of
//! which `./dev.sh test` provides; without them the tests fail and say so.
//!
//! - `tiny_kernel_and_initramfs_build_cache_and_boot`: kernel + initramfs +
//!   the busybox rootfs in a fresh data dir; checks the files, that a second
//!   `ensure` is a cache hit, the archive's contents, and boots the kernel
//!   with a test init that loads the modules and mounts the rootfs.
//! - `debian_image_builds_and_boots`: the mmdebstrap image (about a minute),
//!   cached in `$WARREN_IMAGE_CACHE` if set; checks its contents with `debugfs` and
//!   runs python3 from it in a VM.
//!
//! Run with `--nocapture` to see the timings of each step.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use warren_image::cpio::{self, CpioWriter};
use warren_image::{
    Image, ImageStore, KernelDetails, Manifest, PartKind, Progress, RootfsDetails, modules_in,
};

/// Records progress with timestamps (and prints it, for `--nocapture`).
struct Recorder {
    start: Instant,
    label: &'static str,
    steps: Mutex<Vec<(Duration, String)>>,
}

impl Recorder {
    fn new(label: &'static str) -> Self {
        Self {
            start: Instant::now(),
            label,
            steps: Mutex::new(Vec::new()),
        }
    }
    fn steps(&self) -> Vec<(Duration, String)> {
        self.steps.lock().unwrap().clone()
    }
}

impl Progress for Recorder {
    fn step(&self, message: &str) {
        let at = self.start.elapsed();
        eprintln!("[{} {:6.1}s] {message}", self.label, at.as_secs_f64());
        self.steps.lock().unwrap().push((at, message.to_owned()));
    }
    fn finished(&self, message: &str) {
        let at = self.start.elapsed();
        eprintln!("[{} {:6.1}s] done: {message}", self.label, at.as_secs_f64());
        self.steps
            .lock()
            .unwrap()
            .push((at, format!("done: {message}")));
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Building images needs root; the suite runs as root (`./dev.sh test`).
/// Not a skip: a non-root run fails and says why.
fn skip_unless_root(test: &str) -> bool {
    assert!(
        is_root(),
        "{test}: building images needs root; run the suite with ./dev.sh test as root"
    );
    false
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A static busybox from Debian's `busybox-static`: the dummy guest agent,
/// and the shell of the test init. Kept in cargo's per-target scratch
/// directory, so it is downloaded once, not per run.
fn busybox() -> &'static Path {
    static BUSYBOX: OnceLock<PathBuf> = OnceLock::new();
    BUSYBOX.get_or_init(|| {
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = scratch.join("warren-image-test-busybox");
        if path.is_file() {
            return path;
        }
        let dir = tempfile::tempdir_in(scratch).unwrap();
        let mut download = Command::new("apt-get");
        download.current_dir(dir.path()).args([
            "-o",
            "APT::Sandbox::User=root",
            "-q",
            "download",
            "busybox-static",
        ]);
        if !download.status().unwrap().success() {
            run(Command::new("apt-get").arg("update"));
            run(&mut download);
        }
        let deb = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("busybox-static .deb");
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.path().join("x")));
        // Rename into place: concurrent test binaries never see half a file.
        std::fs::rename(dir.path().join("x/bin/busybox"), &path).unwrap();
        path
    })
}

fn manifest<D: serde::de::DeserializeOwned>(file: &Path) -> Manifest<D> {
    let path = file.parent().unwrap().join("manifest.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

const EXPECTED_MODULE_FILES: [&str; 11] = [
    "virtio_ring.ko",
    "virtio.ko",
    "virtio_pci_legacy_dev.ko",
    "virtio_pci_modern_dev.ko",
    "virtio_pci.ko",
    "virtio_blk.ko",
    "virtio_console.ko",
    "virtio-rng.ko",
    "failover.ko",
    "net_failover.ko",
    "virtio_net.ko",
];

#[test]
fn tiny_kernel_and_initramfs_build_cache_and_boot() {
    if skip_unless_root("tiny_kernel_and_initramfs_build_cache_and_boot") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let agent = busybox();
    let store = ImageStore::open(data.path()).unwrap();

    let progress = Recorder::new("tiny");
    let first = store.ensure("tiny", agent, &progress).unwrap();
    let took = progress.start.elapsed();
    eprintln!("first ensure(tiny) took {:.1}s", took.as_secs_f64());
    let steps = progress.steps();
    assert!(
        steps.iter().any(|(_, s)| s.starts_with("fetching kernel")),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|(_, s)| s.contains("building the tiny image")),
        "{steps:?}"
    );

    // Files exist, in final directories under images/.
    for file in [&first.kernel, &first.initramfs, &first.rootfs] {
        assert!(file.is_file(), "{}", file.display());
        assert!(file.starts_with(store.root()));
        assert!(file.parent().unwrap().join("manifest.json").is_file());
    }
    assert!(
        first.kernel_version.ends_with("-cloud-amd64"),
        "{}",
        first.kernel_version
    );
    assert_eq!(first.key.len(), 16);
    let rootfs_meta = std::fs::metadata(&first.rootfs).unwrap();
    assert_eq!(rootfs_meta.permissions().mode() & 0o777, 0o444);
    assert_eq!(rootfs_meta.len(), 256 << 20);
    assert!(
        rootfs_meta.blocks() * 512 < rootfs_meta.len() / 2,
        "rootfs is sparse"
    );
    let kernel_manifest: Manifest<KernelDetails> = manifest(&first.kernel);
    assert!(
        kernel_manifest
            .details
            .package
            .starts_with("linux-image-6.")
    );
    assert_eq!(kernel_manifest.details.kernel_version, first.kernel_version);
    let rootfs_manifest: Manifest<RootfsDetails> = manifest(&first.rootfs);
    assert!(rootfs_manifest.details.packages[0].starts_with("busybox-static "));
    // Nothing but published parts (and the lock dir) in images/.
    let mut names: Vec<String> = std::fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[0], ".locks");

    // Second ensure: a cache hit, no step reported, nothing rebuilt.
    let stamps = |image: &Image| -> Vec<u64> {
        [&image.kernel, &image.initramfs, &image.rootfs]
            .into_iter()
            .map(|f| manifest::<serde_json::Value>(f).built_at_unix_ms)
            .collect()
    };
    let built_at = stamps(&first);
    let again = Recorder::new("tiny-again");
    let t = Instant::now();
    let second = store.ensure("tiny", agent, &again).unwrap();
    let hit = t.elapsed();
    eprintln!("second ensure(tiny) took {:.3}s", hit.as_secs_f64());
    assert_eq!(second, first);
    assert!(again.steps().is_empty(), "{:?}", again.steps());
    assert!(hit < Duration::from_secs(2), "cache hit took {hit:?}");
    assert_eq!(stamps(&second), built_at);
    // A fresh store (another process) sees the same.
    let reopened = ImageStore::open(data.path()).unwrap();
    assert_eq!(
        reopened
            .ensure("tiny", agent, &warren_image::NoProgress)
            .unwrap(),
        first
    );

    // The archive: /init is the agent, the modules are there, in order.
    let archive = std::fs::read(&first.initramfs).unwrap();
    let entries = cpio::read(&archive).unwrap();
    let init = entries.iter().find(|e| e.name == "init").expect("/init");
    assert_eq!(init.data, std::fs::read(agent).unwrap());
    assert_eq!(init.mode & 0o777, 0o755);
    let order = modules_in(&entries).unwrap();
    assert_eq!(order, EXPECTED_MODULE_FILES);
    for file in &order {
        let entry = entries
            .iter()
            .find(|e| e.name == format!("lib/modules/{file}"))
            .unwrap_or_else(|| panic!("{file} missing"));
        assert!(entry.data.starts_with(b"\x7fELF"));
    }

    // `warren images` view.
    let listed = store.list().unwrap();
    let kinds: Vec<_> = listed.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [PartKind::Kernel, PartKind::Initramfs, PartKind::Rootfs]
    );
    assert_eq!(listed[2].image.as_deref(), Some("tiny"));
    assert!(listed.iter().all(|p| p.allocated_bytes > 0));
    assert_eq!(listed[2].apparent_bytes, 256 << 20);

    // Boot it: the kernel loads the modules and mounts the tiny rootfs.
    let booted = boot(
        &first,
        &entries,
        "/bin/busybox ls /mnt/bin/busybox",
        Duration::from_secs(60),
    );
    assert!(booted.contains("/mnt/bin/busybox"), "{booted}");
    for module in [
        "virtio_blk",
        "virtio_pci",
        "virtio_console",
        "virtio_rng",
        "virtio_net",
    ] {
        assert!(
            booted.contains(&format!("MODULE {module}")),
            "{module} not loaded:\n{booted}"
        );
    }
}

#[test]
fn debian_image_builds_and_boots() {
    if skip_unless_root("debian_image_builds_and_boots") {
        return;
    }
    // Shares the suite's image cache ($WARREN_IMAGE_CACHE, set by
    // ./dev.sh test), so the Debian root filesystem is built once per
    // machine; a fresh temp cache otherwise.
    let temp = tempfile::tempdir().unwrap();
    let data = std::env::var_os("WARREN_IMAGE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().join("images"));
    let store = ImageStore::open_at(&data).unwrap();
    let progress = Recorder::new("debian");
    let image = store.ensure("debian", busybox(), &progress).unwrap();
    eprintln!(
        "ensure(debian) took {:.1}s (data dir {})",
        progress.start.elapsed().as_secs_f64(),
        data.display()
    );
    let meta = std::fs::metadata(&image.rootfs).unwrap();
    assert_eq!(meta.len(), 2 << 30);
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    let details: Manifest<RootfsDetails> = manifest(&image.rootfs);
    for package in ["python3 ", "bash ", "git ", "curl ", "iproute2 "] {
        assert!(
            details
                .details
                .packages
                .iter()
                .any(|p| p.starts_with(package)),
            "{package} not installed"
        );
    }

    // Contents, read from the image without mounting it.
    let debugfs = |request: &str| {
        String::from_utf8(run(Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(&image.rootfs)))
        .unwrap()
    };
    let passwd = debugfs("cat /etc/passwd");
    assert!(
        passwd.contains("user:x:1000:1000::/home/user:/bin/bash"),
        "{passwd}"
    );
    assert!(debugfs("stat /home/user").contains("User:  1000   Group:  1000"));
    assert_eq!(debugfs("cat /etc/machine-id"), "");
    assert_eq!(debugfs("cat /etc/hostname"), "warren\n");
    assert!(debugfs("cat /etc/hosts").contains("127.0.0.1\tlocalhost"));
    let lists = debugfs("ls /var/lib/apt/lists");
    assert!(!lists.contains("_Packages"), "apt lists left: {lists}");
    assert!(!debugfs("ls /var/cache/apt/archives").contains(".deb"));

    let archive = std::fs::read(&image.initramfs).unwrap();
    let entries = cpio::read(&archive).unwrap();
    let booted = boot(
        &image,
        &entries,
        "/bin/busybox chroot /mnt /usr/bin/python3 -c 'import sys; print(\"PYTHON\", sys.version_info[:2])'",
        Duration::from_secs(90),
    );
    assert!(booted.contains("PYTHON (3, 11)"), "{booted}");
}

const MARKER: &str = "WARREN-TEST-BOOT-OK";

/// Boots `image`'s kernel with a test initramfs: busybox as a shell script
/// `/init` that loads the modules listed in the real initramfs (from the
/// real initramfs's files), mounts the root disk at `/mnt`, runs `command`,
/// prints [`MARKER`] and powers off. Returns the serial console output.
fn boot(image: &Image, real: &[cpio::CpioEntry], command: &str, timeout: Duration) -> String {
    let qemu = qemu();
    let mut w = CpioWriter::new(Vec::new());
    for dir in [
        "dev",
        "proc",
        "sys",
        "mnt",
        "bin",
        "etc",
        "etc/warren",
        "lib",
        "lib/modules",
    ] {
        w.dir(dir, 0o755).unwrap();
    }
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    w.file("bin/busybox", 0o755, &std::fs::read(busybox()).unwrap())
        .unwrap();
    for entry in real
        .iter()
        .filter(|e| e.name.starts_with("lib/modules/") || e.name == "etc/warren/modules")
    {
        w.file(&entry.name, 0o644, &entry.data).unwrap();
    }
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
for m in $(/bin/busybox cat /etc/warren/modules); do
  /bin/busybox insmod /lib/modules/$m || echo "INSMOD FAILED $m"
done
while read name rest; do echo "MODULE $name"; done < /proc/modules
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do /bin/busybox sleep 0.05; i=$((i+1)); done
/bin/busybox mount -t ext4 -o ro /dev/vda /mnt || echo "MOUNT FAILED"
{command}
echo {MARKER}
/bin/busybox reboot -f
"#
    );
    w.file("init", 0o755, init.as_bytes()).unwrap();
    let initrd = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(initrd.path(), w.finish().unwrap()).unwrap();

    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "pc,accel=tcg", "-cpu", "max", "-m", "256"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(initrd.path())
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=d,format=raw,snapshot=on",
            image.rootfs.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=d"])
        .args(["-serial", "stdio", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let output = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let output = output.clone();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > timeout {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let marker_at = text.find(MARKER);
    eprintln!(
        "QEMU boot: exit {status:?} after {:.1}s, marker {}",
        started.elapsed().as_secs_f64(),
        if marker_at.is_some() {
            "seen"
        } else {
            "missing"
        }
    );
    assert!(
        marker_at.is_some(),
        "no {MARKER} within {timeout:?}; console:\n{text}\nqemu stderr:\n{stderr}"
    );
    assert!(!text.contains("INSMOD FAILED"), "{text}");
    assert!(!text.contains("MOUNT FAILED"), "{text}");
    text
}

/// `qemu-system-x86_64`, which `./dev.sh test` installs.
fn qemu() -> &'static str {
    const QEMU: &str = "qemu-system-x86_64";
    let present = Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        present,
        "{QEMU} is missing: run ./dev.sh test (it installs qemu-system-x86 and qemu-utils)"
    );
    QEMU
}
