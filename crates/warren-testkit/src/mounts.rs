//! Mount points as `/proc/self/mountinfo` shows them: a memory daemon's
//! FUSE mount outliving its sandbox is a leak a test must see.

use std::path::Path;

/// Every mount point of this mount namespace, unescaped (`\040` is a
/// space in mountinfo).
pub fn mount_points() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
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

fn parse_mountinfo(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        let text = "36 35 98:0 / /tmp/wf-1/sandboxes/ab\\040c/memfs rw - fuse x rw\n\
                    37 35 98:0 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec!["/tmp/wf-1/sandboxes/ab c/memfs", "/proc"]
        );
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn this_namespace_has_a_root_and_nothing_under_a_fresh_dir() {
        assert!(mount_points().iter().any(|m| m == "/"));
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).is_empty());
    }
}
