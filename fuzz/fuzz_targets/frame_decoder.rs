//! Feeds arbitrary bytes, split at arbitrary points, to the frame decoder
//! the host runs on bytes from the guest. It must never panic, and its
//! buffer must stay bounded. Every frame's payload also goes through the
//! bulk-transfer decoders (acknowledgements come from the guest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_proto::bulk;
use warren_proto::frame::{Decoder, HEADER_LEN, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    // The first byte picks the chunk size, so splits vary too.
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1) * 7;
    for piece in data.chunks(chunk) {
        decoder.push(piece);
        while let Some(frame) = decoder.next_frame() {
            assert!(frame.payload.len() <= MAX_PAYLOAD);
            if let Some((id, taken)) = bulk::decode_ack(&frame.payload) {
                assert_eq!(bulk::encode_ack(id, taken).as_slice(), &frame.payload[..]);
            }
            if let Some((_, bytes)) = bulk::decode_data(&frame.payload) {
                assert_eq!(bytes.len() + bulk::BULK_ID_LEN, frame.payload.len());
            }
        }
        assert!(decoder.buffered() <= HEADER_LEN + MAX_PAYLOAD + piece.len());
    }
});
