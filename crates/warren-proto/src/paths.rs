//! Path rules for file operations inside a sandbox.
//!
//! Both the host library (to fail early with a clear message) and the guest
//! agent (because the host is not the only possible caller) apply them.
//! A path must be absolute, at most [`MAX_PATH_BYTES`] long, contain no NUL,
//! and must not climb above `/` with `..`: `/a/../../etc` is refused rather
//! than silently clamped, because a caller who wrote it meant something that
//! is not inside the sandbox.

/// Longest path accepted (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty string.
    #[error("path is empty; give an absolute path such as /home/user/file.txt")]
    Empty,
    /// Relative path.
    #[error("path {0:?} is relative; give an absolute path such as /home/user/{0}")]
    Relative(String),
    /// Too long.
    #[error("path is {0} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong(usize),
    /// Contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// `..` climbs above the root.
    #[error("path {0:?} escapes the sandbox root with '..'")]
    EscapesRoot(String),
}

/// Validates `path` and returns it lexically normalised: repeated and
/// trailing slashes removed, `.` dropped, `..` applied.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if !path.starts_with('/') {
        return Err(PathError::Relative(path.to_string()));
    }
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::EscapesRoot(path.to_string()));
                }
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Ok("/".to_string());
    }
    let mut out = String::with_capacity(path.len());
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("//a///b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(normalize("/a/..").unwrap(), "/");
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(normalize(""), Err(PathError::Empty));
        assert!(matches!(
            normalize("etc/passwd"),
            Err(PathError::Relative(_))
        ));
        assert!(matches!(
            normalize("/../etc/passwd"),
            Err(PathError::EscapesRoot(_))
        ));
        assert!(matches!(
            normalize("/a/../../etc"),
            Err(PathError::EscapesRoot(_))
        ));
        assert_eq!(normalize("/a\0b"), Err(PathError::Nul));
        assert!(matches!(
            normalize(&format!("/{}", "a".repeat(5000))),
            Err(PathError::TooLong(_))
        ));
    }
}
