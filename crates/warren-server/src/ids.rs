//! Identifiers and API key material.

use rand::Rng;
use sha2::{Digest, Sha256};

const ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const LOWER: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// A random id with a type prefix, e.g. `key_x7...`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_from(LOWER, 16))
}

/// A fresh API key: `wrn_` and 40 random characters (~238 bits).
pub fn new_api_key() -> String {
    format!("wrn_{}", random_from(ALPHANUMERIC, 40))
}

/// A fresh per-sandbox access token: `wat_` and 40 random characters. It
/// opens that sandbox's ports and nothing else, so it can sit in a browser
/// cookie where an API key must not.
pub fn new_access_token() -> String {
    format!("wat_{}", random_from(ALPHANUMERIC, 40))
}

/// Whether a presented token is the stored one. Compares digests, so the
/// time taken says nothing about how much of the token was right.
pub fn token_matches(presented: &str, stored: &str) -> bool {
    Sha256::digest(presented.as_bytes()) == Sha256::digest(stored.as_bytes())
}

/// What the database stores for a key. Keys are long random strings, so a
/// plain SHA-256 is enough: there is nothing to brute-force.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The displayable start of a key.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hash_stably() {
        let a = new_api_key();
        let b = new_api_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 44);
        assert!(a.starts_with("wrn_"));
        assert_eq!(hash_api_key(&a), hash_api_key(&a));
        assert_ne!(hash_api_key(&a), hash_api_key(&b));
        assert_eq!(key_prefix(&a).len(), 8);
        assert!(new_id("ev").starts_with("ev_"));
        let token = new_access_token();
        assert!(token.starts_with("wat_") && token.len() == 44);
        assert!(token_matches(&token, &token));
        assert!(!token_matches(&token, &new_access_token()));
        assert!(!token_matches("", &token));
    }
}
