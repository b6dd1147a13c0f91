//! Feeds arbitrary bytes to the snapshot header decoder: headers are read
//! back from disk after crashes and copies, so decoding must never panic,
//! and whatever it accepts must re-encode to an equal header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_snapshot::SnapshotHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = SnapshotHeader::decode(data) {
        let again = SnapshotHeader::decode(&header.encode()).expect("re-encoded header decodes");
        assert_eq!(again, header);
    }
});
