//! The `-kernel` of a VM that restores a snapshot instead of booting.
//!
//! QEMU reads the whole `-kernel` bzImage into its own anonymous memory at
//! start, so that the firmware can fetch it over fw_cfg and boot it. A VM
//! restoring a snapshot never boots, yet its command line must still name
//! a kernel: the option ROM QEMU adds for a Linux boot is a RAM block, and
//! an incoming VM whose RAM blocks differ from the saved one's refuses the
//! device state. The stub written here is the bzImage's setup header (what
//! QEMU parses, so the same ROM is added) and one page of payload: each
//! restored VM then holds 4 KiB of kernel instead of the whole image
//! (13.5 MiB of host memory per sandbox with Debian's kernel) and does not
//! read and copy it at start.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// File name of the stub in the VM directory.
pub use crate::config::files::RESTORE_KERNEL;

/// Offset of `setup_sects` in a bzImage (Linux boot protocol).
const SETUP_SECTS: usize = 0x1f1;
/// Offset and value of the boot protocol's "HdrS" magic.
const HEADER_MAGIC: (usize, &[u8; 4]) = (0x202, b"HdrS");
/// Payload kept after the setup area: QEMU wants a non-empty kernel.
const PAYLOAD: u64 = 4096;

/// Writes the stub of `kernel` into `dir` and returns its path; returns
/// `kernel` itself when it is not a bzImage (QEMU then loads it as usual,
/// which is only slower). Not fsynced: it is rewritten at every restore,
/// so a crash can at worst leave a file the next restore replaces.
pub fn restore_kernel(kernel: &Path, dir: &Path) -> io::Result<PathBuf> {
    let mut file = File::open(kernel)?;
    let mut stub = Vec::new();
    (&mut file).take(1024).read_to_end(&mut stub)?;
    let Some(setup_size) = setup_size(&stub) else {
        return Ok(kernel.to_path_buf());
    };
    let length = file.metadata()?.len();
    if setup_size + PAYLOAD > length {
        return Ok(kernel.to_path_buf());
    }
    file.take(setup_size + PAYLOAD - stub.len() as u64)
        .read_to_end(&mut stub)?;
    let path = dir.join(RESTORE_KERNEL);
    File::create(&path)?.write_all(&stub)?;
    Ok(path)
}

/// Size of the real-mode setup area of a bzImage, from its header.
fn setup_size(header: &[u8]) -> Option<u64> {
    let (at, magic) = HEADER_MAGIC;
    if header.get(at..at + magic.len())? != magic {
        return None;
    }
    // The boot protocol: 0 sectors means 4; the boot sector comes first.
    let sectors = match *header.get(SETUP_SECTS)? {
        0 => 4,
        n => u64::from(n),
    };
    Some((sectors + 1) * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(setup_sects: u8, payload: usize) -> Vec<u8> {
        let setup = (usize::from(setup_sects.max(1)) + 1) * 512;
        let mut image = vec![0u8; setup + payload];
        image[SETUP_SECTS] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        for (i, byte) in image.iter_mut().enumerate().skip(setup) {
            *byte = (i % 251) as u8;
        }
        image
    }

    #[test]
    fn the_stub_keeps_the_setup_header_and_one_page_of_a_bzimage() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let image = fake_bzimage(27, 1 << 20);
        std::fs::write(&kernel, &image).unwrap();
        let stub = restore_kernel(&kernel, dir.path()).unwrap();
        assert_eq!(stub, dir.path().join(RESTORE_KERNEL));
        let bytes = std::fs::read(&stub).unwrap();
        assert_eq!(bytes.len(), 28 * 512 + 4096);
        assert_eq!(bytes[..], image[..bytes.len()]);
    }

    #[test]
    fn a_kernel_that_is_not_a_bzimage_is_used_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF not a bzImage").unwrap();
        assert_eq!(restore_kernel(&kernel, dir.path()).unwrap(), kernel);
        let truncated = dir.path().join("short");
        std::fs::write(&truncated, fake_bzimage(4, 100)).unwrap();
        assert_eq!(restore_kernel(&truncated, dir.path()).unwrap(), truncated);
        assert!(!dir.path().join(RESTORE_KERNEL).exists());
    }

    #[test]
    fn a_missing_kernel_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(restore_kernel(&dir.path().join("gone"), dir.path()).is_err());
    }
}
