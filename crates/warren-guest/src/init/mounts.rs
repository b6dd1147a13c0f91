//! Mounts of the init stage: the kernel file systems, the root disk, the
//! switch into it, the run-time mounts of the sandbox, and the unmounts at
//! power-off.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

use super::InitError;
use crate::logging::{console, console_debug};

/// Where the root disk is mounted before the switch.
const NEW_ROOT: &str = "/newroot";

fn mkdir_all(path: &str, mode: u32) {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path);
}

fn do_mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| InitError::Sys {
        what: format!("mount {fstype} {source} on {target}"),
        errno,
    })
}

/// Mounts devtmpfs, proc and sysfs in the initramfs, and makes sure file
/// descriptors 0-2 are open on the console.
///
/// The fds matter: when the initramfs has no `/dev/console` node the kernel
/// starts init with 0-2 closed, and the next files opened (the virtio port,
/// a child's pipe) would silently become "stdin" and "stderr".
pub fn mount_early() -> Result<(), InitError> {
    for dir in ["/dev", "/proc", "/sys"] {
        mkdir_all(dir, 0o755);
    }
    match do_mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ) {
        // The kernel may have mounted it already (CONFIG_DEVTMPFS_MOUNT).
        Err(InitError::Sys {
            errno: Errno::EBUSY,
            ..
        }) => {}
        other => other?,
    }
    fix_stdio();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount("proc", "/proc", "proc", flags, None)?;
    do_mount("sysfs", "/sys", "sysfs", flags, None)?;
    Ok(())
}

/// Opens `/dev/console` on every one of fds 0-2 that is closed.
fn fix_stdio() {
    let closed: Vec<i32> = (0..3)
        .filter(|fd| nix::fcntl::fcntl(unsafe_borrow(*fd), nix::fcntl::F_GETFD).is_err())
        .collect();
    if closed.is_empty() {
        return;
    }
    let path = CString::new("/dev/console").unwrap_or_default();
    for fd in closed {
        // SAFETY: plain open(2) of a constant path; the result is checked.
        let opened = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if opened < 0 {
            return;
        }
        if opened != fd {
            // SAFETY: dup2 onto a closed descriptor number we own, then
            // close the temporary one.
            unsafe {
                libc::dup2(opened, fd);
                libc::close(opened);
            }
        }
    }
}

/// Borrows a raw fd number for a nix call that only inspects it.
fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used with fcntl(F_GETFD), which is harmless on any
    // number, open or not.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Waits until `device` exists as a block device: devtmpfs creates nodes
/// asynchronously after the driver probed the disk.
pub fn wait_for_block_device(device: &str, timeout: Duration) -> Result<(), InitError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(meta) = std::fs::metadata(device)
            && meta.file_type().is_block_device()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(InitError::DeviceTimeout {
                device: device.to_string(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mounts the root disk read-write at [`NEW_ROOT`].
pub fn mount_root(device: &str, fstype: &str) -> Result<(), InitError> {
    mkdir_all(NEW_ROOT, 0o755);
    do_mount(device, NEW_ROOT, fstype, MsFlags::MS_NOATIME, None)
}

/// Switches into the root disk without exec: moves the kernel file systems
/// along, frees the initramfs, and makes the disk `/` of this very process
/// (which keeps running as PID 1, so the root image needs no warren files).
pub fn switch_root() -> Result<(), InitError> {
    let sys = |what: &str| {
        let what = what.to_string();
        move |errno| InitError::Sys { what, errno }
    };
    std::env::set_current_dir(NEW_ROOT).map_err(|e| InitError::Sys {
        what: format!("chdir {NEW_ROOT}"),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        mkdir_all(&target, 0o755);
        mount(
            Some(dir),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys(&format!("move {dir} to {target}")))?;
    }
    free_initramfs();
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move the new root onto /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// Deletes the initramfs contents (its memory is only freed that way), as
/// `switch_root(8)` does. Only touches the initramfs itself: anything on
/// another device (the new root, moved mounts) is skipped.
fn free_initramfs() {
    let Ok(root_meta) = std::fs::symlink_metadata("/") else {
        return;
    };
    // Only ever on ramfs/tmpfs: a bug here must not wipe a real disk.
    let Ok(fs) = nix::sys::statfs::statfs("/") else {
        return;
    };
    /// `RAMFS_MAGIC` of linux/magic.h (not exported by nix).
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let kind = fs.filesystem_type();
    if kind.0 as u64 != RAMFS_MAGIC && kind != nix::sys::statfs::TMPFS_MAGIC {
        return;
    }
    delete_tree(Path::new("/"), root_meta.dev());
}

/// Removes everything under `dir` that is on device `dev`.
fn delete_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_tree(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Mounts what programs in the sandbox expect (ptys, shared memory, /tmp,
/// /run, cgroups). Failures are logged, not fatal: a sandbox without
/// cgroups is still useful.
pub fn mount_runtime() {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mkdir_all("/dev/pts", 0o755);
    if let Err(error) = do_mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ) {
        console(&format!("{error}; terminals (PTY) will not work"));
    }
    if std::fs::symlink_metadata("/dev/ptmx").is_err() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
    for (target, mode, flags) in [
        ("/dev/shm", "1777", nosuid_nodev),
        ("/tmp", "1777", nosuid_nodev),
        ("/run", "0755", nosuid_nodev | MsFlags::MS_NOEXEC),
    ] {
        mkdir_all(target, 0o755);
        // Huge pages for files that grow past 2 MiB (uploads with a known
        // size are preallocated, so they qualify from the first byte):
        // under emulation, allocating 4 KiB pages one by one made writing a
        // fresh 64 MiB file ~4x slower. Small files keep small pages.
        // Kernels without transparent huge pages refuse the option.
        let huge = format!("mode={mode},huge=within_size");
        let plain = format!("mode={mode}");
        if let Err(error) = do_mount("tmpfs", target, "tmpfs", flags, Some(&huge))
            .or_else(|_| do_mount("tmpfs", target, "tmpfs", flags, Some(&plain)))
        {
            console(&error.to_string());
        }
    }
    if Path::new("/sys/fs/cgroup").is_dir()
        && let Err(error) = do_mount(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        )
    {
        console_debug(&format!("{error} (cgroups unavailable)"));
    }
    mkdir_all("/run/warren", 0o755);
    // Processes started by the agent inherit this.
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
}

/// Unmounts what can be unmounted and remounts `/` read-only, so the root
/// disk is clean when the VM powers off. Best effort: every failure is only
/// logged in debug mode.
pub fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let keep = ["/", "/proc", "/sys", "/dev"];
    let targets: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(warren_mountinfo::unescape)
        .filter(|target| !keep.contains(&target.as_str()))
        .collect();
    for target in targets.iter().rev() {
        if let Err(errno) = umount2(target.as_str(), MntFlags::MNT_DETACH) {
            console_debug(&format!("unmount {target}: {errno}"));
        }
    }
    if let Err(errno) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        console(&format!("remounting / read-only failed: {errno}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn fd_helpers_do_not_touch_open_fds() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let raw = file.as_raw_fd();
        assert!(nix::fcntl::fcntl(unsafe_borrow(raw), nix::fcntl::F_GETFD).is_ok());
        assert!(nix::fcntl::fcntl(unsafe_borrow(9999), nix::fcntl::F_GETFD).is_err());
    }
}
