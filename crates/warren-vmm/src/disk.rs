//! Every operation on qcow2 disk images: creating copy-on-write layers,
//! flattening a chain of layers, reading a layer's backing file.
//!
//! A sandbox's root disk is a chain of qcow2 layers over a read-only base
//! image: one writable layer per run, frozen by a pause. All of them are
//! made with Debian's `qemu-img` (package `qemu-utils`, which must come from
//! the same QEMU release as `qemu-system-x86`). This module is the one
//! place that runs it, so the callers (sandbox creation, pause, resume,
//! templates) get typed errors and never build a `qemu-img` command line.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};

/// The program every operation here runs.
const QEMU_IMG: &str = "qemu-img";

/// Why a disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `qemu-img` is not installed.
    #[error("qemu-img is not installed; run `apt-get install qemu-utils` (or ./dev.sh up)")]
    NotInstalled(#[source] std::io::Error),
    /// `qemu-img` could not be started.
    #[error("running qemu-img failed")]
    Run(#[source] std::io::Error),
    /// `qemu-img` ran and failed; what it said is in `stderr`.
    #[error("qemu-img {operation} failed ({status}): {stderr}")]
    Failed {
        /// The `qemu-img` subcommand (`create`, `convert`).
        operation: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Its error output, trimmed.
        stderr: String,
    },
    /// `qemu-img` ran out of disk space (or quota). Its own variant because
    /// callers report a full disk (HTTP 507, "free space") rather than a
    /// broken image. `qemu-img` exits with status 1 for every failure and
    /// names the OS error only in its message, so the message is read
    /// here, once, where its output is parsed; nothing above looks at text.
    #[error("qemu-img {operation} ran out of disk space ({status}): {stderr}")]
    NoSpace {
        /// The `qemu-img` subcommand.
        operation: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Its error output, trimmed.
        stderr: String,
    },
    /// The image was made but could not be made durable (fsync, rename).
    #[error("keeping the disk image {path} failed")]
    Keep {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn spawn_error(error: std::io::Error) -> DiskError {
    if error.kind() == std::io::ErrorKind::NotFound {
        DiskError::NotInstalled(error)
    } else {
        DiskError::Run(error)
    }
}

fn check(operation: &'static str, output: Output) -> Result<(), DiskError> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let status = output.status;
    Err(if says_no_space(&stderr) {
        DiskError::NoSpace {
            operation,
            status,
            stderr,
        }
    } else {
        DiskError::Failed {
            operation,
            status,
            stderr,
        }
    })
}

/// Whether `qemu-img`'s error output names ENOSPC or EDQUOT: it prints
/// `strerror` ("No space left on device", "Disk quota exceeded") and has
/// no other way of saying so (see [`DiskError::NoSpace`]).
fn says_no_space(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    lower.contains("no space left") || lower.contains("enospc") || lower.contains("quota exceeded")
}

async fn run(operation: &'static str, args: &[&OsStr]) -> Result<(), DiskError> {
    let output = tokio::process::Command::new(QEMU_IMG)
        .arg(operation)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(spawn_error)?;
    check(operation, output)
}

fn run_blocking(operation: &'static str, args: &[&OsStr]) -> Result<(), DiskError> {
    let output = std::process::Command::new(QEMU_IMG)
        .arg(operation)
        .args(args)
        .output()
        .map_err(spawn_error)?;
    check(operation, output)
}

/// Creates an empty copy-on-write qcow2 layer at `overlay` over `base`
/// (whose format, as `qemu-img` names it, is `base_format`: `raw` or
/// `qcow2`). Not fsynced: a layer a VM is about to run on needs no
/// durability of its own (see [`create_overlay_durably`] for one that must
/// be complete whenever it is found).
pub async fn create_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
) -> Result<(), DiskError> {
    run(
        "create",
        &[
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            base_format.as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            overlay.as_os_str(),
        ],
    )
    .await
}

/// Creates, as a complete file or not at all, an empty layer over `base`
/// at `overlay` (temporary name, fsync, rename): a layer prepared ahead of
/// its use must never be found half written. On error no file is left.
pub async fn create_overlay_durably(
    base: &Path,
    base_format: &str,
    overlay: &Path,
) -> Result<(), DiskError> {
    let tmp = overlay.with_extension("tmp");
    let created = async {
        create_overlay(base, base_format, &tmp).await?;
        let (from, to) = (tmp.clone(), overlay.to_path_buf());
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&from)?.sync_all()?;
            std::fs::rename(&from, &to)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| DiskError::Keep {
            path: overlay.to_path_buf(),
            source,
        })
    }
    .await;
    if created.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    created
}

/// Writes the chain of layers ending in `top` as one qcow2 image `output`
/// over `base` (format `base_format`): `qemu-img convert -B` copies only
/// what differs from the base, so the result is as small as the chain's
/// changes. Not fsynced; the caller makes it durable with the rest of what
/// it commits (see [`flatten_durably`]).
pub async fn flatten(
    base: &Path,
    base_format: &str,
    top: &Path,
    output: &Path,
) -> Result<(), DiskError> {
    run("convert", &flatten_args(base, base_format, top, output)).await
}

fn flatten_args<'a>(
    base: &'a Path,
    base_format: &'a str,
    top: &'a Path,
    output: &'a Path,
) -> [&'a OsStr; 9] {
    [
        "-q".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        "-B".as_ref(),
        base.as_os_str(),
        "-F".as_ref(),
        base_format.as_ref(),
        top.as_os_str(),
        output.as_os_str(),
    ]
}

/// Like [`flatten`], blocking, and as a complete file or not at all: the
/// image is written under `output` + `.tmp`, fsynced, renamed into place
/// and its directory fsynced. For a commit that runs on a blocking thread
/// (a pause's merge of the disk chain). On error no file is left.
pub fn flatten_durably(
    base: &Path,
    base_format: &str,
    top: &Path,
    output: &Path,
) -> Result<(), DiskError> {
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    if let Err(error) = run_blocking("convert", &flatten_args(base, base_format, top, &tmp)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    let dir = output.parent().unwrap_or(Path::new("."));
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, output))
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            DiskError::Keep {
                path: output.to_path_buf(),
                source,
            }
        })
}

/// Creates an empty qcow2 image of `bytes` bytes with no backing file (a
/// base for tests and tools).
pub fn create_empty(path: &Path, bytes: u64) -> Result<(), DiskError> {
    run_blocking(
        "create",
        &[
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            bytes.to_string().as_ref(),
        ],
    )
}

/// The backing file named in a qcow2 image's header (`None` if the file is
/// not a readable qcow2 image with one): whether a layer prepared earlier
/// still sits on the right frozen layer. Read by hand because it is two
/// fields at fixed offsets, and `qemu-img info` would cost the very process
/// start that preparing the layer saves.
pub fn qcow2_backing_file(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    use std::os::unix::ffi::OsStringExt;
    // The name lies in the first cluster (64 KiB by default).
    let mut header = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut header)
        .ok()?;
    if header.get(..4)? != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(header.get(8..16)?.try_into().ok()?);
    let size = u32::from_be_bytes(header.get(16..20)?.try_into().ok()?);
    let start = usize::try_from(offset).ok()?;
    let name = header.get(start..start.checked_add(size as usize)?)?;
    (!name.is_empty()).then(|| PathBuf::from(std::ffi::OsString::from_vec(name.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prepared_layer_names_its_backing_file_and_garbage_names_none() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create_empty(&base, 1 << 20).unwrap();
        let overlay = dir.path().join("resume.qcow2");
        create_overlay_durably(&base, "qcow2", &overlay)
            .await
            .unwrap();
        assert_eq!(qcow2_backing_file(&overlay), Some(base.clone()));
        assert!(!overlay.with_extension("tmp").exists());
        assert_eq!(qcow2_backing_file(&base), None, "no backing file");

        let garbage = dir.path().join("garbage");
        std::fs::write(
            &garbage,
            b"QFI\xfb\0\0\0\x03\xff\xff\xff\xff\xff\xff\xff\xf0\0\0\0\x10",
        )
        .unwrap();
        assert_eq!(qcow2_backing_file(&garbage), None);
        assert_eq!(qcow2_backing_file(&dir.path().join("missing")), None);
    }

    #[tokio::test]
    async fn a_layer_that_cannot_be_made_leaves_no_file_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("resume.qcow2");
        let made =
            create_overlay_durably(&dir.path().join("no-such-base"), "qcow2", &overlay).await;
        let error = made.unwrap_err();
        assert!(
            matches!(&error, DiskError::Failed { operation: "create", stderr, .. } if !stderr.is_empty()),
            "{error:?}"
        );
        assert!(!matches!(error, DiskError::NoSpace { .. }));
        assert!(says_no_space(
            "qemu-img: error while writing: No space left on device"
        ));
        assert!(says_no_space("Disk quota exceeded"));
        assert!(!overlay.exists());
        assert!(!overlay.with_extension("tmp").exists());
    }

    #[tokio::test]
    async fn a_chain_flattens_into_one_layer_over_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create_empty(&base, 1 << 20).unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&base, "qcow2", &top).await.unwrap();
        let flat = dir.path().join("flat.qcow2");
        flatten_durably(&base, "qcow2", &top, &flat).unwrap();
        assert_eq!(qcow2_backing_file(&flat), Some(base.clone()));
        assert!(!dir.path().join("flat.qcow2.tmp").exists());
        let copy = dir.path().join("copy.qcow2");
        flatten(&base, "qcow2", &flat, &copy).await.unwrap();
        assert_eq!(qcow2_backing_file(&copy), Some(base));
        let missing = flatten_durably(
            &dir.path().join("none"),
            "qcow2",
            &dir.path().join("none"),
            &dir.path().join("out.qcow2"),
        );
        assert!(missing.is_err());
        assert!(!dir.path().join("out.qcow2.tmp").exists());
    }
}
