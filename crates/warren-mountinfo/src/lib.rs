//! The kernel's mount tables as text: `/proc/self/mountinfo` (the host
//! side: image staging trees, memory-daemon mounts a test must not leak)
//! and `/proc/self/mounts` (the guest's init, unmounting before power-off).
//!
//! Both escape a space, tab, newline and backslash in a path as three octal
//! digits (`\040`); this is the one decoder of that, shared by the guest,
//! `warren-image` and `warren-testkit`. It depends on nothing and knows
//! nothing of warren, so the test kit can use it and still see warren only
//! from outside. Not an API boundary.

/// Every mount point of a `/proc/self/mountinfo` text (its fifth field),
/// unescaped, in the kernel's order.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Every mount point of this process's mount namespace (empty when
/// `/proc` cannot be read).
pub fn current_mount_points() -> Vec<String> {
    mount_points(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Undoes the octal escapes of a mount table field (`\040` is a space); a
/// backslash not followed by three octal digits of a byte stays as it is.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes.get(i + 1..i + 4).and_then(octal_byte)
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

/// Three octal digits as one byte (`None` past 255 or for another digit).
fn octal_byte(digits: &[u8]) -> Option<u8> {
    digits.iter().try_fold(0u8, |value, &digit| {
        if (b'0'..=b'7').contains(&digit) {
            value.checked_mul(8)?.checked_add(digit - b'0')
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_and_anything_else_is_kept() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/mnt/a\\040"), "/mnt/a ");
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/odd\\"), "/odd\\");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("/x\\+12"), "/x\\+12");
        assert_eq!(unescape("/x\\777"), "/x\\777");
    }

    #[test]
    fn mount_points_are_the_fifth_field() {
        let text = "36 35 98:0 / /tmp/wf-1/sandboxes/ab\\040c/memfs rw - fuse x rw\n\
                    37 35 98:0 / /proc rw - proc proc rw\n";
        assert_eq!(
            mount_points(text),
            vec!["/tmp/wf-1/sandboxes/ab c/memfs", "/proc"]
        );
        assert!(current_mount_points().iter().any(|m| m == "/"));
    }
}
