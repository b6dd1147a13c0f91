//! Facts about the host that bound what a VM may ask for.

use std::path::{Path, PathBuf};

/// Host capacity relevant to sizing VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    /// Total RAM in MiB (MemTotal).
    pub memory_total_mib: u64,
    /// RAM available for new work in MiB (MemAvailable).
    pub memory_available_mib: u64,
    /// Online CPUs.
    pub cpus: u32,
}

impl HostCapacity {
    /// Reads /proc/meminfo and the online CPU count.
    pub fn probe() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |name: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib / 1024)
                .unwrap_or(0)
        };
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            memory_total_mib: field("MemTotal"),
            memory_available_mib: field("MemAvailable"),
            cpus,
        }
    }
}

/// Resident and proportional memory of a process, for density reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Proportional set size in bytes (shared pages divided by sharers).
    pub pss_bytes: u64,
}

/// Reads /proc/PID/smaps_rollup; `None` if the process is gone.
pub fn process_memory(pid: u32) -> Option<ProcessMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    Some(ProcessMemory {
        rss_bytes: field("Rss"),
        pss_bytes: field("Pss"),
    })
}

/// `/dev/shm` when it is a tmpfs: the default home of the RAM of running
/// cold-booted VMs, which a disk file system would write back while they
/// run (see `qemu::volatile` for the measurements).
pub fn default_ram_root() -> Option<PathBuf> {
    let root = PathBuf::from("/dev/shm");
    is_tmpfs(&root).then_some(root)
}

/// Whether `path` is on a tmpfs (host memory): where a configured RAM
/// directory must be.
pub fn is_tmpfs(path: &Path) -> bool {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    statfs(path).is_ok_and(|stat| stat.filesystem_type() == TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_this_host() {
        let host = HostCapacity::probe();
        assert!(host.memory_total_mib > 0);
        assert!(host.cpus >= 1);
    }

    #[test]
    fn reads_own_memory() {
        let mem = process_memory(std::process::id()).unwrap();
        assert!(mem.rss_bytes > 0);
        assert!(mem.pss_bytes > 0);
    }
}
