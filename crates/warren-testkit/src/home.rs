//! Data directories and the image cache of tests and benchmarks.

use std::path::PathBuf;

/// Image cache used when `WARREN_IMAGE_CACHE` names none: shared by every
/// test and benchmark of a machine, so images are built once per machine,
/// not once per data directory.
pub const DEFAULT_IMAGE_CACHE: &str = "/var/lib/warren/test-images";

/// The image cache tests and benchmarks share: `WARREN_IMAGE_CACHE` when
/// set and not empty, else [`DEFAULT_IMAGE_CACHE`].
pub fn image_cache() -> PathBuf {
    std::env::var_os("WARREN_IMAGE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_CACHE))
}

/// A fresh, empty directory directly under `/tmp`, named `<prefix>XXXXXX`
/// and deleted on drop. Short on purpose: the unix sockets warren puts in
/// a data directory must have paths under 108 bytes, which a deep
/// `$TMPDIR` can break.
pub fn short_tempdir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tempdirs_are_fresh_and_short() {
        let a = short_tempdir("tk-").unwrap();
        let b = short_tempdir("tk-").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().starts_with("/tmp"));
        assert!(a.path().as_os_str().len() < 20, "{}", a.path().display());
    }
}
