//! The host side of a build: finding tools, checking privileges, running
//! commands with their stderr streamed to progress, and apt.
//!
//! Every external command goes through [`run`], so every failure carries the
//! command line and the tail of its stderr ([`CommandError`]).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::error::{CommandError, ImageError};
use crate::progress::Progress;

/// A host program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub(crate) name: &'static str,
    pub(crate) package: &'static str,
}

impl Tool {
    pub(crate) const fn new(name: &'static str, package: &'static str) -> Self {
        Self { name, package }
    }
}

pub(crate) const APT_GET: Tool = Tool::new("apt-get", "apt");
pub(crate) const APT_CACHE: Tool = Tool::new("apt-cache", "apt");
pub(crate) const DPKG_DEB: Tool = Tool::new("dpkg-deb", "dpkg");
pub(crate) const MKFS_EXT4: Tool = Tool::new("mkfs.ext4", "e2fsprogs");
pub(crate) const MMDEBSTRAP: Tool = Tool::new("mmdebstrap", "mmdebstrap");

/// Directories searched after `$PATH`: a non-root user's `$PATH` often lacks
/// the sbin directories where `mkfs.ext4` lives.
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// How many stderr lines a [`CommandError`] keeps.
const STDERR_TAIL_LINES: usize = 25;

/// Finds `tool`, or says which package to install.
pub(crate) fn find_tool(tool: Tool) -> Result<PathBuf, ImageError> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool.name))
        .find(|candidate| is_executable(candidate))
        .ok_or(ImageError::MissingTool {
            tool: tool.name,
            package: tool.package,
        })
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the process runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with [`ImageError::NotRoot`] unless running as root.
pub(crate) fn require_root(what: &str, why: &'static str) -> Result<(), ImageError> {
    if is_root() {
        Ok(())
    } else {
        Err(ImageError::NotRoot {
            what: what.to_owned(),
            why,
        })
    }
}

/// A command for `tool` with a stable, parseable environment.
///
/// The child gets SIGTERM if the thread that runs it dies ([`run`] waits on
/// the calling thread, so that is this process dying): an orphaned
/// `mmdebstrap` would go on writing into a staging directory nobody will
/// publish, while SIGTERM lets it unmount what it mounted there.
pub(crate) fn command(tool: Tool) -> Result<Command, ImageError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(find_tool(tool)?);
    cmd.env("LC_ALL", "C.UTF-8")
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec; it only calls prctl,
    // which is async-signal-safe, and touches no memory shared with the
    // parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(cmd)
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Runs `cmd` to completion and returns its stdout. Each stderr line goes to
/// `progress.detail` (if given) as it arrives; on failure the error carries
/// the last [`STDERR_TAIL_LINES`] of them.
pub(crate) fn run(
    cmd: &mut Command,
    progress: Option<&dyn Progress>,
) -> Result<Vec<u8>, CommandError> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CommandError {
            command: command.clone(),
            status: format!("could not start: {e}"),
            stderr_tail: String::new(),
        })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stdout_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut line = Vec::new();
    loop {
        line.clear();
        match stderr.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if let Some(progress) = progress {
                    progress.detail(&text);
                }
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(text);
            }
        }
    }
    let status = child.wait().map_err(|e| CommandError {
        command: command.clone(),
        status: format!("could not wait for it: {e}"),
        stderr_tail: String::new(),
    })?;
    let stdout = stdout_reader
        .join()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(CommandError {
            command,
            status: status.to_string(),
            stderr_tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        })
    }
}

/// Whether this process already ran `apt-get update` (it runs at most once).
static APT_UPDATED: Mutex<bool> = Mutex::new(false);

/// Whether this process has run `apt-get update`.
pub(crate) fn apt_was_updated() -> bool {
    *APT_UPDATED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `apt-get update` unless this process already did. Returns whether it
/// ran now: callers retry their apt query only if something changed.
pub(crate) fn apt_update_once(progress: &dyn Progress) -> Result<bool, ImageError> {
    let mut updated = APT_UPDATED.lock().unwrap_or_else(|e| e.into_inner());
    if *updated {
        return Ok(false);
    }
    require_root(
        "the apt package lists",
        "`apt-get update` refreshes the host's package lists",
    )?;
    progress.step("updating apt package lists (apt-get update)");
    run(command(APT_GET)?.arg("update"), Some(progress))?;
    *updated = true;
    Ok(true)
}

/// Runs an apt query; if it fails, refreshes the package lists once and
/// retries, so a fresh machine without lists just works.
pub(crate) fn with_apt_retry<T>(
    progress: &dyn Progress,
    mut query: impl FnMut() -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    match query() {
        Ok(v) => Ok(v),
        Err(first) => {
            tracing::debug!(error = %first, "apt query failed; updating lists and retrying");
            match apt_update_once(progress) {
                Ok(true) => query(),
                Ok(false) => Err(first),
                // Not root, or no network: the query's own error says
                // more about what the user wanted.
                Err(update) => {
                    tracing::warn!(error = %update, "apt-get update failed");
                    Err(first)
                }
            }
        }
    }
}

/// The package `apt-cache depends <metapackage>` lists first among its
/// `Depends:` whose name starts with `prefix` (e.g. the versioned
/// `linux-image-6.1.0-NN-cloud-amd64` of `linux-image-cloud-amd64`).
pub(crate) fn apt_depends(metapackage: &str, prefix: &str) -> Result<String, ImageError> {
    let out = run(command(APT_CACHE)?.arg("depends").arg(metapackage), None)?;
    parse_depends(&String::from_utf8_lossy(&out), prefix).ok_or_else(|| ImageError::AptResolve {
        package: metapackage.to_owned(),
        reason: format!("`apt-cache depends {metapackage}` lists no dependency named {prefix}*"),
    })
}

fn parse_depends(out: &str, prefix: &str) -> Option<String> {
    out.lines()
        .filter_map(|line| line.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|name| name.starts_with(prefix) && !name.starts_with('<'))
        .map(str::to_owned)
}

/// The version apt would install for `package` (its candidate).
pub(crate) fn apt_candidate(package: &str) -> Result<String, ImageError> {
    let out = run(command(APT_CACHE)?.arg("policy").arg(package), None)?;
    parse_candidate(&String::from_utf8_lossy(&out)).ok_or_else(|| ImageError::AptResolve {
        package: package.to_owned(),
        reason: "apt knows no installable version of it (`apt-cache policy` shows no candidate)"
            .to_owned(),
    })
}

fn parse_candidate(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .find(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_owned)
}

/// Downloads `package=version` into `dir` and returns the `.deb` path.
pub(crate) fn apt_download(
    package: &str,
    version: &str,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, ImageError> {
    let spec = format!("{package}={version}");
    let download = || -> Result<(), ImageError> {
        run(
            command(APT_GET)?
                .current_dir(dir)
                // apt drops to the `_apt` user for downloads, which cannot
                // write into a root-owned 0700 staging dir.
                .args(["-o", "APT::Sandbox::User=root", "-q", "download"])
                .arg(&spec),
            Some(progress),
        )?;
        Ok(())
    };
    with_apt_retry(progress, download)?;
    let prefix = format!("{package}_");
    let entries = std::fs::read_dir(dir).map_err(ImageError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(ImageError::io("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(entry.path());
        }
    }
    Err(ImageError::AptResolve {
        package: spec,
        reason: format!(
            "apt-get download left no {prefix}*.deb in {}",
            dir.display()
        ),
    })
}

/// Unpacks the files of a `.deb` into `dir`.
pub(crate) fn dpkg_extract(deb: &Path, dir: &Path) -> Result<(), ImageError> {
    run(command(DPKG_DEB)?.arg("-x").arg(deb).arg(dir), None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let alt = "x\n |Depends: <virtual-thing>\n  Depends: linux-image-6.1.0-1-cloud-amd64\n";
        assert_eq!(
            parse_depends(alt, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-1-cloud-amd64")
        );
        assert_eq!(
            parse_depends("E: No packages found\n", "linux-image-"),
            None
        );
    }

    #[test]
    fn parses_apt_cache_policy() {
        let out = "busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n  Version table:\n";
        assert_eq!(
            parse_candidate(out).as_deref(),
            Some("1:1.35.0-4+deb12u1+b1")
        );
        assert_eq!(
            parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn failing_command_reports_command_and_stderr_tail() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "for i in $(seq 1 40); do echo line$i >&2; done; exit 3",
        ]);
        let err = run(&mut cmd, None).unwrap_err();
        assert!(err.command.contains("/bin/sh -c"), "{}", err.command);
        assert!(err.status.contains('3'), "{}", err.status);
        assert!(err.stderr_tail.ends_with("line40"));
        assert!(!err.stderr_tail.contains("line15\n"), "tail is bounded");
        let msg = err.to_string();
        assert!(msg.contains("line40"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_command_error() {
        let err = run(&mut Command::new("/nonexistent/tool"), None).unwrap_err();
        assert!(err.status.contains("could not start"), "{}", err.status);
    }

    #[test]
    fn missing_tool_names_the_package() {
        let err = find_tool(Tool {
            name: "warren-no-such-tool",
            package: "warren-pkg",
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("apt-get install warren-pkg"),
            "{err}"
        );
    }
}
