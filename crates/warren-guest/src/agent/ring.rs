//! The output ring of a process: the last bytes of its stdout and stderr,
//! in the order they were produced, so a caller can re-attach and see what
//! it missed.
//!
//! The ring is the only per-process output buffer: all followers read it by
//! byte offset, so any number of attachers costs no extra memory, and a
//! follower that falls behind loses the oldest data (counted) instead of
//! making the agent buffer without bound.

use std::collections::VecDeque;

use bytes::Bytes;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    /// Standard output (or the PTY).
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its stream.
    pub kind: OutKind,
    /// The bytes.
    pub data: Bytes,
}

/// What a follower gets from [`OutputRing::read_from`].
#[derive(Debug, Default)]
pub struct ReadResult {
    /// Bytes between the requested offset and the oldest retained byte,
    /// i.e. output this follower will never see.
    pub skipped: u64,
    /// Chunks in order.
    pub chunks: Vec<Chunk>,
    /// Offset to continue from.
    pub next: u64,
}

/// Bounded FIFO of output chunks addressed by absolute byte offset.
#[derive(Debug)]
pub struct OutputRing {
    /// Retained chunks with the absolute offset of their first byte.
    chunks: VecDeque<(u64, Chunk)>,
    /// Offset just past the newest byte (= total bytes ever pushed).
    end: u64,
    /// Bytes retained.
    len: usize,
    /// Most bytes retained.
    capacity: usize,
}

impl OutputRing {
    /// An empty ring keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            end: 0,
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Appends output, evicting the oldest chunks beyond the capacity.
    pub fn push(&mut self, kind: OutKind, mut data: Bytes) {
        if data.is_empty() {
            return;
        }
        if data.len() > self.capacity {
            // Keep only the tail; the head counts as evicted.
            let skip = data.len() - self.capacity;
            self.end += skip as u64;
            data = data.slice(skip..);
        }
        while self.len + data.len() > self.capacity {
            match self.chunks.pop_front() {
                Some((_, old)) => self.len -= old.data.len(),
                None => break,
            }
        }
        self.len += data.len();
        self.chunks.push_back((self.end, Chunk { kind, data }));
        self.end += self.chunks.back().map_or(0, |(_, c)| c.data.len() as u64);
    }

    /// Offset of the oldest retained byte; also the number of bytes ever
    /// evicted.
    pub fn start(&self) -> u64 {
        self.chunks.front().map_or(self.end, |(offset, _)| *offset)
    }

    /// Offset just past the newest byte.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes retained (memory accounting of the process table).
    pub fn retained(&self) -> usize {
        self.len
    }

    /// Chunks from offset `from`, at most about `max_bytes` of them (at
    /// least one chunk if any is available).
    pub fn read_from(&self, from: u64, max_bytes: usize) -> ReadResult {
        let start = self.start();
        let mut result = ReadResult {
            next: from,
            ..ReadResult::default()
        };
        if from < start {
            result.skipped = start - from;
            result.next = start;
        }
        let first = self
            .chunks
            .partition_point(|(offset, c)| offset + c.data.len() as u64 <= result.next);
        let mut taken = 0usize;
        for (offset, chunk) in self.chunks.range(first..) {
            if taken > 0 && taken + chunk.data.len() > max_bytes {
                break;
            }
            let skip = result.next.saturating_sub(*offset) as usize;
            let data = chunk.data.slice(skip.min(chunk.data.len())..);
            taken += data.len();
            result.next = offset + chunk.data.len() as u64;
            result.chunks.push(Chunk {
                kind: chunk.kind,
                data,
            });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn text(chunks: &[Chunk]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }

    #[test]
    fn keeps_order_and_kinds() {
        let mut ring = OutputRing::new(100);
        ring.push(OutKind::Stdout, b("out1 "));
        ring.push(OutKind::Stderr, b("err1 "));
        ring.push(OutKind::Stdout, b("out2"));
        ring.push(OutKind::Stdout, Bytes::new());
        let read = ring.read_from(0, usize::MAX);
        assert_eq!(read.skipped, 0);
        assert_eq!(read.next, 14);
        assert_eq!(text(&read.chunks), "out1 err1 out2");
        let kinds: Vec<_> = read.chunks.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [OutKind::Stdout, OutKind::Stderr, OutKind::Stdout]);
        assert!(ring.read_from(14, usize::MAX).chunks.is_empty());
    }

    #[test]
    fn evicts_oldest_and_counts_skipped() {
        let mut ring = OutputRing::new(10);
        for s in ["aaaa", "bbbb", "cccc"] {
            ring.push(OutKind::Stdout, b(s));
        }
        assert_eq!(ring.start(), 4);
        assert_eq!(ring.end(), 12);
        assert_eq!(ring.retained(), 8);
        let read = ring.read_from(0, usize::MAX);
        assert_eq!(read.skipped, 4);
        assert_eq!(text(&read.chunks), "bbbbcccc");
        // A follower already past the evicted part loses nothing.
        let read = ring.read_from(8, usize::MAX);
        assert_eq!((read.skipped, text(&read.chunks).as_str()), (0, "cccc"));
    }

    #[test]
    fn oversized_push_keeps_the_tail() {
        let mut ring = OutputRing::new(4);
        ring.push(OutKind::Stdout, b("ab"));
        ring.push(OutKind::Stderr, b("0123456789"));
        assert_eq!(ring.end(), 12);
        assert_eq!(ring.start(), 8);
        let read = ring.read_from(0, usize::MAX);
        assert_eq!(read.skipped, 8);
        assert_eq!(text(&read.chunks), "6789");
    }

    #[test]
    fn reads_in_bounded_batches() {
        let mut ring = OutputRing::new(1000);
        for _ in 0..10 {
            ring.push(OutKind::Stdout, b("0123456789"));
        }
        let read = ring.read_from(0, 25);
        assert_eq!(read.chunks.len(), 2);
        assert_eq!(read.next, 20);
        // A budget smaller than one chunk still makes progress.
        let read = ring.read_from(20, 1);
        assert_eq!(read.chunks.len(), 1);
        // A mid-chunk offset yields the rest of that chunk.
        let read = ring.read_from(25, usize::MAX);
        assert_eq!(read.chunks[0].data, b("56789"));
        assert_eq!(read.next, 100);
    }
}
