//! Whole-guest operations: identity and resources, the clock, syncing and
//! power-off.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime, clock_settime};
use tonic::Status;
use warren_proto::pb;

/// What the agent does when asked to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Development mode on a normal host: just exit the agent process.
    ExitProcess,
    /// Child of warren's PID 1: ask it (SIGTERM) to stop everything,
    /// unmount and power off.
    SignalInit,
    /// Under some other init: sync and power off directly.
    PowerOff,
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Builds the Info response.
pub fn info() -> pb::InfoResponse {
    let uname = nix::sys::utsname::uname().ok();
    let uptime = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (mem_total, mem_available) =
        parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    pb::InfoResponse {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: warren_proto::PROTOCOL_VERSION,
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel_release: uname
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        uptime_ms: millis(uptime),
        unix_time_ms: i64::try_from(now.as_millis()).unwrap_or(i64::MAX),
        mem_total_bytes: mem_total,
        mem_available_bytes: mem_available,
        cpus: u32::try_from(cpus.max(1)).unwrap_or(1),
    }
}

/// Sets the wall clock; returns how far it was off (guest - requested).
pub fn set_clock(unix_time_ns: i64) -> Result<i64, Status> {
    if unix_time_ns <= 0 {
        return Err(Status::invalid_argument(format!(
            "unix_time_ns must be a positive time since 1970, got {unix_time_ns}"
        )));
    }
    let before = clock_gettime(ClockId::CLOCK_REALTIME)
        .map_err(|e| Status::internal(format!("reading the guest clock failed: {e}")))?;
    let before_ns = before.tv_sec() as i128 * 1_000_000_000 + before.tv_nsec() as i128;
    let offset = clamp_i64(before_ns - unix_time_ns as i128);
    let target =
        nix::sys::time::TimeSpec::new(unix_time_ns / 1_000_000_000, unix_time_ns % 1_000_000_000);
    clock_settime(ClockId::CLOCK_REALTIME, target).map_err(|e| match e {
        nix::errno::Errno::EPERM => Status::permission_denied(
            "setting the guest clock failed: the agent lacks CAP_SYS_TIME",
        ),
        e => Status::invalid_argument(format!(
            "setting the guest clock to {unix_time_ns} ns failed: {e}"
        )),
    })?;
    Ok(offset)
}

/// Largest entropy buffer [`set_identity`] accepts.
pub const MAX_IDENTITY_ENTROPY: usize = 512;

/// Gives a clone its own identity: host name and a reseeded random
/// generator (its clock came with the link handshake).
pub fn set_identity(request: &pb::SetIdentityRequest) -> Result<(), Status> {
    if !crate::init::cmdline::valid_hostname(&request.hostname) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a valid host name: use 1 to 64 letters, digits, '-' or '.'",
            request.hostname
        )));
    }
    if request.entropy.len() > MAX_IDENTITY_ENTROPY {
        return Err(Status::invalid_argument(format!(
            "{} bytes of entropy given; at most {MAX_IDENTITY_ENTROPY} are taken",
            request.entropy.len()
        )));
    }
    nix::unistd::sethostname(&request.hostname).map_err(|e| {
        Status::internal(format!(
            "setting the host name to {} failed: {e}",
            request.hostname
        ))
    })?;
    if !request.entropy.is_empty() {
        reseed_random(&request.entropy).map_err(|e| {
            Status::internal(format!(
                "reseeding the guest's random generator failed: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Credits `entropy` to the kernel's input pool (RNDADDENTROPY) and makes
/// the generator reseed from it now (RNDRESEEDCRNG). Written with raw
/// ioctls: no crate wraps these two, and `write(2)` to /dev/urandom would
/// mix the bytes in without reseeding.
fn reseed_random(entropy: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203; // _IOW('R', 0x03, int[2])
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207; // _IO('R', 0x07)
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; u8 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    let bits = i32::try_from(entropy.len() * 8).unwrap_or(i32::MAX);
    let size = i32::try_from(entropy.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: `info` is a complete rand_pool_info whose buf_size matches
    // the bytes that follow; the kernel only reads it.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Flushes every file system; optionally drops the page cache.
pub fn sync(drop_caches: bool) -> Result<(), Status> {
    nix::unistd::sync();
    if drop_caches {
        std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| {
            Status::internal(format!(
                "dropping caches (writing /proc/sys/vm/drop_caches) failed: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Carries out a shutdown in `mode`. Does not return in the power-off
/// modes unless the request failed.
pub fn shutdown(mode: ShutdownMode) {
    match mode {
        ShutdownMode::ExitProcess => std::process::exit(0),
        ShutdownMode::SignalInit => {
            // SAFETY: plain kill(2) to PID 1, whose handler starts the
            // orderly shutdown.
            if unsafe { libc::kill(1, libc::SIGTERM) } == 0 {
                return;
            }
            power_off();
        }
        ShutdownMode::PowerOff => power_off(),
    }
}

/// Syncs and powers off; returns only if that failed.
fn power_off() {
    nix::unistd::sync();
    let error = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!(?error, "powering off failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:        2000 kB\nMemFree:  10 kB\nMemAvailable:     1500 kB\n";
        assert_eq!(parse_meminfo(text), (2000 * 1024, 1500 * 1024));
        assert_eq!(parse_meminfo("garbage"), (0, 0));
    }

    #[test]
    fn info_is_filled() {
        let info = info();
        assert!(info.cpus >= 1);
        assert!(info.mem_total_bytes > 0);
        assert!(info.uptime_ms > 0);
        assert!(!info.kernel_release.is_empty());
        assert_eq!(info.protocol_version, warren_proto::PROTOCOL_VERSION);
    }

    #[test]
    fn refuses_bad_clock_values() {
        assert_eq!(
            set_clock(-5).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(clamp_i64(i128::MAX), i64::MAX);
    }
}
