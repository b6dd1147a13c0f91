//! The host's processes as `/proc` shows them: what a test or benchmark
//! checks to prove that nothing of a data directory is left running.

use std::path::Path;

/// A live process and its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProcess {
    /// Its pid.
    pub pid: u32,
    /// Its arguments, `argv[0]` first.
    pub argv: Vec<String>,
}

impl HostProcess {
    /// The program's file name (`argv[0]` without its directory), which
    /// tells a QEMU from a memory daemon.
    pub fn program(&self) -> &str {
        self.argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or("")
    }

    /// The command line as one string, arguments separated by spaces (for
    /// messages, and for matching as `ps` output would).
    pub fn cmdline(&self) -> String {
        self.argv.join(" ")
    }

    /// Whether some argument contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.argv.iter().any(|a| a.contains(needle))
    }

    /// The argument after `flag` (`-name X`), if any.
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        self.argv
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].as_str())
    }
}

/// Every live process but this one. Zombies and kernel threads (no
/// command line) are skipped: they hold nothing a test could leak.
pub fn host_processes() -> Vec<HostProcess> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        let argv = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(HostProcess { pid, argv });
    }
    found
}

/// Live processes (but this one) whose command line mentions `path`: the
/// VMs, memory daemons and tools of a data directory, found however they
/// were started, so a test sees what a leak would leave behind.
pub fn processes_mentioning(path: &Path) -> Vec<HostProcess> {
    let needle = path.to_string_lossy().into_owned();
    host_processes()
        .into_iter()
        .filter(|p| p.cmdline().contains(&needle))
        .collect()
}

/// Processes that map a file under `dir` (a QEMU its guest RAM, a memory
/// daemon its pages): what proves that nothing holds a paused sandbox's
/// memory any more.
pub fn processes_mapping(dir: &Path) -> Vec<HostProcess> {
    let needle = dir.to_string_lossy();
    host_processes()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{}/maps", p.pid))
                .is_ok_and(|maps| maps.contains(&*needle))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_mentioning_a_path_is_found_and_this_process_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        std::fs::write(&marker, b"").unwrap();
        // A process that runs until killed and names the path (`sleep 30
        // PATH` would exit at once on the bad interval, before it is seen).
        let mut child = std::process::Command::new("tail")
            .arg("-f")
            .arg(&marker)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The child may not have exec'd yet.
        let mut found = Vec::new();
        for _ in 0..100 {
            found = processes_mentioning(dir.path());
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id());
        assert_eq!(found[0].program(), "tail");
        assert_eq!(found[0].arg_after("-f"), Some(&*marker.to_string_lossy()));
        assert!(found[0].mentions("marker"));
        assert!(host_processes().iter().all(|p| p.pid != std::process::id()));
    }
}
