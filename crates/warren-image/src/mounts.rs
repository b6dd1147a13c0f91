//! Never delete through a mount point.
//!
//! `mmdebstrap --mode=root` mounts into the tree it builds: `/proc`, an
//! rbind of the host's `/sys`, and bind mounts of host device nodes and of
//! the host's `/dev/shm`. It unmounts them when it exits normally, but if it
//! is killed, they stay. A plain recursive delete of such a staging
//! directory would then walk into the host's `/dev/shm` and delete other
//! programs' shared memory. So before deleting a tree, everything mounted
//! under it is detached, and if anything is still mounted the tree is left
//! alone.

use std::path::{Path, PathBuf};

/// Mount points strictly under `path` (from `/proc/self/mountinfo`),
/// deepest first.
pub(crate) fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(base) = path.canonicalize() else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = warren_mountinfo::current_mount_points()
        .into_iter()
        .map(PathBuf::from)
        .filter(|mount| mount.starts_with(&base) && mount != &base)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// Detaches everything mounted under `path`. Fails if something stays
/// mounted (e.g. when not root), so the caller does not delete the tree.
pub(crate) fn detach_all_under(path: &Path) -> std::io::Result<()> {
    let mounts = mounts_under(path);
    if mounts.is_empty() {
        return Ok(());
    }
    tracing::warn!(?mounts, "detaching mounts left in a build directory");
    for mount in &mounts {
        if let Err(e) = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
            tracing::debug!(mount = %mount.display(), error = %e, "umount failed");
        }
    }
    let left = mounts_under(path);
    if left.is_empty() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "file systems are still mounted under it ({}); unmount them, then delete it",
            left.iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::remove_tree;

    #[test]
    fn remove_tree_does_not_delete_through_bind_mounts() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"keep me").unwrap();
        let staging = tmp.path().join(".staging-x");
        let shm = staging.join("root/dev/shm");
        std::fs::create_dir_all(&shm).unwrap();
        let mounted = nix::mount::mount(
            Some(&outside),
            &shm,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
        if let Err(e) = mounted {
            eprintln!("cannot bind-mount here ({e}); skipping");
            return;
        }
        assert_eq!(mounts_under(&staging), [shm.canonicalize().unwrap()]);
        remove_tree(&staging).unwrap();
        assert!(!staging.exists());
        assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep me");
        assert!(mounts_under(tmp.path()).is_empty());
    }
}
