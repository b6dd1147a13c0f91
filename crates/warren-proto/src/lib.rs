//! The protocol between warren on the host and `warren-guest` in the VM.
//!
//! Three layers, bottom up:
//! - [`frame`]: resynchronising frames over a raw byte channel;
//! - [`link`]: the per-connection handshake and the pumps that expose one
//!   clean byte stream per host connection (plus raw-throughput probes);
//! - [`bulk`]: file bodies sent as link frames beside HTTP/2, with credit;
//! - [`pb`]: the gRPC service (`proto/agent.proto`) spoken over that stream.
//!
//! [`paths`] holds the path rules both sides enforce on file operations.

pub mod bulk;
pub mod frame;
pub mod link;
pub mod paths;

/// Generated protobuf messages and the gRPC client and server for the agent.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("warren.agent.v1");
}

/// Name of the virtio-serial port the agent listens on; the guest finds its
/// device node by this name under `/sys/class/virtio-ports`.
pub const AGENT_PORT_NAME: &str = "warren.agent";

/// Version of the gRPC protocol semantics, reported by `Info`.
/// 2: WriteFile commits only on an explicit `end` message.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest gRPC message either side accepts. Bulk data moves in chunks far
/// below this, so anything larger is a bug or an attack.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// The host's wall clock as the guest is told it: nanoseconds since 1970.
pub fn unix_time_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The wall clock in milliseconds since 1970 (0 before it): the one
/// timestamp of records on both sides (process starts in the guest, snapshot
/// and sandbox records on the host).
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Size of the data chunks of file transfers and process output.
pub const CHUNK_BYTES: usize = 256 * 1024;
