//! Snapshot operations on real sparse files.

mod common;

use common::{BS, chain_content, pattern, with_blocks, write_sparse};
use std::os::unix::fs::FileExt;
use warren_snapshot::{
    BLOCK_SIZE, BlockMap, BlockSource, DirtyReport, Generation, OpError, SnapshotHeader,
    allocated_bytes, apply_dirty, copy_ram, flatten, full_generation, pack,
};

#[test]
fn full_generation_punches_zero_blocks_and_maps_data() {
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("ram");
    let blocks = 1024u64; // 4 MiB
    let data: Vec<u64> = vec![1, 2, 5, 40, 41, 42, 700, 1023];
    let zero: Vec<u64> = (3..5).chain(10..30).chain(600..700).collect();
    write_sparse(&ram, blocks * BLOCK_SIZE, &data, &zero, 1);
    let before = allocated_bytes(&ram);
    assert!(
        before >= ((data.len() + zero.len()) * BS) as u64,
        "{before}"
    );

    let map = full_generation(&ram, blocks * BLOCK_SIZE, 4).unwrap();
    let expected = with_blocks(&BlockMap::new_zero(blocks), &data, BlockSource::Gen(4));
    assert_eq!(map, expected);
    let after = allocated_bytes(&ram);
    // The file system may add an extent-tree block or two.
    let want = (data.len() * BS) as u64;
    assert!(
        after >= want && after <= want + 64 * 1024,
        "before {before}, after {after}"
    );
    // Data is untouched, zero blocks still read as zero.
    let f = std::fs::File::open(&ram).unwrap();
    let mut buf = vec![0u8; BS];
    for b in 0..blocks {
        f.read_exact_at(&mut buf, b * BLOCK_SIZE).unwrap();
        if data.contains(&b) {
            assert_eq!(buf, pattern(b, 1), "block {b}");
        } else {
            assert!(buf.iter().all(|&x| x == 0), "block {b}");
        }
    }
    // Idempotent.
    assert_eq!(
        full_generation(&ram, blocks * BLOCK_SIZE, 4).unwrap(),
        expected
    );
    assert_eq!(allocated_bytes(&dir.path().join("missing")), 0);
}

#[test]
fn full_generation_rejects_wrong_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("ram");
    write_sparse(&ram, 16 * BLOCK_SIZE, &[1], &[], 1);
    let err = full_generation(&ram, 32 * BLOCK_SIZE, 0).unwrap_err();
    assert!(matches!(err, OpError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("ram"), "{err}");
    assert!(matches!(
        full_generation(&ram, 100, 0),
        Err(OpError::BadSize { bytes: 100 })
    ));
    let err = full_generation(&dir.path().join("nope"), 4096, 0).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

/// A 3-generation chain: gen 0 by absolute path (as a clone's template),
/// gens 1 and 2 relative; gen 2 zeroes some older blocks and maps one
/// block to a hole.
fn three_generation_chain(dir: &std::path::Path) -> SnapshotHeader {
    let blocks = 700u64; // > 2 copy buffers
    let mem = blocks * BLOCK_SIZE;
    let template = dir.join("template");
    std::fs::create_dir(&template).unwrap();
    let gen0 = template.join("gen-0");
    let data0: Vec<u64> = (0..300).filter(|b| b % 17 != 3).collect();
    write_sparse(&gen0, mem, &data0, &(300..310).collect::<Vec<_>>(), 0);
    let map0 = full_generation(&gen0, mem, 0).unwrap();

    let data1: Vec<u64> = [5, 6, 7, 400].into_iter().chain(100..150).collect();
    write_sparse(&dir.join("gen-1"), mem, &data1, &[], 1);
    let map1 = with_blocks(&map0, &data1, BlockSource::Gen(1));

    let data2: Vec<u64> = [6, 120].into_iter().chain(500..520).collect();
    write_sparse(&dir.join("gen-2"), mem, &data2, &[], 2);
    let mut map2 = with_blocks(&map1, &data2, BlockSource::Gen(2));
    map2.set_range(10, 2, BlockSource::Zero).unwrap();
    map2.set_range(550, 1, BlockSource::Gen(2)).unwrap(); // a hole in gen-2

    SnapshotHeader {
        memory_bytes: mem,
        generations: vec![
            Generation::sparse(0, gen0.to_str().unwrap().to_string()),
            Generation::sparse(1, "gen-1"),
            Generation::sparse(2, "gen-2"),
        ],
        map: map2,
        device_state: "device".into(),
        disk: "disk".into(),
        created_unix_ms: 0,
        meta: serde_json::Value::Null,
    }
}

#[test]
fn a_packed_generation_reads_as_its_sparse_original() {
    let dir = tempfile::tempdir().unwrap();
    let header = three_generation_chain(dir.path());
    let expected = chain_content(dir.path(), &header);
    let blocks = header.map.blocks();

    // Generation 1 packed from its sparse file (a superset of what the map
    // still takes from it, as a diff is).
    let runs = [(5, 3), (100, 50), (400, 1)];
    let written = pack(
        &dir.path().join("gen-1"),
        &runs,
        blocks,
        &dir.path().join("gen-1.packed"),
    )
    .unwrap();
    assert_eq!(
        written,
        std::fs::metadata(dir.path().join("gen-1.packed"))
            .unwrap()
            .len()
    );
    let mut packed = header.clone();
    packed.generations[1] = Generation::packed(1, "gen-1.packed");
    std::fs::remove_file(dir.path().join("gen-1")).unwrap();

    let dest = dir.path().join("merged");
    let (map, _) = flatten(dir.path(), &packed, &dest, 7).unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == expected,
        "flattening through a packed generation changed the memory"
    );
    assert_eq!(map.blocks(), blocks);

    // A packed file is checked when opened: damage is an error naming it.
    let path = dir.path().join("gen-1.packed");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let err = flatten(dir.path(), &packed, &dest, 8).unwrap_err();
    assert!(matches!(err, OpError::BadPacked { .. }), "{err}");
    assert!(err.to_string().contains("gen-1.packed"), "{err}");
}

#[test]
fn flatten_reproduces_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let header = three_generation_chain(dir.path());
    let expected = chain_content(dir.path(), &header);

    let dest = dir.path().join("merged");
    let (map, written) = flatten(dir.path(), &header, &dest, 7).unwrap();
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "flattened file differs from the chain");
    assert!(!dir.path().join("merged.tmp").exists());

    // Map: every nonzero block from gen 7, the hole at 550 and zeroed blocks are Zero.
    let nonzero: Vec<u64> = (0..header.map.blocks())
        .filter(|&b| {
            let at = (b * BLOCK_SIZE) as usize;
            expected[at..at + BS].iter().any(|&x| x != 0)
        })
        .collect();
    assert_eq!(
        map,
        with_blocks(
            &BlockMap::new_zero(header.map.blocks()),
            &nonzero,
            BlockSource::Gen(7)
        )
    );
    assert_eq!(map.lookup(550), Some(BlockSource::Zero));
    assert_eq!(map.lookup(10), Some(BlockSource::Zero));
    assert_eq!(written, nonzero.len() as u64 * BLOCK_SIZE);
    let used = allocated_bytes(&dest);
    assert!(
        used >= written && used <= written + 64 * 1024,
        "{used} vs {written}"
    );

    // The flattened generation alone reads as the chain did.
    let merged = SnapshotHeader {
        generations: vec![Generation::sparse(7, "merged")],
        map,
        ..header.clone()
    };
    assert!(chain_content(dir.path(), &merged) == expected);

    // Flattening over an existing file replaces it.
    let (_, again) = flatten(dir.path(), &header, &dest, 7).unwrap();
    assert_eq!(again, written);
    assert!(std::fs::read(&dest).unwrap() == expected);
}

#[test]
fn flatten_reports_missing_and_short_generations() {
    let dir = tempfile::tempdir().unwrap();
    let header = three_generation_chain(dir.path());
    let dest = dir.path().join("merged");

    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("gen-2"))
        .unwrap();
    f.set_len(100 * BLOCK_SIZE).unwrap();
    let err = flatten(dir.path(), &header, &dest, 7).unwrap_err();
    assert!(
        matches!(err, OpError::ShortGeneration { id: 2, .. }),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("gen-1")).unwrap();
    let err = flatten(dir.path(), &header, &dest, 7).unwrap_err();
    assert!(err.to_string().contains("gen-1"), "{err}");
    assert!(!dest.exists());
    assert!(!dir.path().join("merged.tmp").exists());
}

#[test]
fn apply_dirty_overlays_data_and_zero_runs() {
    let mut base = BlockMap::new_zero(100);
    base.set_range(0, 50, BlockSource::Gen(0)).unwrap();
    let report = DirtyReport {
        data_runs: vec![(10, 5), (60, 2)],
        zero_runs: vec![(0, 2), (20, 10)],
        ..DirtyReport::default()
    };
    let m = apply_dirty(&base, &report, 3).unwrap();
    let src = |b| m.lookup(b).unwrap();
    assert_eq!(src(0), BlockSource::Zero);
    assert_eq!(src(1), BlockSource::Zero);
    assert_eq!(src(2), BlockSource::Gen(0));
    assert_eq!(src(10), BlockSource::Gen(3));
    assert_eq!(src(14), BlockSource::Gen(3));
    assert_eq!(src(15), BlockSource::Gen(0));
    assert_eq!(src(25), BlockSource::Zero);
    assert_eq!(src(30), BlockSource::Gen(0));
    assert_eq!(src(61), BlockSource::Gen(3));
    assert_eq!(src(62), BlockSource::Zero);
    assert_eq!(
        apply_dirty(&base, &DirtyReport::default(), 3).unwrap(),
        base
    );

    let bad = |data: Vec<(u64, u64)>, zero: Vec<(u64, u64)>| {
        let r = DirtyReport {
            data_runs: data,
            zero_runs: zero,
            ..DirtyReport::default()
        };
        apply_dirty(&base, &r, 3).unwrap_err()
    };
    assert!(matches!(
        bad(vec![(5, 5)], vec![(8, 1)]),
        OpError::InvalidDirty { .. }
    ));
    assert!(matches!(
        bad(vec![(5, 5), (1, 1)], vec![]),
        OpError::InvalidDirty { .. }
    ));
    assert!(matches!(
        bad(vec![(99, 2)], vec![]),
        OpError::InvalidDirty { .. }
    ));
    assert!(matches!(
        bad(vec![], vec![(u64::MAX, 2)]),
        OpError::InvalidDirty { .. }
    ));
    let lost = DirtyReport {
        write_errors: 2,
        first_error: Some("No space left on device".into()),
        ..DirtyReport::default()
    };
    let err = apply_dirty(&base, &lost, 3).unwrap_err();
    assert!(err.to_string().contains("No space"), "{err}");
}

#[test]
fn copy_ram_writes_only_data_blocks_and_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("ram");
    let blocks = 1024u64;
    let data: Vec<u64> = vec![0, 7, 400, 1023];
    let zero: Vec<u64> = (100..356).collect(); // written, but zero: 1 MiB
    write_sparse(&ram, blocks * BLOCK_SIZE, &data, &zero, 3);
    let dest = dir.path().join("memory");
    std::fs::write(&dest, b"old").unwrap();

    let written = copy_ram(&ram, &dest).unwrap();

    assert_eq!(written, data.len() as u64 * BLOCK_SIZE);
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&ram).unwrap());
    assert!(allocated_bytes(&dest) <= written + 64 * 1024);
    assert!(!dir.path().join("memory.tmp").exists());
    // The copy is what a first pause makes a generation of.
    let map = full_generation(&dest, blocks * BLOCK_SIZE, 0).unwrap();
    let expected = with_blocks(&BlockMap::new_zero(blocks), &data, BlockSource::Gen(0));
    assert_eq!(map, expected);
}

#[test]
fn a_failed_copy_ram_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("memory");
    std::fs::write(&dest, b"old").unwrap();
    let error = copy_ram(&dir.path().join("missing"), &dest).unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    assert!(!dir.path().join("memory.tmp").exists());
}
