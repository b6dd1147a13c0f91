//! Feeds arbitrary bytes, as the first bytes of a guest's TCP connection,
//! to the TLS server-name / HTTP Host sniffer the egress proxy judges
//! domain rules by: it must never panic, and a name it returns must be one
//! a domain rule could match (so a guest cannot smuggle a name past the
//! rules' syntax).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_net::sni::{Sniffed, sniff};

fuzz_target!(|data: &[u8]| {
    if let Sniffed::Named(name) = sniff(data) {
        assert!(!name.is_empty() && name.len() <= 253);
        assert!(name.bytes().all(|b| b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'-' | b'.' | b'_')));
    }
});
