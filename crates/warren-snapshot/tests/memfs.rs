//! The `warren-memfs` daemon end to end: real FUSE mount, real files, the
//! memory file mapped MAP_SHARED as QEMU does.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{BS, chain_content, pattern, with_blocks, write_sparse};
use warren_snapshot::{
    BLOCK_SIZE, BlockMap, BlockSource, DirtyReport, Generation, SnapshotHeader, apply_dirty,
    dirty_report_path, full_generation, read_dirty_report, write_header_atomic,
};

const BIN: &str = env!("CARGO_BIN_EXE_warren-memfs");

fn fuse_available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ok = Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0;
    if !ok {
        eprintln!("skipping: needs root and /dev/fuse");
    }
    ok
}

/// A running daemon; dropping it detaches the mount and kills it.
struct Daemon {
    child: Option<Child>,
    mount: PathBuf,
    stderr: Arc<Mutex<String>>,
    /// The thread copying the daemon's stderr; joined once the daemon has
    /// exited so that its last lines (the error it exits with) are in
    /// `stderr` before a test reads it.
    stderr_reader: Option<JoinHandle<()>>,
}

/// The daemon's stderr as it accumulates, and the thread that reads it to EOF.
type StderrLog = (Arc<Mutex<String>>, JoinHandle<()>);

impl Daemon {
    fn spawn(args: &[&std::ffi::OsStr]) -> (Child, mpsc::Receiver<String>, StderrLog) {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (child, rx, (log, reader))
    }

    fn start(
        mount: &Path,
        work: &Path,
        size: u64,
        snapshot: Option<&Path>,
        threads: usize,
    ) -> Self {
        std::fs::create_dir_all(mount).unwrap();
        let size_s = size.to_string();
        let threads_s = threads.to_string();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--mount".as_ref(),
            mount.as_os_str(),
            "--work".as_ref(),
            work.as_os_str(),
            "--size".as_ref(),
            size_s.as_ref(),
            "--threads".as_ref(),
            threads_s.as_ref(),
        ];
        if let Some(s) = snapshot {
            args.push("--snapshot".as_ref());
            args.push(s.as_os_str());
        }
        let (child, rx, (stderr, reader)) = Self::spawn(&args);
        let mut d = Daemon {
            child: Some(child),
            mount: mount.to_path_buf(),
            stderr,
            stderr_reader: Some(reader),
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line == "ready" => d,
            other => {
                let status = d.wait(Duration::from_secs(2));
                panic!(
                    "daemon not ready: {other:?}, status {status:?}, stderr: {}",
                    d.stderr()
                );
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                if let Some(reader) = self.stderr_reader.take() {
                    reader.join().unwrap();
                }
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts (as `fusermount3 -u` would; these tests run as root),
    /// then the exit status. A mount can be busy for a moment after its
    /// last descriptor closed (a child another test is forking holds a
    /// copy until its exec closes it), so EBUSY is retried for a while.
    fn unmount(&mut self) -> ExitStatus {
        let path = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes()).unwrap();
        let started = Instant::now();
        loop {
            // SAFETY: umount2 reads a NUL-terminated path we own.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let error = std::io::Error::last_os_error();
            assert!(
                error.raw_os_error() == Some(libc::EBUSY)
                    && started.elapsed() < Duration::from_secs(10),
                "unmounting {}: {error}",
                self.mount.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = self.wait(Duration::from_secs(30));
        status.unwrap_or_else(|| panic!("daemon did not exit; stderr: {}", self.stderr()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mount)
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The memory file mapped MAP_SHARED read-write, as QEMU maps guest RAM.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    _file: File,
}

impl Mapping {
    fn new(path: &Path, len: usize) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        // SAFETY: mapping a file we own for its whole length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        Mapping {
            ptr: ptr.cast(),
            len,
            _file: file,
        }
    }

    fn mem(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is valid for `len` bytes until drop.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn msync(&self) {
        // SAFETY: syncing our own mapping.
        let rc = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A 16 MiB snapshot of two generations in `dir/snap`.
fn two_generation_snapshot(dir: &Path) -> (PathBuf, SnapshotHeader) {
    let blocks = 4096u64;
    let mem = blocks * BLOCK_SIZE;
    let snap = dir.join("snap");
    std::fs::create_dir(&snap).unwrap();
    let data0: Vec<u64> = (0..1000).filter(|b| b % 3 != 0).collect();
    write_sparse(
        &snap.join("gen-0"),
        mem,
        &data0,
        &(1000..1100).collect::<Vec<_>>(),
        0,
    );
    let map0 = full_generation(&snap.join("gen-0"), mem, 0).unwrap();
    let data1: Vec<u64> = (50..80).chain(2000..2010).collect();
    write_sparse(&snap.join("gen-1"), mem, &data1, &[], 1);
    let mut map = with_blocks(&map0, &data1, BlockSource::Gen(1));
    map.set_range(100, 10, BlockSource::Zero).unwrap();
    let header = SnapshotHeader {
        memory_bytes: mem,
        generations: vec![
            Generation::sparse(0, "gen-0"),
            Generation::sparse(1, "gen-1"),
        ],
        map,
        device_state: "device".into(),
        disk: "disk".into(),
        created_unix_ms: 1,
        meta: serde_json::Value::Null,
    };
    write_header_atomic(&snap, &header).unwrap();
    (snap, header)
}

fn block_range(b: u64, n: u64) -> std::ops::Range<usize> {
    (b * BLOCK_SIZE) as usize..((b + n) * BLOCK_SIZE) as usize
}

#[test]
fn serves_the_chain_and_reports_dirty_blocks() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (snap, header) = two_generation_snapshot(dir.path());
    let size = header.memory_bytes;
    let mut model = chain_content(&snap, &header);
    let mount = dir.path().join("mnt");
    let work = dir.path().join("work");
    let mut daemon = Daemon::start(&mount, &work, size, Some(&snap), 2);

    let file_path = mount.join("memory");
    let meta = std::fs::metadata(&file_path).unwrap();
    assert_eq!(meta.len(), size);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(&mount)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["memory"]);

    let mut map = Mapping::new(&file_path, size as usize);
    assert!(
        map.mem() == &model[..],
        "mapped memory differs from the chain"
    );

    let fd = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file_path)
        .unwrap();
    // Truncating to the same size is accepted, to another size refused.
    fd.set_len(size).unwrap();
    assert!(fd.set_len(size + BLOCK_SIZE).is_err());
    // An unaligned read straddling a generation boundary.
    let mut small = vec![0u8; 9000];
    fd.read_exact_at(&mut small, 49 * BLOCK_SIZE + 10).unwrap();
    let at = (49 * BLOCK_SIZE + 10) as usize;
    assert_eq!(small, model[at..at + 9000]);

    // Writes through the mapping (whole pages reach the daemon).
    let p3000 = pattern(3000, 9);
    map.mem()[block_range(3000, 1)].copy_from_slice(&p3000);
    model[block_range(3000, 1)].copy_from_slice(&p3000);
    map.mem()[block_range(200, 3)].fill(0); // gen-0 data zeroed
    model[block_range(200, 3)].fill(0);
    let p2005 = pattern(2005, 9);
    map.mem()[block_range(2005, 1)].copy_from_slice(&p2005);
    model[block_range(2005, 1)].copy_from_slice(&p2005);

    // Writes through the fd: unaligned (read-modify-write) and zeros.
    let at = 60 * BLOCK_SIZE + 1000;
    fd.write_all_at(&[0xAB; 100], at).unwrap();
    model[at as usize..at as usize + 100].fill(0xAB);
    let at = 3500 * BLOCK_SIZE + 2000;
    let span: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
    fd.write_all_at(&span, at).unwrap();
    model[at as usize..at as usize + 5000].copy_from_slice(&span);
    fd.write_all_at(&[0u8; 2 * BS], 10 * BLOCK_SIZE).unwrap();
    model[block_range(10, 2)].fill(0);
    fd.write_all_at(&[0u8; 10], 3900 * BLOCK_SIZE + 5).unwrap(); // zero stays zero
    fd.write_all_at(&pattern(3100, 9), 3100 * BLOCK_SIZE)
        .unwrap();
    fd.write_all_at(&[0u8; BS], 3100 * BLOCK_SIZE).unwrap(); // data, then zero
    // QEMU discards RAM by punching holes in the file.
    let (at, end) = (301 * BLOCK_SIZE + 100, 310 * BLOCK_SIZE);
    // SAFETY: fallocate on a descriptor we own, with a range inside the file.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            (end - at) as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    model[at as usize..end as usize].fill(0);
    map.msync();
    fd.sync_all().unwrap();
    assert!(map.mem() == &model[..], "memory differs after writes");
    drop(map);

    // Drop the page cache so the next read comes from the daemon.
    // SAFETY: an advice call on a descriptor we own; it touches no memory.
    let rc = unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    let mut all = vec![0u8; size as usize];
    fd.read_exact_at(&mut all, 0).unwrap();
    assert!(all == model, "daemon reads differ after writes");
    drop(fd);

    let status = daemon.unmount();
    assert!(status.success(), "{status}");
    let report = read_dirty_report(&dirty_report_path(&work)).unwrap();
    assert_eq!(
        report,
        DirtyReport {
            write_errors: 0,
            first_error: None,
            data_runs: vec![(60, 1), (301, 1), (2005, 1), (3000, 1), (3500, 2)],
            zero_runs: vec![(10, 2), (200, 3), (302, 8), (3100, 1), (3900, 1)],
        }
    );

    // The work file becomes generation 2 of the next snapshot.
    let next = apply_dirty(&header.map, &report, 2).unwrap();
    let mut gens = header.generations.clone();
    gens.push(Generation::sparse(2, work.to_str().unwrap()));
    let header2 = SnapshotHeader {
        generations: gens,
        map: next,
        ..header.clone()
    };
    assert!(chain_content(&snap, &header2) == model, "new chain differs");
    // Only dirtied data blocks take space in the work file.
    let used = warren_snapshot::allocated_bytes(&work);
    assert!(used <= 6 * BLOCK_SIZE + 64 * 1024, "{used}");
}

#[test]
fn without_snapshot_memory_is_zero_and_sigterm_writes_the_report() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt");
    let work = dir.path().join("work");
    std::fs::write(&work, vec![7u8; 3 * BS]).unwrap(); // stale garbage
    std::fs::write(dirty_report_path(&work), b"stale").unwrap();
    let size = 1024 * BLOCK_SIZE;
    let mut daemon = Daemon::start(&mount, &work, size, None, 1);
    assert!(!dirty_report_path(&work).exists());
    assert_eq!(std::fs::metadata(&work).unwrap().len(), size);

    let mut map = Mapping::new(&mount.join("memory"), size as usize);
    assert!(map.mem().iter().all(|&b| b == 0));
    map.mem()[block_range(7, 1)].fill(0x55);
    map.msync();
    drop(map);

    let pid = daemon.child.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = daemon
        .wait(Duration::from_secs(30))
        .expect("daemon exits on SIGTERM");
    assert!(status.success(), "{status}: {}", daemon.stderr());
    let report = read_dirty_report(&dirty_report_path(&work)).unwrap();
    assert_eq!(report.data_runs, vec![(7, 1)]);
    assert!(report.zero_runs.is_empty());
    let mut buf = vec![0u8; BS];
    File::open(&work)
        .unwrap()
        .read_exact_at(&mut buf, 7 * BLOCK_SIZE)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0x55));
    // Unmounted: the mount point is an empty directory again.
    assert_eq!(std::fs::read_dir(&mount).unwrap().count(), 0);
}

fn expect_startup_failure(args: &[&std::ffi::OsStr]) -> String {
    let (mut child, rx, (log, reader)) = Daemon::spawn(args);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "daemon kept running"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    assert!(rx.try_iter().all(|l| l != "ready"));
    reader.join().unwrap();
    log.lock().unwrap().clone()
}

#[test]
fn broken_snapshots_fail_at_start_with_a_clear_error() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (snap, header) = two_generation_snapshot(dir.path());
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let work = dir.path().join("work");
    let size = header.memory_bytes.to_string();
    let args = |size: &str| -> Vec<std::ffi::OsString> {
        vec![
            "--mount".into(),
            mount.clone().into(),
            "--work".into(),
            work.clone().into(),
            "--size".into(),
            size.into(),
            "--snapshot".into(),
            snap.clone().into(),
        ]
    };
    let run = |a: Vec<std::ffi::OsString>| {
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        expect_startup_failure(&refs)
    };

    let err = run(args(&(header.memory_bytes * 2).to_string()));
    assert!(err.contains("--size"), "{err}");

    std::fs::remove_file(snap.join("gen-1")).unwrap();
    let err = run(args(&size));
    assert!(err.contains("gen-1"), "{err}");
    assert!(err.contains("No such file"), "{err}");

    std::fs::remove_file(snap.join("SNAPSHOT")).unwrap();
    let err = run(args(&size));
    assert!(err.contains("SNAPSHOT"), "{err}");
    // Nothing is left mounted.
    assert_eq!(std::fs::read_dir(&mount).unwrap().count(), 0);
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_keeps_memory_right_and_is_reported() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(small) = Tmpfs::mount(&dir.path().join("small"), "256k") else {
        eprintln!("skipping: cannot mount a tmpfs");
        return;
    };
    let mount = dir.path().join("mnt");
    let work = small.0.join("work");
    let size = 1024 * BLOCK_SIZE;
    let data: Vec<u8> = (0..256).flat_map(|b| pattern(b, 5)).collect(); // 1 MiB

    for fix_it in [false, true] {
        let mut daemon = Daemon::start(&mount, &work, size, None, 1);
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mount.join("memory"))
            .unwrap();
        // The daemon keeps what it cannot store, so the write succeeds;
        // fsync is where the full disk shows.
        fd.write_all_at(&data, 0).unwrap();
        let err = fd.sync_all().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        // What was written is what reads back, from the daemon's memory.
        // SAFETY: an advice call on a descriptor we own; it touches no memory.
        let rc = unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let mut back = vec![0u8; data.len()];
        fd.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data, "pending blocks read back wrong");
        if fix_it {
            small.resize("8m");
            fd.sync_all().unwrap();
        }
        drop(fd);
        let status = daemon.unmount();
        if !fix_it {
            // Still full: the work file is incomplete and the report itself
            // cannot be written, which the daemon must say.
            assert!(!status.success());
            let err = daemon.stderr();
            assert!(
                err.contains("dirty report") && err.contains("No space left"),
                "{err}"
            );
            assert!(!dirty_report_path(&work).exists());
            continue;
        }
        assert!(status.success(), "{}", daemon.stderr());
        let report = read_dirty_report(&dirty_report_path(&work)).unwrap();
        let first = report.first_error.clone().unwrap_or_default();
        assert!(first.contains("No space left"), "{first}");
        assert_eq!(report.write_errors, 0);
        assert_eq!(report.data_runs, vec![(0, 256)]);
        apply_dirty(&BlockMap::new_zero(1024), &report, 0).unwrap();
        let mut stored = vec![0u8; data.len()];
        File::open(&work)
            .unwrap()
            .read_exact_at(&mut stored, 0)
            .unwrap();
        assert!(stored == data);
    }
}

/// Throughput through the mapping, as QEMU would see it. Run with
/// `cargo test -p warren-snapshot --release --test memfs -- --ignored --nocapture`;
/// `MEMFS_MIB` and `MEMFS_THREADS` change the size and worker count.
#[test]
#[ignore]
fn throughput() {
    if !fuse_available() {
        return;
    }
    let mib: u64 = std::env::var("MEMFS_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let threads: usize = std::env::var("MEMFS_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let size = mib << 20;
    let blocks = size / BLOCK_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    {
        let f = File::create(snap.join("gen-0")).unwrap();
        let chunk: Vec<u8> = (0..256).flat_map(|b| pattern(b, 0)).collect();
        for off in (0..size).step_by(chunk.len()) {
            f.write_all_at(&chunk, off).unwrap();
        }
        f.sync_all().unwrap();
    }
    let header = SnapshotHeader {
        memory_bytes: size,
        generations: vec![Generation::sparse(0, "gen-0")],
        map: BlockMap::new_uniform(blocks, BlockSource::Gen(0)),
        device_state: String::new(),
        disk: String::new(),
        created_unix_ms: 0,
        meta: serde_json::Value::Null,
    };
    write_header_atomic(&snap, &header).unwrap();
    // Warm the host page cache of the generation file, to time FUSE only.
    let _ = std::fs::read(snap.join("gen-0")).unwrap();

    let mount = dir.path().join("mnt");
    let work = dir.path().join("work");
    let mut daemon = Daemon::start(&mount, &work, size, Some(&snap), threads);
    if let Ok(tune) = std::env::var("MEMFS_BDI") {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&mount).unwrap().dev();
        let bdi = format!("/sys/class/bdi/{}:{}", libc::major(dev), libc::minor(dev));
        for kv in tune.split(',') {
            let (k, v) = kv.split_once('=').unwrap();
            std::fs::write(format!("{bdi}/{k}"), v).unwrap();
        }
    }
    let mut map = Mapping::new(&mount.join("memory"), size as usize);

    let t = Instant::now();
    let mut sum = 0u64;
    for page in map.mem().chunks(BS) {
        sum = sum.wrapping_add(u64::from(page[0]));
    }
    let read = t.elapsed();
    std::hint::black_box(sum);

    let t = Instant::now();
    for (i, page) in map.mem().chunks_mut(BS).enumerate() {
        page[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    }
    let dirty = t.elapsed();
    map.msync();
    let write = t.elapsed();
    drop(map);
    let t = Instant::now();
    assert!(daemon.unmount().success());
    let finish = t.elapsed();
    let report = read_dirty_report(&dirty_report_path(&work)).unwrap();
    assert_eq!(report.data_runs, vec![(0, blocks)]);
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "memfs {mib} MiB, {threads} thread(s): fault-in read {read:?} ({:.0} MiB/s); \
         dirty every page {dirty:?}, +msync {write:?} ({:.0} MiB/s); unmount+report {finish:?}",
        rate(read),
        rate(write)
    );
}
