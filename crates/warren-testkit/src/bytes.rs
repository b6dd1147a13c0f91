//! Test data that nothing on the path can fake: transfers and snapshots
//! must move these bytes, not zero pages or a compressor's shortcut.

/// `len` pseudo-random bytes (xorshift64 from `seed`): the same seed gives
/// the same bytes, so a test can compare what came back with what it sent.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_deterministic_and_not_trivially_compressible() {
        let data = pattern(4096, 7);
        assert_eq!(data.len(), 4096);
        assert_eq!(data, pattern(4096, 7));
        assert_ne!(data, pattern(4096, 9));
        assert!(data.iter().filter(|&&b| b == 0).count() < 64);
        assert_eq!(pattern(5, 7).len(), 5);
    }
}
