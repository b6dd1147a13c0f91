//! Feeds arbitrary bytes to the parser of a guest's `/proc/net/tcp` (the
//! guest writes them): it must never panic, and every port it reports is
//! a real one, once, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ports = warren_net::listening_ports(&[data]);
    assert!(ports.iter().all(|p| p.port != 0));
    assert!(ports.windows(2).all(|w| w[0].port < w[1].port));
});
