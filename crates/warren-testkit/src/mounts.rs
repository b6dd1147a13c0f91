//! Mount points as `/proc/self/mountinfo` shows them: a memory daemon's
//! FUSE mount outliving its sandbox is a leak a test must see.

use std::path::Path;

/// Every mount point of this mount namespace, unescaped (`\040` is a
/// space in mountinfo).
pub fn mount_points() -> Vec<String> {
    warren_mountinfo::current_mount_points()
}

/// Mount points strictly inside `dir` (under `dir/`), deepest last in
/// mountinfo order; a sibling that merely shares the prefix
/// (`/tmp/a-1` for `/tmp/a`) is not inside.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = format!("{}/", dir.display());
    mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&needle))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_has_a_root_and_nothing_under_a_fresh_dir() {
        assert!(mount_points().iter().any(|m| m == "/"));
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).is_empty());
    }
}
