//! Feeds arbitrary strings to the egress-rule parser (rules come from API
//! callers): it must never panic, and what it accepts must print back to a
//! rule that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_net::EgressRule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = text.parse::<EgressRule>() {
        let again: EgressRule = rule.to_string().parse().expect("a printed rule parses");
        assert_eq!(again, rule);
    }
});
