//! [`BlockMap`]: which generation serves each 4 KiB block of guest memory.
//!
//! The map is a sorted run-length list of [`Extent`]s that covers
//! `[0, blocks)` exactly, with adjacent extents of the same source merged.
//! A 2 GiB guest has 524 288 blocks, but a real chain has a few thousand
//! runs at most, so extents with binary search are both compact and fast
//! (a lookup is `O(log runs)`, a read of a range walks consecutive runs).

use thiserror::Error;

/// Where the bytes of a block come from.
///
/// `Zero` is explicit in the map (gaps are not allowed), so a block that a
/// newer generation zeroed can shadow an older generation's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockSource {
    /// The block reads as 4096 zero bytes; no file holds it.
    Zero,
    /// The block is at the same offset in the file of this generation id.
    Gen(u32),
}

/// A run of consecutive blocks served by one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First block of the run.
    pub start: u64,
    /// Number of blocks in the run (never 0 inside a [`BlockMap`]).
    pub len: u64,
    /// Where these blocks come from.
    pub source: BlockSource,
}

impl Extent {
    /// One past the last block of the run.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Why a list of extents or an update does not describe a valid map.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MapError {
    /// An extent has length 0.
    #[error("extent at block {start} is empty")]
    EmptyExtent {
        /// Start block of the empty extent.
        start: u64,
    },
    /// An extent does not start where the previous one ended (gap or overlap).
    #[error("extent starts at block {found}, expected {expected} (gap or overlap)")]
    NotContiguous {
        /// Where the extent should have started.
        expected: u64,
        /// Where it starts.
        found: u64,
    },
    /// Extents run past the end of memory, or a range is out of bounds.
    #[error("blocks up to {end} are out of range (memory has {blocks} blocks)")]
    OutOfRange {
        /// End block of the offending extent or range.
        end: u64,
        /// Number of blocks in memory.
        blocks: u64,
    },
    /// The extents end before the end of memory.
    #[error("extents cover {covered} blocks, memory has {blocks}")]
    Incomplete {
        /// Blocks covered.
        covered: u64,
        /// Number of blocks in memory.
        blocks: u64,
    },
    /// The ranges given to [`BlockMap::overlay`] are not sorted and disjoint.
    #[error("overlay ranges are not sorted and disjoint at block {at}")]
    UnsortedRanges {
        /// Start of the offending range.
        at: u64,
    },
}

/// In-memory map from every block of guest memory to its [`BlockSource`].
///
/// Invariants (checked by every constructor): extents are sorted, non-empty,
/// contiguous, cover `[0, blocks)` exactly, and adjacent extents have
/// different sources (canonical form, so equal maps compare equal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    blocks: u64,
    extents: Vec<Extent>,
}

impl BlockMap {
    /// A map where every block is zero (a fresh, never-touched guest).
    pub fn new_zero(blocks: u64) -> Self {
        Self::new_uniform(blocks, BlockSource::Zero)
    }

    /// A map where every block comes from the same source (e.g. a fully
    /// merged generation before its zero blocks are known).
    pub fn new_uniform(blocks: u64, source: BlockSource) -> Self {
        let extents = if blocks == 0 {
            Vec::new()
        } else {
            vec![Extent {
                start: 0,
                len: blocks,
                source,
            }]
        };
        Self { blocks, extents }
    }

    /// Builds a map from extents that must be sorted, contiguous and cover
    /// `[0, blocks)` exactly; adjacent extents with equal sources are merged.
    pub fn from_extents(
        blocks: u64,
        extents: impl IntoIterator<Item = Extent>,
    ) -> Result<Self, MapError> {
        let mut out: Vec<Extent> = Vec::new();
        let mut expected = 0u64;
        for e in extents {
            if e.len == 0 {
                return Err(MapError::EmptyExtent { start: e.start });
            }
            if e.start != expected {
                return Err(MapError::NotContiguous {
                    expected,
                    found: e.start,
                });
            }
            let end = e
                .start
                .checked_add(e.len)
                .filter(|&end| end <= blocks)
                .ok_or(MapError::OutOfRange {
                    end: e.start.saturating_add(e.len),
                    blocks,
                })?;
            push_merged(&mut out, e);
            expected = end;
        }
        if expected != blocks {
            return Err(MapError::Incomplete {
                covered: expected,
                blocks,
            });
        }
        Ok(Self {
            blocks,
            extents: out,
        })
    }

    /// Number of 4 KiB blocks the map covers.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The canonical extents, sorted by start.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Index of the extent containing `block` (caller checks bounds).
    fn index_of(&self, block: u64) -> usize {
        // First extent whose end is > block.
        self.extents.partition_point(|e| e.end() <= block)
    }

    /// Which source serves `block`; `None` if the block is out of range.
    pub fn lookup(&self, block: u64) -> Option<BlockSource> {
        if block >= self.blocks {
            return None;
        }
        self.extents.get(self.index_of(block)).map(|e| e.source)
    }

    /// The runs covering `[start, start + len)`, clipped to that range, in
    /// order. Out-of-range parts are simply not returned.
    pub fn runs(&self, start: u64, len: u64) -> impl Iterator<Item = Extent> + '_ {
        let end = start.saturating_add(len).min(self.blocks);
        let first = if start >= end {
            self.extents.len()
        } else {
            self.index_of(start)
        };
        self.extents[first..]
            .iter()
            .take_while(move |e| e.start < end)
            .map(move |e| {
                let s = e.start.max(start);
                let t = e.end().min(end);
                Extent {
                    start: s,
                    len: t - s,
                    source: e.source,
                }
            })
    }

    /// Points `[start, start + len)` at `source`. `O(runs)`; for many
    /// ranges at once use [`BlockMap::overlay`].
    pub fn set_range(&mut self, start: u64, len: u64, source: BlockSource) -> Result<(), MapError> {
        *self = self.overlay([(start, len)], source)?;
        Ok(())
    }

    /// A new map equal to this one except that every block of `ranges`
    /// (sorted, disjoint `(start, len)` pairs; empty ones are skipped) is
    /// served by `source`. Linear in runs + ranges: this is how a new
    /// generation's dirty extents are applied.
    pub fn overlay(
        &self,
        ranges: impl IntoIterator<Item = (u64, u64)>,
        source: BlockSource,
    ) -> Result<BlockMap, MapError> {
        let mut out: Vec<Extent> = Vec::with_capacity(self.extents.len() + 2);
        let mut pos = 0u64; // everything before pos is already in out
        let mut idx = 0usize; // first old extent that may still contribute
        for (rs, rl) in ranges {
            if rl == 0 {
                continue;
            }
            let re =
                rs.checked_add(rl)
                    .filter(|&e| e <= self.blocks)
                    .ok_or(MapError::OutOfRange {
                        end: rs.saturating_add(rl),
                        blocks: self.blocks,
                    })?;
            if rs < pos {
                return Err(MapError::UnsortedRanges { at: rs });
            }
            // Copy old runs for [pos, rs).
            idx = self.copy_old(&mut out, idx, pos, rs);
            push_merged(
                &mut out,
                Extent {
                    start: rs,
                    len: rl,
                    source,
                },
            );
            pos = re;
        }
        self.copy_old(&mut out, idx, pos, self.blocks);
        Ok(BlockMap {
            blocks: self.blocks,
            extents: out,
        })
    }

    /// Appends the old runs clipped to `[from, to)` starting the search at
    /// extent `idx`; returns the index to continue from.
    fn copy_old(&self, out: &mut Vec<Extent>, mut idx: usize, from: u64, to: u64) -> usize {
        if from >= to {
            return idx;
        }
        while idx < self.extents.len() && self.extents[idx].end() <= from {
            idx += 1;
        }
        let mut i = idx;
        while i < self.extents.len() && self.extents[i].start < to {
            let e = self.extents[i];
            let s = e.start.max(from);
            let t = e.end().min(to);
            push_merged(
                out,
                Extent {
                    start: s,
                    len: t - s,
                    source: e.source,
                },
            );
            if e.end() > to {
                break;
            }
            i += 1;
        }
        i
    }

    /// A new map with every source replaced by `f(source)` (e.g. all
    /// generations → the merged one). Adjacent runs are re-merged.
    pub fn remap(&self, mut f: impl FnMut(BlockSource) -> BlockSource) -> BlockMap {
        let mut out = Vec::with_capacity(self.extents.len());
        for e in &self.extents {
            push_merged(
                &mut out,
                Extent {
                    source: f(e.source),
                    ..*e
                },
            );
        }
        BlockMap {
            blocks: self.blocks,
            extents: out,
        }
    }

    /// Number of blocks served by each generation id (zero blocks are not
    /// counted), sorted by id. Tells which generations are still needed.
    pub fn blocks_per_generation(&self) -> Vec<(u32, u64)> {
        let mut counts = std::collections::BTreeMap::new();
        for e in &self.extents {
            if let BlockSource::Gen(g) = e.source {
                *counts.entry(g).or_insert(0u64) += e.len;
            }
        }
        counts.into_iter().collect()
    }

    /// Number of blocks that are not zero (held by some generation).
    pub fn nonzero_blocks(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.source != BlockSource::Zero)
            .map(|e| e.len)
            .sum()
    }
}

/// Pushes `e` (which must start where `out` ends), merging it into the last
/// extent when the sources match.
fn push_merged(out: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        debug_assert_eq!(last.end(), e.start);
        if last.source == e.source {
            last.len += e.len;
            return;
        }
    }
    out.push(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(map: &BlockMap) -> Vec<BlockSource> {
        (0..map.blocks()).map(|b| map.lookup(b).unwrap()).collect()
    }

    #[test]
    fn zero_map_and_lookup() {
        let m = BlockMap::new_zero(10);
        assert_eq!(m.lookup(0), Some(BlockSource::Zero));
        assert_eq!(m.lookup(9), Some(BlockSource::Zero));
        assert_eq!(m.lookup(10), None);
        assert_eq!(m.extents().len(), 1);
    }

    #[test]
    fn set_range_splits_and_merges() {
        let mut m = BlockMap::new_zero(100);
        m.set_range(10, 5, BlockSource::Gen(1)).unwrap();
        m.set_range(15, 5, BlockSource::Gen(1)).unwrap();
        assert_eq!(m.extents().len(), 3);
        assert_eq!(
            m.extents()[1],
            Extent {
                start: 10,
                len: 10,
                source: BlockSource::Gen(1)
            }
        );
        m.set_range(0, 100, BlockSource::Zero).unwrap();
        assert_eq!(m, BlockMap::new_zero(100));
        assert!(m.set_range(99, 2, BlockSource::Zero).is_err());
    }

    #[test]
    fn from_extents_rejects_gaps_overlaps_and_short_cover() {
        let e = |start, len| Extent {
            start,
            len,
            source: BlockSource::Zero,
        };
        assert!(matches!(
            BlockMap::from_extents(10, [e(0, 4), e(5, 5)]),
            Err(MapError::NotContiguous {
                expected: 4,
                found: 5
            })
        ));
        assert!(matches!(
            BlockMap::from_extents(10, [e(0, 4), e(3, 7)]),
            Err(MapError::NotContiguous { .. })
        ));
        assert!(matches!(
            BlockMap::from_extents(10, [e(0, 4)]),
            Err(MapError::Incomplete {
                covered: 4,
                blocks: 10
            })
        ));
        assert!(matches!(
            BlockMap::from_extents(10, [e(0, 11)]),
            Err(MapError::OutOfRange { .. })
        ));
        assert!(matches!(
            BlockMap::from_extents(10, [e(0, 0)]),
            Err(MapError::EmptyExtent { .. })
        ));
        assert!(matches!(
            BlockMap::from_extents(10, [e(0, u64::MAX)]),
            Err(MapError::OutOfRange { .. })
        ));
        // Equal neighbours are merged.
        let m = BlockMap::from_extents(10, [e(0, 4), e(4, 6)]).unwrap();
        assert_eq!(m.extents().len(), 1);
    }

    #[test]
    fn runs_are_clipped() {
        let mut m = BlockMap::new_zero(100);
        m.set_range(10, 10, BlockSource::Gen(3)).unwrap();
        let r: Vec<_> = m.runs(5, 10).collect();
        assert_eq!(
            r,
            vec![
                Extent {
                    start: 5,
                    len: 5,
                    source: BlockSource::Zero
                },
                Extent {
                    start: 10,
                    len: 5,
                    source: BlockSource::Gen(3)
                },
            ]
        );
        assert_eq!(m.runs(95, 50).count(), 1);
        assert_eq!(m.runs(100, 5).count(), 0);
    }

    proptest! {
        #[test]
        fn overlay_matches_naive(
            blocks in 1u64..300,
            ops in proptest::collection::vec((0u64..300, 0u64..40, 0u32..4), 0..30),
        ) {
            let mut m = BlockMap::new_zero(blocks);
            let mut reference = vec![BlockSource::Zero; blocks as usize];
            for (s, l, g) in ops {
                let s = s % blocks;
                let l = l.min(blocks - s);
                let src = if g == 0 { BlockSource::Zero } else { BlockSource::Gen(g) };
                m.set_range(s, l, src).unwrap();
                for b in s..s + l {
                    reference[b as usize] = src;
                }
                prop_assert_eq!(naive(&m), reference.clone());
                // Canonical: no equal neighbours, contiguous cover.
                let rebuilt = BlockMap::from_extents(blocks, m.extents().iter().copied()).unwrap();
                prop_assert_eq!(&rebuilt, &m);
                for w in m.extents().windows(2) {
                    prop_assert_ne!(w[0].source, w[1].source);
                }
            }
            // Multi-range overlay equals successive set_range.
            let ranges: Vec<(u64, u64)> = (0..blocks).step_by(7).map(|s| (s, 3.min(blocks - s))).collect();
            let mut seq = m.clone();
            for &(s, l) in &ranges {
                seq.set_range(s, l, BlockSource::Gen(9)).unwrap();
            }
            prop_assert_eq!(m.overlay(ranges, BlockSource::Gen(9)).unwrap(), seq);
        }
    }
}
