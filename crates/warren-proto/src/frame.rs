//! Framing of the host↔guest byte stream.
//!
//! The channel to the guest (a virtio-serial port today, vsock later) is a
//! plain byte stream that survives host disconnects: bytes written by an
//! earlier host connection, or half a frame cut off when it went away, can
//! still be in flight when the next connection starts. Every frame therefore
//! starts with a magic number and a header checksum, and carries the *epoch*
//! (connection number) it belongs to. A decoder that meets garbage skips
//! forward to the next valid header instead of failing, and frames of a past
//! epoch are dropped by the link layer.
//!
//! Written by hand because it is twenty bytes of header: no framing crate
//! offers resynchronisation on a corrupted stream, which is the point here.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "WRN1"
//!      4     1  kind (see FrameKind)
//!      5     3  reserved, zero
//!      8     4  epoch (u32, little endian)
//!     12     4  payload length (u32, little endian, <= MAX_PAYLOAD)
//!     16     4  CRC-32 (IEEE) of bytes 0..16
//!     20     N  payload
//! ```
//!
//! The payload itself is not checksummed: the transport does not corrupt
//! bytes, it only loses or interleaves whole runs of them at reconnects,
//! which the header checksum and the epoch catch.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::{Buf, Bytes, BytesMut};

/// Free buffer space below which [`Decoder::read_from`] allocates more
/// before reading: a unix socket read may return this much at once.
const READ_SPACE: usize = 64 * 1024;
/// How much [`Decoder::read_from`] allocates at a time. Frames handed out
/// keep their allocation alive, so each new allocation copies the one
/// partial frame still buffered: larger allocations, fewer such copies.
const READ_ALLOCATION: usize = 1024 * 1024;

/// Frame header marker; chosen to be unlikely in HTTP/2 traffic.
pub const MAGIC: [u8; 4] = *b"WRN1";
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 20;
/// Largest payload a frame may carry. Small enough that the padding sent at
/// every reconnect (one maximal frame of zeros) is cheap, large enough that
/// headers are noise in bulk transfers.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// What a frame carries. Unknown kinds with a valid header are skipped, so
/// new kinds can be added without breaking old peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Host → guest: starts a new connection epoch. Payload: [`Hello`].
    Hello = 1,
    /// Guest → host: accepts an epoch. Payload: [`Hello`] echoed back.
    HelloAck = 2,
    /// Either way: bytes of the HTTP/2 connection of this epoch.
    Data = 3,
    /// Either way: payload to be thrown away (raw channel benchmark).
    Discard = 4,
    /// Host → guest: "send me N bytes of Discard frames". Payload: u64 LE.
    BenchPull = 5,
    /// Guest → host: the Discard frames asked for by BenchPull were sent.
    BenchPullDone = 6,
    /// Either way: echo request; payload is an opaque token.
    Ping = 7,
    /// Either way: echo reply with the token of the Ping.
    Pong = 8,
    /// Host → guest, right after Hello: set the wall clock. Payload: i64 LE
    /// nanoseconds since 1970. Guests of link version 2 and later apply it
    /// before any later frame, so the first call already sees the right time.
    SetClock = 9,
    /// Host → guest: bytes of a bulk upload, a file body sent beside HTTP/2
    /// (see [`crate::bulk`]). Payload: transfer id (u64 LE), then the bytes.
    BulkData = 10,
    /// Guest → host: how many bytes of a bulk upload the guest has taken,
    /// which grants the host credit for more. Payload: transfer id (u64 LE),
    /// cumulative bytes (u64 LE).
    BulkAck = 11,
}

impl FrameKind {
    /// Decodes a kind byte; `None` for kinds this version does not know.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Hello,
            2 => Self::HelloAck,
            3 => Self::Data,
            4 => Self::Discard,
            5 => Self::BenchPull,
            6 => Self::BenchPullDone,
            7 => Self::Ping,
            8 => Self::Pong,
            9 => Self::SetClock,
            10 => Self::BulkData,
            11 => Self::BulkAck,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload means.
    pub kind: FrameKind,
    /// Connection epoch the frame belongs to.
    pub epoch: u32,
    /// The payload bytes.
    pub payload: Bytes,
}

/// Encodes a frame header. Panics only on a caller bug (payload too large),
/// never on data from a peer.
pub fn encode_header(kind: FrameKind, epoch: u32, payload_len: usize) -> [u8; HEADER_LEN] {
    assert!(
        payload_len <= MAX_PAYLOAD,
        "frame payload of {payload_len} bytes exceeds MAX_PAYLOAD"
    );
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = kind as u8;
    header[8..12].copy_from_slice(&epoch.to_le_bytes());
    header[12..16].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = crc32fast::hash(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Encodes a whole frame into one buffer.
pub fn encode(kind: FrameKind, epoch: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&encode_header(kind, epoch, payload.len()));
    out.extend_from_slice(payload);
    out
}

/// Bytes that flush any half-received frame out of a peer's decoder: a
/// frame cut off by a disconnect is completed by (at most) these zeros and
/// the decoder then scans forward to the next magic.
pub fn resync_padding() -> Vec<u8> {
    vec![0u8; HEADER_LEN + MAX_PAYLOAD]
}

/// The payload of Hello and HelloAck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Random per connection; the ack must echo it.
    pub nonce: [u8; 16],
    /// Link protocol version of the sender.
    pub version: u32,
}

impl Hello {
    /// Encoded size.
    pub const LEN: usize = 20;

    /// Encodes into the fixed 20-byte form.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..16].copy_from_slice(&self.nonce);
        out[16..20].copy_from_slice(&self.version.to_le_bytes());
        out
    }

    /// Decodes; `None` if the payload has the wrong size.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        if payload.len() != Self::LEN {
            return None;
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&payload[0..16]);
        let version = u32::from_le_bytes(payload[16..20].try_into().ok()?);
        Some(Self { nonce, version })
    }
}

/// Counters a decoder keeps about what it had to throw away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecoderStats {
    /// Bytes skipped while looking for a valid header.
    pub skipped_bytes: u64,
    /// Valid frames of a kind this version does not know.
    pub unknown_frames: u64,
}

/// Incremental frame decoder with bounded memory.
///
/// Feed it whatever the transport returned with [`Decoder::push`], then
/// drain frames with [`Decoder::next_frame`]. It never panics and never
/// holds more than one partial frame plus the last pushed chunk.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    stats: DecoderStats,
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the transport.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Reads once from `fd` straight into the decoder's buffer and returns
    /// what read(2) returned (0 at end of input). Saves the copy out of a
    /// bounce buffer that [`Decoder::push`] needs: under software
    /// emulation every pass over the stream's bytes costs scarce guest CPU.
    pub fn read_from(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_SPACE {
            self.buf.reserve(READ_ALLOCATION);
        }
        let spare = self.buf.spare_capacity_mut();
        // SAFETY: read(2) writes at most `spare.len()` bytes to memory the
        // buffer owns and that is valid for writes; only those bytes are
        // then counted as initialised.
        let read = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        let Ok(read) = usize::try_from(read) else {
            return Err(io::Error::last_os_error());
        };
        // SAFETY: the kernel initialised `read` (<= spare.len()) bytes.
        unsafe { self.buf.set_len(self.buf.len() + read) };
        Ok(read)
    }

    /// Discards everything buffered (used when the peer went away).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What was skipped so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Returns the next complete, valid frame, skipping garbage; `None` when
    /// more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if !self.align_to_magic() {
                return None;
            }
            if self.buf.len() < HEADER_LEN {
                return None;
            }
            let header = &self.buf[..HEADER_LEN];
            let stored_crc = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
            let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
            if crc32fast::hash(&header[0..16]) != stored_crc || len > MAX_PAYLOAD {
                // Not a real header: the magic occurred by chance, or this
                // is the tail of a cut-off frame. Step past this magic.
                self.skip(1);
                continue;
            }
            if self.buf.len() < HEADER_LEN + len {
                return None;
            }
            let kind_byte = header[4];
            let epoch = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
            self.buf.advance(HEADER_LEN);
            let payload = self.buf.split_to(len).freeze();
            match FrameKind::from_u8(kind_byte) {
                Some(kind) => {
                    return Some(Frame {
                        kind,
                        epoch,
                        payload,
                    });
                }
                None => {
                    self.stats.unknown_frames += 1;
                    continue;
                }
            }
        }
    }

    /// Drops bytes until the buffer starts with MAGIC (or could, given more
    /// bytes). Returns false when the buffer is too short to decide.
    fn align_to_magic(&mut self) -> bool {
        if self.buf.starts_with(&MAGIC) {
            return true;
        }
        match find_magic(&self.buf) {
            Some(pos) => {
                self.skip(pos);
                true
            }
            None => {
                // Keep a tail that could be the start of a split magic.
                let keep = (MAGIC.len() - 1).min(self.buf.len());
                let tail_start = self.buf.len() - keep;
                let keep_from = (tail_start..self.buf.len())
                    .find(|&i| MAGIC.starts_with(&self.buf[i..]))
                    .unwrap_or(self.buf.len());
                self.skip(keep_from);
                false
            }
        }
    }

    fn skip(&mut self, n: usize) {
        self.buf.advance(n);
        self.stats.skipped_bytes += n as u64;
    }
}

fn find_magic(haystack: &[u8]) -> Option<usize> {
    haystack
        .windows(MAGIC.len())
        .position(|window| window == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut Decoder) -> Vec<Frame> {
        std::iter::from_fn(|| decoder.next_frame()).collect()
    }

    #[test]
    fn reads_frames_straight_from_a_socket_across_many_allocations() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        // Three MiB of 32 KiB frames: several READ_ALLOCATIONs, so frames
        // still held keep old allocations alive while new ones are made.
        let payloads: Vec<Vec<u8>> = (0..96u8).map(|i| vec![i; 32 * 1024]).collect();
        let writer = std::thread::spawn({
            let payloads = payloads.clone();
            move || {
                for (i, p) in payloads.iter().enumerate() {
                    tx.write_all(&encode(FrameKind::Data, i as u32, p)).unwrap();
                }
            }
        });
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        while decoder.read_from(rx.as_fd()).unwrap() > 0 {
            frames.extend(decode_all(&mut decoder));
        }
        writer.join().unwrap();
        assert_eq!(frames.len(), payloads.len());
        for (i, (frame, payload)) in frames.iter().zip(&payloads).enumerate() {
            assert_eq!(frame.epoch, i as u32);
            assert_eq!(frame.payload.as_ref(), payload.as_slice(), "frame {i}");
        }
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn round_trips_a_frame_split_at_every_byte() {
        let wire = encode(FrameKind::Data, 7, b"hello world");
        for split in 0..wire.len() {
            let mut decoder = Decoder::new();
            decoder.push(&wire[..split]);
            let mut frames = decode_all(&mut decoder);
            decoder.push(&wire[split..]);
            frames.extend(decode_all(&mut decoder));
            assert_eq!(frames.len(), 1, "split at {split}");
            assert_eq!(frames[0].payload.as_ref(), b"hello world");
            assert_eq!(frames[0].epoch, 7);
        }
    }

    #[test]
    fn skips_garbage_and_a_cut_off_frame() {
        let mut wire = b"garbage WRN1 more garbage".to_vec();
        // A frame whose payload was cut off by a disconnect...
        let cut = encode(FrameKind::Data, 1, &[9u8; 1000]);
        wire.extend_from_slice(&cut[..300]);
        // ...then the padding and hello of the next connection.
        wire.extend_from_slice(&resync_padding());
        let hello = Hello {
            nonce: [3; 16],
            version: 1,
        };
        wire.extend_from_slice(&encode(FrameKind::Hello, 2, &hello.encode()));
        let mut decoder = Decoder::new();
        decoder.push(&wire);
        let frames = decode_all(&mut decoder);
        // The cut-off frame is completed with zeros and still decodes (the
        // epoch filter drops it upstream); the hello must come through.
        let last = frames.last().expect("hello decoded");
        assert_eq!(last.kind, FrameKind::Hello);
        assert_eq!(Hello::decode(&last.payload), Some(hello));
        assert!(decoder.stats().skipped_bytes > 0);
    }

    #[test]
    fn rejects_a_header_with_a_bad_checksum() {
        let mut wire = encode(FrameKind::Data, 1, b"abc");
        wire[12] = 2; // length changed, checksum now wrong
        let mut decoder = Decoder::new();
        decoder.push(&wire);
        assert!(decode_all(&mut decoder).is_empty());
    }

    #[test]
    fn rejects_an_oversized_length_without_buffering_it() {
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC);
        header[4] = FrameKind::Data as u8;
        header[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&header[0..16]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        let mut decoder = Decoder::new();
        decoder.push(&header);
        assert!(decoder.next_frame().is_none());
        assert!(decoder.buffered() < HEADER_LEN);
    }

    #[test]
    fn skips_unknown_kinds() {
        let mut wire = encode(FrameKind::Data, 1, b"x");
        wire[4] = 200;
        let crc = crc32fast::hash(&wire[0..16]);
        wire[16..20].copy_from_slice(&crc.to_le_bytes());
        wire.extend_from_slice(&encode(FrameKind::Ping, 1, b"t"));
        let mut decoder = Decoder::new();
        decoder.push(&wire);
        let frames = decode_all(&mut decoder);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].kind, FrameKind::Ping);
        assert_eq!(decoder.stats().unknown_frames, 1);
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..20)) {
            let mut decoder = Decoder::new();
            for chunk in &chunks {
                decoder.push(chunk);
                while decoder.next_frame().is_some() {}
                prop_assert!(decoder.buffered() <= HEADER_LEN + MAX_PAYLOAD + chunk.len());
            }
        }

        #[test]
        fn frames_survive_surrounding_garbage(prefix in proptest::collection::vec(any::<u8>(), 0..300), payload in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut wire = prefix.clone();
            wire.extend_from_slice(&resync_padding());
            wire.extend_from_slice(&encode(FrameKind::Data, 42, &payload));
            let mut decoder = Decoder::new();
            decoder.push(&wire);
            let frames = decode_all(&mut decoder);
            let last = frames.last().expect("frame decoded");
            prop_assert_eq!(last.epoch, 42);
            prop_assert_eq!(last.payload.as_ref(), payload.as_slice());
        }
    }
}
