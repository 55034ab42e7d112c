//! Unit tests and fuzz-style property tests of the checkpoint format and I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;

use super::format::{self, Dtype, Layout, TensorSpec};
use super::io::{check_bytes, open_checkpoint, write_atomic};
use super::parallel;
use super::{AsyncWriter, CheckpointError};

fn spec(name: &str, dtype: Dtype, shape: &[u64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

fn meta() -> BTreeMap<String, String> {
    BTreeMap::from([("format".to_string(), "pt".to_string())])
}

/// Deterministic bytes for a tensor of `n` bytes.
fn bytes_for(seed: u8, n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A valid file built in memory, plus its layout.
fn encode(specs: Vec<TensorSpec>, tree: &str) -> (Vec<u8>, Layout) {
    let layout = Layout::new(specs, tree, meta()).unwrap();
    let data: Vec<Vec<u8>> = layout
        .nbytes()
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes_for(i as u8, n))
        .collect();
    let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let crcs = parallel::crcs_of(&slices).unwrap();
    let mut file = layout.header_bytes(&crcs).unwrap();
    file.resize(layout.file_len() as usize, 0);
    for ((&off, d), _) in layout.offsets().iter().zip(&data).zip(layout.specs()) {
        let at = (layout.data_start() + off) as usize;
        file[at..at + d.len()].copy_from_slice(d);
    }
    (file, layout)
}

fn sample() -> (Vec<u8>, Layout) {
    encode(
        vec![
            spec("state_dict/w", Dtype::BF16, &[3, 5]),
            spec("step", Dtype::I64, &[]),
            spec("mask", Dtype::Bool, &[7]),
            spec("empty", Dtype::F32, &[0, 4]),
            spec("w32", Dtype::F32, &[2, 3]),
        ],
        r#"{"dict":{"w":{"tensor":"state_dict/w"}}}"#,
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotrain-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Rewrite the header JSON of `file` with `edit`, keeping the data region.
fn with_header(file: &[u8], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let mut v: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    edit(&mut v);
    let mut json = serde_json::to_vec(&v).unwrap();
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&file[8 + n..]);
    out
}

fn err_of(file: &[u8]) -> String {
    check_bytes(file, true).unwrap_err().0
}

#[test]
fn layout_aligns_every_tensor_and_the_data_region() {
    let (_, layout) = sample();
    assert_eq!(layout.data_start() % 8, 0);
    for (s, &off) in layout.specs().iter().zip(layout.offsets()) {
        assert_eq!(off % s.dtype.size(), 0, "{} misaligned", s.name);
    }
    assert_eq!(layout.data_len(), 3 * 5 * 2 + 8 + 7 + 2 * 3 * 4);
}

#[test]
fn header_length_does_not_depend_on_checksums() {
    let (_, layout) = sample();
    let a = layout.header_bytes(&[0; 5]).unwrap();
    let b = layout.header_bytes(&[u32::MAX; 5]).unwrap();
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len() as u64, layout.data_start());
}

#[test]
fn valid_file_parses_with_every_entry() {
    let (file, layout) = sample();
    let h = check_bytes(&file, true).unwrap();
    assert_eq!(h.entries.len(), 5);
    assert_eq!(h.data_start, layout.data_start());
    let w = h.entries.iter().find(|e| e.name == "state_dict/w").unwrap();
    assert_eq!((w.dtype, w.shape.clone()), (Dtype::BF16, vec![3, 5]));
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    assert!(h.metadata.contains_key(format::TREE_KEY));
}

#[test]
fn layout_rejects_duplicate_and_reserved_names() {
    let dup = Layout::new(
        vec![spec("a", Dtype::U8, &[1]), spec("a", Dtype::U8, &[1])],
        "{}",
        meta(),
    );
    assert!(matches!(dup, Err(CheckpointError::Invalid(_))));
    let reserved = Layout::new(vec![spec("__metadata__", Dtype::U8, &[1])], "{}", meta());
    assert!(reserved.is_err());
    let mut m = meta();
    m.insert(format::CHECKSUMS_KEY.into(), "{}".into());
    assert!(Layout::new(vec![], "{}", m).is_err());
    assert!(Layout::new(vec![spec("x", Dtype::F64, &[u64::MAX, 2])], "{}", meta()).is_err());
}

#[test]
fn truncated_file_is_corrupt() {
    let (file, _) = sample();
    for cut in [0, 4, 8, 20, file.len() - 1] {
        assert!(check_bytes(&file[..cut], true).is_err(), "cut at {cut}");
    }
}

#[test]
fn wrong_magic_and_oversized_header_length_are_corrupt() {
    let (mut file, _) = sample();
    let mut bad = file.clone();
    bad[8] = b'[';
    assert!(err_of(&bad).contains("magic"));
    let len = file.len() as u64;
    file[..8].copy_from_slice(&len.to_le_bytes());
    assert!(err_of(&file).contains("past the end"));
    file[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err_of(&file).contains("limit"));
}

#[test]
fn flipped_data_bit_names_the_tensor() {
    let (mut file, layout) = sample();
    let i = layout.specs().iter().position(|s| s.name == "w32").unwrap();
    let at = (layout.data_start() + layout.offsets()[i]) as usize + 3;
    file[at] ^= 0x10;
    let msg = err_of(&file);
    assert!(msg.contains("checksum mismatch in tensor 'w32'"), "{msg}");
    // Without verification the header is still valid.
    assert!(check_bytes(&file, false).is_ok());
}

#[test]
fn bad_entries_are_corrupt() {
    let (file, _) = sample();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "unknown dtype",
            Box::new(|v| v["w32"]["dtype"] = "F17".into()),
        ),
        (
            "needs",
            Box::new(|v| v["w32"]["shape"] = serde_json::json!([2, 4])),
        ),
        (
            "absurd",
            Box::new(|v| v["empty"]["shape"] = serde_json::json!([0, u64::MAX])),
        ),
        (
            "outside",
            Box::new(|v| v["w32"]["data_offsets"] = serde_json::json!([0, 1u64 << 40])),
        ),
        (
            "overlaps",
            Box::new(|v| {
                let s = v["mask"]["data_offsets"][0].as_u64().unwrap();
                v["mask"]["data_offsets"] = serde_json::json!([s - 1, s + 6]);
            }),
        ),
        (
            "not a non-negative integer",
            Box::new(|v| v["w32"]["shape"] = serde_json::json!([-2, 3])),
        ),
        ("exactly", Box::new(|v| v["w32"]["extra"] = 1.into())),
        (
            "checksum",
            Box::new(|v| {
                v["__metadata__"][format::CHECKSUMS_KEY] = r#"{"w32":"zz"}"#.into();
            }),
        ),
        (
            "not a ferrotrain checkpoint",
            Box::new(|v| {
                v["__metadata__"]
                    .as_object_mut()
                    .unwrap()
                    .remove(format::FORMAT_KEY);
            }),
        ),
        (
            "tree",
            Box::new(|v| v["__metadata__"][format::TREE_KEY] = "{}".into()),
        ),
    ];
    for (want, edit) in cases {
        let msg = err_of(&with_header(&file, edit));
        assert!(msg.contains(want), "expected '{want}' in '{msg}'");
    }
}

#[test]
fn write_then_open_round_trips_and_replaces_atomically() {
    let dir = temp_dir("rt");
    let path = dir.join("a.ckpt");
    let layout = Layout::new(
        vec![spec("x", Dtype::F32, &[4]), spec("y", Dtype::U8, &[3])],
        "{}",
        meta(),
    )
    .unwrap();
    let x = bytes_for(1, 16);
    let y = bytes_for(2, 3);
    write_atomic(&path, &layout, &[&x, &y]).unwrap();
    let y2 = bytes_for(9, 3);
    write_atomic(&path, &layout, &[&x, &y2]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let h = check_bytes(&bytes, true).unwrap();
    let e = h.entries.iter().find(|e| e.name == "y").unwrap();
    let at = (h.data_start + e.start) as usize;
    assert_eq!(&bytes[at..at + 3], &y2[..]);
    let f = std::fs::File::open(&path).unwrap();
    assert_eq!(open_checkpoint(&f, &path, true).unwrap().entries.len(), 2);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_into_missing_folder_names_the_path() {
    let path = std::env::temp_dir()
        .join("ferrotrain-no-such-dir")
        .join("x.ckpt");
    let layout = Layout::new(vec![], "{}", meta()).unwrap();
    let err = write_atomic(&path, &layout, &[]).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }));
    assert!(err.to_string().contains("x.ckpt"), "{err}");
}

#[test]
fn async_writer_reports_each_result_once() {
    let dir = temp_dir("async");
    let layout = Layout::new(vec![spec("x", Dtype::I64, &[2])], "{}", meta()).unwrap();
    let mut w = AsyncWriter::new();
    w.start(
        dir.join("ok.ckpt"),
        layout.clone(),
        Box::new(bytes_for(3, 16)),
    )
    .unwrap();
    assert!(w.in_flight());
    w.wait().unwrap();
    assert!(!w.in_flight());
    assert!(dir.join("ok.ckpt").exists());
    // A failing write: its error comes back at the next start, which is then not started.
    w.start(
        dir.join("missing").join("x.ckpt"),
        layout.clone(),
        Box::new(bytes_for(3, 16)),
    )
    .unwrap();
    let err = w
        .start(
            dir.join("next.ckpt"),
            layout.clone(),
            Box::new(bytes_for(3, 16)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("x.ckpt"), "{err}");
    assert!(!w.in_flight());
    w.wait().unwrap();
    assert!(w
        .start(dir.join("small.ckpt"), layout, Box::new(vec![0u8; 3]))
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parallel_copy_places_bytes_and_rejects_overlaps() {
    let big = bytes_for(5, 3 * parallel::PIECE + 17);
    let small = bytes_for(6, 10);
    let mut dst = vec![0u8; big.len() + 20];
    parallel::parallel_copy(&mut dst, &[(&small, 0), (&big, 16)]).unwrap();
    assert_eq!(&dst[..10], &small[..]);
    assert_eq!(&dst[16..16 + big.len()], &big[..]);
    assert!(parallel::parallel_copy(&mut dst, &[(&small, 0), (&small, 5)]).is_err());
    assert!(parallel::parallel_copy(&mut dst, &[(&small, big.len() as u64 + 15)]).is_err());
}

#[test]
fn crcs_of_split_tensors_match_a_single_pass() {
    let big = bytes_for(7, 2 * parallel::PIECE + 5);
    assert_eq!(
        parallel::crcs_of(&[&big, &[]]).unwrap(),
        vec![crc32fast::hash(&big), 0]
    );
}

fn arb_dtype() -> impl Strategy<Value = Dtype> {
    proptest::sample::select(Dtype::ALL.to_vec())
}

fn arb_specs() -> impl Strategy<Value = Vec<TensorSpec>> {
    proptest::collection::vec(
        (arb_dtype(), proptest::collection::vec(0u64..5, 0..3)),
        0..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (d, s))| TensorSpec {
                name: format!("t{i}"),
                dtype: d,
                shape: s,
            })
            .collect()
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Prefix(u64),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<u64>().prop_map(Mutation::Prefix),
    ]
}

fn apply(file: &mut Vec<u8>, m: &Mutation) {
    let n = file.len();
    match *m {
        Mutation::Flip(i, b) => file[i % n] ^= b,
        Mutation::Truncate(i) => file.truncate(i % n),
        Mutation::Insert(i, b) => file.insert(i % (n + 1), b),
        Mutation::Prefix(v) => file[..8].copy_from_slice(&v.to_le_bytes()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_layout_round_trips(specs in arb_specs()) {
        let (file, layout) = encode(specs.clone(), "{}");
        let h = check_bytes(&file, true).unwrap();
        prop_assert_eq!(h.entries.len(), specs.len());
        for e in &h.entries {
            prop_assert_eq!(e.start % e.dtype.size(), 0);
        }
        prop_assert_eq!(h.data_len, layout.data_len());
    }

    #[test]
    fn mutated_files_never_panic(specs in arb_specs(), muts in proptest::collection::vec(arb_mutation(), 1..4)) {
        let (mut file, _) = encode(specs, r#"{"dict":{}}"#);
        for m in &muts {
            if file.len() < 8 { break; }
            apply(&mut file, m);
        }
        // Ok or Err, never a panic; and a single flipped data/header bit never passes silently
        // unless it landed in the header's whitespace padding or JSON-equivalent text.
        let _ = check_bytes(&file, true);
    }

    #[test]
    fn a_single_flip_in_the_data_region_is_detected(specs in arb_specs(), at in any::<usize>(), bit in 0u8..8) {
        let (mut file, layout) = encode(specs, "{}");
        prop_assume!(layout.data_len() > 0);
        let i = layout.data_start() as usize + at % layout.data_len() as usize;
        file[i] ^= 1 << bit;
        let msg = check_bytes(&file, true).unwrap_err().0;
        prop_assert!(msg.contains("checksum mismatch in tensor"), "{}", msg);
    }
}

#[test]
fn submit_copies_while_writing_and_the_file_holds_the_snapshot() {
    let dir = temp_dir("submit");
    let n_big = 3 * parallel::PIECE + 11;
    let layout = Layout::new(
        vec![
            spec("big", Dtype::U8, &[n_big]),
            spec("pre", Dtype::U8, &[7]),
            spec("small", Dtype::U8, &[5]),
        ],
        "{}",
        meta(),
    )
    .unwrap();
    let mut big = bytes_for(9, n_big);
    let small = bytes_for(4, 5);
    let pre = bytes_for(2, 7);
    let mut buffer = vec![0u8; layout.data_len() as usize];
    // "pre" is filled by the caller before submit (as torch does for device tensors).
    let at = layout.offsets()[1] as usize;
    buffer[at..at + 7].copy_from_slice(&pre);
    let mut w = AsyncWriter::new();
    let path = dir.join("s.ckpt");
    let expected = big.clone();
    w.submit(
        path.clone(),
        layout.clone(),
        Box::new(buffer),
        &[(&big, layout.offsets()[0]), (&small, layout.offsets()[2])],
    )
    .unwrap();
    // The caller may modify its tensors as soon as submit returns: the file keeps the snapshot.
    big.iter_mut().for_each(|b| *b = 0xAA);
    w.wait().unwrap();
    let file = std::fs::read(&path).unwrap();
    let header = check_bytes(&file, true).unwrap();
    let data = &file[header.data_start as usize..];
    let get = |name: &str| {
        let e = header.entries.iter().find(|e| e.name == name).unwrap();
        data[e.start as usize..e.end as usize].to_vec()
    };
    assert_eq!(get("big"), expected);
    assert_eq!(get("pre"), pre);
    assert_eq!(get("small"), small);
    // A copy that matches no tensor is refused before anything starts.
    let err = w
        .submit(
            dir.join("bad.ckpt"),
            layout.clone(),
            Box::new(vec![0u8; layout.data_len() as usize]),
            &[(&small, layout.offsets()[0])],
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!w.in_flight());
    assert!(!dir.join("bad.ckpt").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_held_write_reaches_its_name_only_when_committed_and_a_discarded_one_never() {
    let dir = temp_dir("held");
    let n = 2 * parallel::PIECE + 3;
    let layout = Layout::new(vec![spec("w", Dtype::U8, &[n])], "{}", meta()).unwrap();
    let old = bytes_for(1, n);
    let new = bytes_for(5, n);
    let path = dir.join("h.ckpt");
    let mut w = AsyncWriter::new();
    let buffer = || Box::new(vec![0u8; layout.data_len() as usize]);
    w.submit_held(path.clone(), layout.clone(), buffer(), &[(&old, 0)], Vec::new(), true)
        .unwrap();
    assert!(w.held());
    // The copy is done and the writer has had time to write every piece: it still waits.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!path.exists());
    w.commit();
    assert!(!w.held());
    w.wait().unwrap();
    let read = |p: &std::path::Path| {
        let file = std::fs::read(p).unwrap();
        let header = check_bytes(&file, true).unwrap();
        file[header.data_start as usize..][..n as usize].to_vec()
    };
    assert_eq!(read(&path), old);
    // Discarded: the error comes from the next wait, the file at `path` stays the old one,
    // and no temporary file is left behind.
    w.submit_held(path.clone(), layout.clone(), buffer(), &[(&new, 0)], Vec::new(), true)
        .unwrap();
    w.discard();
    assert!(w.wait().is_err());
    assert_eq!(read(&path), old);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("h.ckpt")]);
    std::fs::remove_dir_all(&dir).unwrap();
}
