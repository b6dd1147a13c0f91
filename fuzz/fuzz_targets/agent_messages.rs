//! Decodes arbitrary bytes as every message the host receives from the
//! guest agent. prost must reject garbage without panicking or allocating
//! without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use warren_proto::pb;

fuzz_target!(|data: &[u8]| {
    let _ = pb::ExecEvent::decode(data);
    let _ = pb::ReadFileChunk::decode(data);
    let _ = pb::ListDirChunk::decode(data);
    let _ = pb::InfoResponse::decode(data);
    let _ = pb::ListProcessesResponse::decode(data);
    let _ = pb::WriteFileResponse::decode(data);
    let _ = pb::StatResponse::decode(data);
});
