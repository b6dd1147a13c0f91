//! Cache keys: a hash of everything that affects a part's output.
//!
//! Fields are fed as length-prefixed (name, value) pairs into SHA-256, so no
//! two different field lists can hash alike by concatenation (`"ab","c"` vs
//! `"a","bc"`), and every key starts from a domain string so a kernel key can
//! never equal a rootfs key. Keys are the first 64 bits in hex: short enough
//! for directory names, far from colliding among the handful of parts a
//! machine holds.

use sha2::{Digest, Sha256};

/// Number of hex characters of a key.
pub(crate) const KEY_HEX_LEN: usize = 16;

/// Builds a cache key from named fields.
pub(crate) struct KeyHasher(Sha256);

impl KeyHasher {
    /// Starts a key in `domain` (e.g. `"warren-image/kernel"`).
    pub(crate) fn new(domain: &str) -> Self {
        let mut hasher = Self(Sha256::new());
        hasher.field("domain", domain);
        hasher
    }

    /// Adds one named input.
    pub(crate) fn field(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        let value = value.as_ref();
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    /// Adds a list input; the element count is part of the hash.
    pub(crate) fn list<S: AsRef<str>>(&mut self, name: &str, values: &[S]) -> &mut Self {
        self.field(name, (values.len() as u64).to_le_bytes());
        for value in values {
            self.field(name, value.as_ref());
        }
        self
    }

    /// The key: the first [`KEY_HEX_LEN`] hex digits of the digest.
    pub(crate) fn finish(&self) -> String {
        let digest = self.0.clone().finalize();
        let mut key = hex::encode(digest);
        key.truncate(KEY_HEX_LEN);
        key
    }
}

/// Full SHA-256 of some bytes, in hex (for manifests and agent identity).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` has the shape of a key (used when parsing directory names).
pub(crate) fn is_key(s: &str) -> bool {
    s.len() == KEY_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_boundaries_matter() {
        let a = KeyHasher::new("d")
            .field("x", "ab")
            .field("y", "c")
            .finish();
        let b = KeyHasher::new("d")
            .field("x", "a")
            .field("y", "bc")
            .finish();
        assert_ne!(a, b);
    }

    #[test]
    fn domain_and_names_matter() {
        let a = KeyHasher::new("d1").field("x", "v").finish();
        let b = KeyHasher::new("d2").field("x", "v").finish();
        let c = KeyHasher::new("d1").field("y", "v").finish();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn lists_are_counted() {
        let a = KeyHasher::new("d")
            .list("l", &["a", "b"])
            .list("m", &[] as &[&str])
            .finish();
        let b = KeyHasher::new("d")
            .list("l", &["a"])
            .list("m", &["b"])
            .finish();
        assert_ne!(a, b);
    }

    #[test]
    fn keys_are_stable_and_shaped() {
        let a = KeyHasher::new("d").field("x", "v").finish();
        assert_eq!(a, KeyHasher::new("d").field("x", "v").finish());
        assert!(is_key(&a), "{a}");
        assert!(!is_key("xyz"));
    }
}
