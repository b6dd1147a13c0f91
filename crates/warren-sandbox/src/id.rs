//! Sandbox identifiers.

use rand::Rng;

/// Characters of an id: lowercase, no look-alikes (0/o, 1/l).
const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Random characters after the prefix (60 bits).
const ID_CHARS: usize = 12;
/// Every sandbox id starts with this.
pub const ID_PREFIX: &str = "sb-";

/// A fresh random sandbox id such as `sb-k3xq7m2vnd8a`. Short, because it
/// names unix sockets (107-byte limit) and the guest hostname.
pub fn new_sandbox_id() -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(ID_PREFIX.len() + ID_CHARS);
    id.push_str(ID_PREFIX);
    for _ in 0..ID_CHARS {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// Whether `id` has the shape of a sandbox id (so it is safe as a path
/// component and a hostname).
pub fn is_valid_sandbox_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_distinct() {
        let a = new_sandbox_id();
        let b = new_sandbox_id();
        assert!(is_valid_sandbox_id(&a), "{a}");
        assert_ne!(a, b);
        assert!(!is_valid_sandbox_id("sb-../etc"));
        assert!(!is_valid_sandbox_id("xx-abc"));
        assert!(!is_valid_sandbox_id("sb-"));
    }
}
