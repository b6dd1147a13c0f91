//! The snapshot header file (`SNAPSHOT`): which generation files make up
//! guest memory and which generation holds each block (see FORMAT.md).
//!
//! The header is the single commit point of a snapshot: generation files
//! are written and synced first, then the header is replaced atomically, so
//! whatever header is on disk always describes complete files. Because the
//! header is also read back from disk after crashes and copies, decoding
//! treats its bytes as untrusted: it is bounded, checksummed and validated,
//! and never panics.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::{self, PathIo};
use crate::map::{BlockMap, BlockSource, Extent, MapError};

/// Name of the header file inside a snapshot directory; its presence is what
/// makes a directory a snapshot.
pub const HEADER_FILE: &str = "SNAPSHOT";

/// Granularity of the block map. Matches the guest page size, so a guest
/// write never dirties less than a block and the map never needs finer runs.
pub const BLOCK_SIZE: u64 = 4096;

/// First bytes of every header, so a stray file is rejected before parsing.
pub const MAGIC: [u8; 8] = *b"WRNSNAP\0";

/// The envelope version this build writes; bumped on any change an older
/// reader would misread. Version 2 added packed generations
/// ([`Generation::packed`]).
pub const VERSION: u32 = 2;
/// The oldest version this build still reads (snapshots taken before an
/// upgrade stay resumable).
pub const OLDEST_VERSION: u32 = 1;

/// Upper bound of the JSON body, so a corrupt length cannot make a reader
/// allocate gigabytes. A real header is a few KiB to a few MiB.
pub const MAX_BODY_LEN: u32 = 64 << 20;

/// Magic + version + body length + CRC32.
const ENVELOPE_LEN: usize = 20;

/// One file of the chain. Ids, not positions, are what the map refers to,
/// so generations can be dropped or merged without renumbering the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// Id used by [`BlockSource::Gen`] in the map.
    pub id: u32,
    /// The file holding this generation's blocks: relative to the snapshot
    /// directory, or absolute (a clone references its template's files
    /// without copying them).
    pub file: String,
    /// How `file` stores its blocks: `false`, a memory-sized sparse file
    /// with blocks at their offsets; `true`, packed and compressed
    /// ([`crate::packed`]), which is what diffs use. Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packed: bool,
}

impl Generation {
    /// A memory-sized sparse generation file.
    pub fn sparse(id: u32, file: impl Into<String>) -> Self {
        Self {
            id,
            file: file.into(),
            packed: false,
        }
    }

    /// A packed generation file.
    pub fn packed(id: u32, file: impl Into<String>) -> Self {
        Self {
            id,
            file: file.into(),
            packed: true,
        }
    }
}

/// Everything needed to resume a VM from a snapshot directory.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotHeader {
    /// Guest RAM size in bytes, a multiple of [`BLOCK_SIZE`].
    pub memory_bytes: u64,
    /// The generation files, oldest first; ids are unique.
    pub generations: Vec<Generation>,
    /// Source of every block (`memory_bytes / BLOCK_SIZE` blocks); every
    /// `Gen(id)` must be listed in `generations`.
    pub map: BlockMap,
    /// QEMU device-state file (relative or absolute).
    pub device_state: String,
    /// Frozen disk layer file (relative or absolute).
    pub disk: String,
    /// When the snapshot was taken, for listing and garbage collection.
    pub created_unix_ms: u64,
    /// Caller-defined data (sandbox config, labels); opaque to this crate.
    pub meta: serde_json::Value,
}

/// Why a header could not be read, decoded or written. Every variant names
/// the file when one is known (`decode` of bare bytes has none).
#[derive(Debug, Error)]
pub enum FormatError {
    /// Reading or writing a file failed.
    #[error("{op} {} failed", .path.display())]
    Io {
        /// What was being done ("reading", "renaming to", ...).
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes do not start with [`MAGIC`].
    #[error("{}: bad magic, not a warren snapshot header", at(.path))]
    BadMagic {
        /// The header file, if known.
        path: Option<PathBuf>,
    },
    /// Written by a newer (or unknown) format version.
    #[error("{}: unsupported format version {version} (this build reads versions {OLDEST_VERSION} to {VERSION})", at(.path))]
    UnsupportedVersion {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// The version found.
        version: u32,
    },
    /// Fewer bytes than the envelope announces.
    #[error("{}: truncated: {len} bytes, expected {expected}", at(.path))]
    Truncated {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// Bytes present.
        len: u64,
        /// Bytes needed.
        expected: u64,
    },
    /// More bytes than the envelope announces.
    #[error("{}: {extra} unexpected bytes after the body", at(.path))]
    TrailingBytes {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// Bytes past the end of the body.
        extra: u64,
    },
    /// The announced body length exceeds [`MAX_BODY_LEN`].
    #[error("{}: body length {len} exceeds the limit of {MAX_BODY_LEN} bytes", at(.path))]
    TooLarge {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// The announced or actual length.
        len: u64,
    },
    /// The body does not match its CRC32: the file is damaged.
    #[error("{}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})", at(.path))]
    ChecksumMismatch {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// CRC in the envelope.
        stored: u32,
        /// CRC of the body.
        computed: u32,
    },
    /// The body is not the expected JSON document.
    #[error("{}: malformed body", at(.path))]
    Malformed {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A field has an impossible value.
    #[error("{}: {reason}", at(.path))]
    Invalid {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// The block map does not cover memory exactly.
    #[error("{}: invalid block map", at(.path))]
    InvalidMap {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// What is wrong with the extents.
        source: MapError,
    },
    /// The map points at a generation the header does not list.
    #[error("{}: block map references generation {id}, which is not listed", at(.path))]
    UnlistedGeneration {
        /// The header file, if known.
        path: Option<PathBuf>,
        /// The missing id.
        id: u32,
    },
}

fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("snapshot header {}", p.display()),
        None => "snapshot header".to_string(),
    }
}

impl FormatError {
    /// Whether the header file does not exist (the directory is not a
    /// snapshot, or not yet one), as opposed to existing but being bad.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FormatError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    fn with_path(mut self, file: &Path) -> Self {
        use FormatError::*;
        match &mut self {
            Io { .. } => {}
            BadMagic { path }
            | UnsupportedVersion { path, .. }
            | Truncated { path, .. }
            | TrailingBytes { path, .. }
            | TooLarge { path, .. }
            | ChecksumMismatch { path, .. }
            | Malformed { path, .. }
            | Invalid { path, .. }
            | InvalidMap { path, .. }
            | UnlistedGeneration { path, .. } => *path = Some(file.to_path_buf()),
        }
        self
    }
}

impl From<PathIo> for FormatError {
    fn from(e: PathIo) -> Self {
        FormatError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// Wire form of the body. The map is a list of `[start, len, source]` with
/// source = generation id or -1 for zero: compact and readable by `jq`.
#[derive(Serialize)]
struct BodyOut<'a> {
    memory_bytes: u64,
    generations: &'a [Generation],
    map: Vec<(u64, u64, i64)>,
    device_state: &'a str,
    disk: &'a str,
    created_unix_ms: u64,
    meta: &'a serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyIn {
    memory_bytes: u64,
    generations: Vec<Generation>,
    map: Vec<(u64, u64, i64)>,
    device_state: String,
    disk: String,
    created_unix_ms: u64,
    meta: serde_json::Value,
}

fn invalid(reason: impl Into<String>) -> FormatError {
    FormatError::Invalid {
        path: None,
        reason: reason.into(),
    }
}

impl SnapshotHeader {
    /// The bytes of the header file. Infallible; a header that violates the
    /// invariants (e.g. an unlisted generation) encodes to bytes that
    /// [`SnapshotHeader::decode`] rejects, which is why
    /// [`write_header_atomic`] checks by decoding before it writes.
    pub fn encode(&self) -> Vec<u8> {
        let map = self
            .map
            .extents()
            .iter()
            .map(|e| {
                let src = match e.source {
                    BlockSource::Zero => -1,
                    BlockSource::Gen(g) => i64::from(g),
                };
                (e.start, e.len, src)
            })
            .collect();
        let body = BodyOut {
            memory_bytes: self.memory_bytes,
            generations: &self.generations,
            map,
            device_state: &self.device_state,
            disk: &self.disk,
            created_unix_ms: self.created_unix_ms,
            meta: &self.meta,
        };
        // Serializing plain structs and a `Value` into a Vec cannot fail;
        // an empty body would be rejected by decode anyway.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses and fully validates header bytes. Bounded (body ≤
    /// [`MAX_BODY_LEN`]) and panic-free on any input: headers come back
    /// from disk after crashes and copies.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let prefix = &bytes[..bytes.len().min(MAGIC.len())];
        if !MAGIC.starts_with(prefix) || bytes.is_empty() {
            return Err(FormatError::BadMagic { path: None });
        }
        if bytes.len() < ENVELOPE_LEN {
            return Err(FormatError::Truncated {
                path: None,
                len: bytes.len() as u64,
                expected: ENVELOPE_LEN as u64,
            });
        }
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(w)
        };
        let version = word(8);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                path: None,
                version,
            });
        }
        let body_len = word(12);
        if body_len > MAX_BODY_LEN {
            return Err(FormatError::TooLarge {
                path: None,
                len: u64::from(body_len),
            });
        }
        let total = ENVELOPE_LEN as u64 + u64::from(body_len);
        let have = bytes.len() as u64;
        if have < total {
            return Err(FormatError::Truncated {
                path: None,
                len: have,
                expected: total,
            });
        }
        if have > total {
            return Err(FormatError::TrailingBytes {
                path: None,
                extra: have - total,
            });
        }
        let body = &bytes[ENVELOPE_LEN..];
        let stored = word(16);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                path: None,
                stored,
                computed,
            });
        }
        let b: BodyIn = serde_json::from_slice(body)
            .map_err(|source| FormatError::Malformed { path: None, source })?;
        Self::from_body(b)
    }

    fn from_body(b: BodyIn) -> Result<Self, FormatError> {
        if b.memory_bytes == 0 || !b.memory_bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(invalid(format!(
                "memory size {} is not a positive multiple of {BLOCK_SIZE}",
                b.memory_bytes
            )));
        }
        let blocks = b.memory_bytes / BLOCK_SIZE;
        let mut ids: Vec<u32> = b.generations.iter().map(|g| g.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!("generation {} is listed twice", w[0])));
        }
        for g in &b.generations {
            if g.file.is_empty() || g.file.contains('\0') {
                return Err(invalid(format!(
                    "generation {} has an invalid file name {:?}",
                    g.id, g.file
                )));
            }
        }
        for (what, name) in [("device state", &b.device_state), ("disk", &b.disk)] {
            if name.contains('\0') {
                return Err(invalid(format!("{what} file name {name:?} contains NUL")));
            }
        }
        let mut extents = Vec::with_capacity(b.map.len());
        for &(start, len, src) in &b.map {
            let source = match src {
                -1 => BlockSource::Zero,
                s => match u32::try_from(s) {
                    Ok(id) => BlockSource::Gen(id),
                    Err(_) => {
                        return Err(invalid(format!(
                            "block map source {s} at block {start} is neither -1 nor a generation id"
                        )));
                    }
                },
            };
            extents.push(Extent { start, len, source });
        }
        let map = BlockMap::from_extents(blocks, extents)
            .map_err(|source| FormatError::InvalidMap { path: None, source })?;
        for (id, _) in map.blocks_per_generation() {
            if ids.binary_search(&id).is_err() {
                return Err(FormatError::UnlistedGeneration { path: None, id });
            }
        }
        Ok(SnapshotHeader {
            memory_bytes: b.memory_bytes,
            generations: b.generations,
            map,
            device_state: b.device_state,
            disk: b.disk,
            created_unix_ms: b.created_unix_ms,
            meta: b.meta,
        })
    }

    /// The path of a file named in the header: clones name their template's
    /// files by absolute path, everything else is relative to `dir` so a
    /// snapshot directory can be moved as a whole.
    pub fn resolve(&self, dir: &Path, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    }

    /// The id for the next generation: larger than every listed one, so ids
    /// never get reused while an old file with that id might still exist.
    pub fn next_generation_id(&self) -> u32 {
        self.generations
            .iter()
            .map(|g| g.id)
            .max()
            .map_or(0, |m| m.saturating_add(1))
    }
}

/// Reads and validates `dir/SNAPSHOT`; errors name that file.
pub fn read_header(dir: &Path) -> Result<SnapshotHeader, FormatError> {
    let path = dir.join(HEADER_FILE);
    let io_err = |source| FormatError::Io {
        op: "reading",
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(io_err)?;
    let limit = ENVELOPE_LEN as u64 + u64::from(MAX_BODY_LEN);
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(FormatError::TooLarge {
            path: Some(path),
            len: bytes.len() as u64,
        });
    }
    SnapshotHeader::decode(&bytes).map_err(|e| e.with_path(&path))
}

/// Commits a snapshot: writes `dir/SNAPSHOT.tmp`, fsyncs it, renames it over
/// `dir/SNAPSHOT` and fsyncs `dir`, so after a crash the header is either
/// the old or the new one. The header is validated first (by decoding its
/// encoding) so an unreadable header is never committed.
pub fn write_header_atomic(dir: &Path, header: &SnapshotHeader) -> Result<(), FormatError> {
    let path = dir.join(HEADER_FILE);
    let bytes = header.encode();
    SnapshotHeader::decode(&bytes).map_err(|e| e.with_path(&path))?;
    fsutil::write_atomic(&path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SnapshotHeader {
        let mut map = BlockMap::new_zero(64);
        map.set_range(0, 10, BlockSource::Gen(0)).unwrap();
        map.set_range(5, 3, BlockSource::Gen(2)).unwrap();
        map.set_range(40, 1, BlockSource::Gen(2)).unwrap();
        SnapshotHeader {
            memory_bytes: 64 * BLOCK_SIZE,
            generations: vec![
                Generation::sparse(0, "/abs/template/gen-0"),
                Generation::packed(2, "gen-2"),
            ],
            map,
            device_state: "device.state".into(),
            disk: "disk.qcow2".into(),
            created_unix_ms: 1_700_000_000_000,
            meta: serde_json::json!({"sandbox": "abc", "n": [1, 2]}),
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(&bytes[..8], b"WRNSNAP\0");
        assert_eq!(SnapshotHeader::decode(&bytes).unwrap(), h);
        assert_eq!(h.next_generation_id(), 3);
        assert_eq!(
            h.resolve(Path::new("/snap"), "gen-2"),
            PathBuf::from("/snap/gen-2")
        );
        assert_eq!(
            h.resolve(Path::new("/snap"), "/abs/x"),
            PathBuf::from("/abs/x")
        );
        let empty = SnapshotHeader {
            generations: vec![],
            map: BlockMap::new_zero(64),
            ..h
        };
        assert_eq!(empty.next_generation_id(), 0);
        assert_eq!(SnapshotHeader::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(SnapshotHeader::decode(&bytes[..n]).is_err(), "len {n}");
        }
        let mut longer = bytes.clone();
        longer.push(b' ');
        assert!(matches!(
            SnapshotHeader::decode(&longer),
            Err(FormatError::TrailingBytes { extra: 1, .. })
        ));
    }

    /// Wraps `body` in a valid envelope, to reach the body validation.
    fn envelope(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn semantic_errors() {
        let h = sample();
        let mut v: serde_json::Value = serde_json::from_slice(&h.encode()[ENVELOPE_LEN..]).unwrap();
        let dec = |v: &serde_json::Value| {
            SnapshotHeader::decode(&envelope(&serde_json::to_vec(v).unwrap()))
        };
        assert!(dec(&v).is_ok());

        let mut w = v.clone();
        w["generations"].as_array_mut().unwrap().remove(1);
        assert!(matches!(
            dec(&w),
            Err(FormatError::UnlistedGeneration { id: 2, .. })
        ));

        let mut w = v.clone();
        w["memory_bytes"] = 4097.into();
        assert!(matches!(dec(&w), Err(FormatError::Invalid { .. })));

        let mut w = v.clone();
        w["map"][0][1] = 1.into();
        assert!(matches!(dec(&w), Err(FormatError::InvalidMap { .. })));

        let mut w = v.clone();
        w["map"][0][2] = (-2).into();
        assert!(matches!(dec(&w), Err(FormatError::Invalid { .. })));

        let mut w = v.clone();
        w["generations"][1]["id"] = 0.into();
        assert!(matches!(dec(&w), Err(FormatError::Invalid { .. })));

        v["extra"] = 1.into();
        assert!(matches!(dec(&v), Err(FormatError::Malformed { .. })));

        for version in [0, VERSION + 1] {
            let mut bad = h.encode();
            bad[8..12].copy_from_slice(&version.to_le_bytes());
            assert!(matches!(
                SnapshotHeader::decode(&bad),
                Err(FormatError::UnsupportedVersion { version: v, .. }) if v == version
            ));
        }
        // Version 1 headers (no packed generations) still read.
        let mut sparse_only = h.clone();
        for g in &mut sparse_only.generations {
            g.packed = false;
        }
        let mut old = sparse_only.encode();
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(SnapshotHeader::decode(&old).unwrap(), sparse_only);
        let mut bad = h.encode();
        bad[12..16].copy_from_slice(&(MAX_BODY_LEN + 1).to_le_bytes());
        assert!(matches!(
            SnapshotHeader::decode(&bad),
            Err(FormatError::TooLarge { .. })
        ));
    }

    #[test]
    fn files_and_messages() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_header(dir.path()).unwrap_err();
        assert!(err.is_not_found());
        assert!(err.to_string().contains("SNAPSHOT"), "{err}");

        let h = sample();
        write_header_atomic(dir.path(), &h).unwrap();
        assert_eq!(read_header(dir.path()).unwrap(), h);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![HEADER_FILE.to_string()]);

        // A corrupt file names itself in the error.
        let p = dir.path().join(HEADER_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        std::fs::write(&p, &bytes).unwrap();
        let err = read_header(dir.path()).unwrap_err();
        assert!(matches!(err, FormatError::ChecksumMismatch { .. }));
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");

        // An invalid header is refused before anything is written.
        let mut bad = h.clone();
        bad.generations.clear();
        let err = write_header_atomic(dir.path(), &bad).unwrap_err();
        assert!(matches!(err, FormatError::UnlistedGeneration { id: 0, .. }));
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        assert!(!dir.path().join("SNAPSHOT.tmp").exists());
    }

    fn arb_header() -> impl Strategy<Value = SnapshotHeader> {
        (
            1u64..2000,
            proptest::collection::vec((0u64..2000, 1u64..100, -1i64..4), 0..20),
            any::<u64>(),
            "[^\\x00]{0,20}",
        )
            .prop_map(|(blocks, ops, ts, s)| {
                let mut map = BlockMap::new_zero(blocks);
                for (start, len, src) in ops {
                    let start = start % blocks;
                    let len = len.min(blocks - start);
                    let src = u32::try_from(src).map_or(BlockSource::Zero, BlockSource::Gen);
                    map.set_range(start, len, src).unwrap();
                }
                SnapshotHeader {
                    memory_bytes: blocks * BLOCK_SIZE,
                    generations: (0..4)
                        .map(|id| {
                            if id % 2 == 1 {
                                Generation::packed(id, format!("gen-{id}"))
                            } else {
                                Generation::sparse(id, format!("gen-{id}"))
                            }
                        })
                        .collect(),
                    map,
                    device_state: s.clone(),
                    disk: "disk".into(),
                    created_unix_ms: ts,
                    meta: serde_json::json!({ "s": s }),
                }
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(h in arb_header()) {
            prop_assert_eq!(SnapshotHeader::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn any_flipped_byte_is_rejected(h in arb_header(), pos in any::<prop::sample::Index>(), mask in 1u8..=255) {
            let mut bytes = h.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= mask;
            prop_assert!(SnapshotHeader::decode(&bytes).is_err());
        }

        #[test]
        fn any_truncation_is_rejected(h in arb_header(), cut in any::<prop::sample::Index>()) {
            let bytes = h.encode();
            let n = cut.index(bytes.len());
            prop_assert!(SnapshotHeader::decode(&bytes[..n]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SnapshotHeader::decode(&bytes);
            let _ = SnapshotHeader::decode(&envelope(&bytes));
        }

        #[test]
        fn hostile_bodies_never_panic(
            mem in any::<u64>(),
            map in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<i64>()), 0..8),
            ids in proptest::collection::vec(any::<u32>(), 0..4),
        ) {
            let body = serde_json::json!({
                "memory_bytes": mem,
                "generations": ids.iter().map(|id| serde_json::json!({"id": id, "file": "f"})).collect::<Vec<_>>(),
                "map": map,
                "device_state": "d", "disk": "k", "created_unix_ms": 0, "meta": null,
            });
            let _ = SnapshotHeader::decode(&envelope(&serde_json::to_vec(&body).unwrap()));
        }
    }
}
