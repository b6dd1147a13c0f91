//! Finding and checking the guest agent binary that becomes `/init`.
//!
//! The initramfs holds nothing but the agent and the modules, so the agent
//! must be a static x86-64 executable: a dynamically linked one would fail
//! in the guest with a bare "Kernel panic - not syncing: No working init
//! found". Checking here turns that into an error that says how to build it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::elf::{EM_X86_64, Elf};
use crate::error::ImageError;
use crate::host::is_executable;
use crate::key::sha256_hex;

/// Environment variable that names the guest agent binary explicitly.
pub const GUEST_AGENT_ENV: &str = "WARREN_GUEST_AGENT";

/// The binary name of the guest agent.
const GUEST_AGENT_NAME: &str = "warren-guest";

/// Finds the guest agent: `$WARREN_GUEST_AGENT` if set; else `warren-guest`
/// next to the current executable (an installed `warren`); else the static
/// release build in the cargo target directory, seen from `target/<profile>/`
/// or from `target/<profile>/deps/` (where test binaries live).
pub fn find_guest_agent() -> Result<PathBuf, ImageError> {
    let exe = std::env::current_exe().map_err(ImageError::io(
        "find the current executable",
        "/proc/self/exe",
    ))?;
    find_guest_agent_from(std::env::var_os(GUEST_AGENT_ENV), &exe)
}

fn find_guest_agent_from(env: Option<OsString>, exe: &Path) -> Result<PathBuf, ImageError> {
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(ImageError::GuestAgentUnusable {
                path,
                reason: format!("{GUEST_AGENT_ENV} names a file that does not exist"),
                source: None,
            })
        };
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    let release = Path::new("x86_64-unknown-linux-gnu/release").join(GUEST_AGENT_NAME);
    let searched = [
        dir.join(GUEST_AGENT_NAME),
        dir.join("..").join(&release),
        dir.join("../..").join(&release),
    ];
    match searched.iter().find(|p| is_executable(p)) {
        Some(found) => Ok(normalize(found)),
        None => Err(ImageError::GuestAgentNotFound {
            searched: searched.iter().map(|p| normalize(p)).collect(),
        }),
    }
}

/// Resolves `..` components for readable messages (without touching symlinks
/// of the file itself).
fn normalize(path: &Path) -> PathBuf {
    match (
        path.parent().and_then(|p| p.canonicalize().ok()),
        path.file_name(),
    ) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => path.to_path_buf(),
    }
}

/// A checked agent binary, read into memory.
#[derive(Debug, Clone)]
pub(crate) struct GuestAgent {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) sha256: String,
}

impl GuestAgent {
    /// Reads `path` and checks that it can run as `/init`: an executable,
    /// statically linked x86-64 ELF file.
    pub(crate) fn load(path: &Path) -> Result<Self, ImageError> {
        let unusable = |reason: String| ImageError::GuestAgentUnusable {
            path: path.to_path_buf(),
            reason,
            source: None,
        };
        let failed = |reason: &str, source: Box<dyn std::error::Error + Send + Sync>| {
            ImageError::GuestAgentUnusable {
                path: path.to_path_buf(),
                reason: reason.to_string(),
                source: Some(source),
            }
        };
        let meta = std::fs::metadata(path).map_err(|e| failed("cannot stat it", e.into()))?;
        if !meta.is_file() {
            return Err(unusable("it is not a regular file".into()));
        }
        if !is_executable(path) {
            return Err(unusable("it is not executable".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| failed("cannot read it", e.into()))?;
        let elf = Elf::parse(&bytes)
            .map_err(|e| failed("it is not an executable for the guest", e.into()))?;
        if elf.machine != EM_X86_64 {
            return Err(unusable(format!(
                "it is built for another architecture (ELF machine {})",
                elf.machine
            )));
        }
        if let Some(interp) = elf
            .interpreter()
            .map_err(|e| failed("its ELF headers are malformed", e.into()))?
        {
            return Err(unusable(format!(
                "it is dynamically linked (interpreter {interp}), but it runs as /init with no libraries; link it statically"
            )));
        }
        let sha256 = sha256_hex(&bytes);
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::synthetic_elf;
    use std::os::unix::fs::PermissionsExt;

    fn write_exec(path: &Path, bytes: &[u8], mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn env_wins_and_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = tmp.path().join("agent");
        write_exec(&agent, b"x", 0o755);
        let exe = tmp.path().join("bin/warren");
        assert_eq!(
            find_guest_agent_from(Some(agent.clone().into()), &exe).unwrap(),
            agent
        );
        let err = find_guest_agent_from(Some(tmp.path().join("nope").into()), &exe).unwrap_err();
        assert!(err.to_string().contains("WARREN_GUEST_AGENT"), "{err}");
    }

    #[test]
    fn searches_next_to_exe_then_target_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let test_exe = target.join("debug/deps/build-1234");
        write_exec(&test_exe, b"x", 0o755);
        let err = find_guest_agent_from(None, &test_exe).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("./dev.sh build"), "{msg}");
        assert!(msg.contains("crt-static"), "{msg}");
        assert!(msg.contains("WARREN_GUEST_AGENT"), "{msg}");
        let ImageError::GuestAgentNotFound { searched } = err else {
            panic!("{err}")
        };
        assert_eq!(searched.len(), 3);

        let release = target.join("x86_64-unknown-linux-gnu/release/warren-guest");
        write_exec(&release, b"x", 0o755);
        let found = find_guest_agent_from(None, &test_exe).unwrap();
        assert_eq!(found, release.canonicalize().unwrap());
        // From target/debug/warren (one level up).
        let found = find_guest_agent_from(None, &target.join("debug/warren")).unwrap();
        assert_eq!(found, release.canonicalize().unwrap());
        // Next to the executable wins.
        let beside = target.join("debug/deps/warren-guest");
        write_exec(&beside, b"x", 0o755);
        assert_eq!(
            find_guest_agent_from(None, &test_exe).unwrap(),
            beside.canonicalize().unwrap()
        );
    }

    #[test]
    fn load_accepts_only_static_x86_64_executables() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = tmp.path().join("static");
        write_exec(&ok, &synthetic_elf(&[(".text", b"\x90")], None), 0o755);
        let agent = GuestAgent::load(&ok).unwrap();
        assert_eq!(agent.sha256.len(), 64);

        let check = |name: &str, bytes: &[u8], mode: u32, expect: &str| {
            let p = tmp.path().join(name);
            write_exec(&p, bytes, mode);
            let err = GuestAgent::load(&p).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            assert!(err.contains("./dev.sh build"), "{err}");
        };
        check(
            "dyn",
            &synthetic_elf(&[], Some("/lib64/ld-linux-x86-64.so.2")),
            0o755,
            "dynamically linked",
        );
        check("noexec", &synthetic_elf(&[], None), 0o644, "not executable");
        check(
            "script",
            b"#!/bin/sh\n",
            0o755,
            "not an executable for the guest",
        );
        let mut arm = synthetic_elf(&[], None);
        arm[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        check("arm", &arm, 0o755, "another architecture");
        let err = GuestAgent::load(&tmp.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot stat"), "{err}");
    }
}
