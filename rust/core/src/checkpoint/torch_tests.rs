//! Tests of torch-format checkpoints without an interpreter: the layout and framing the writer
//! produces read back through the reader (alignment, CRCs, zip64), and the pickle machine's
//! refusals.

use super::format::{Dtype, TensorSpec};
use super::json_tree::{self, Node};
use super::pickle;
use super::torchzip::{self, TorchLayout, ALIGN};

fn spec(name: &str, dtype: Dtype, shape: &[u64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

/// Build the whole file in memory as the writer does: tensor bytes at their offsets, then the
/// framing with their CRCs.
fn build(layout: &TorchLayout, data: &[Vec<u8>]) -> Vec<u8> {
    let mut file = vec![0u8; layout.file_len() as usize];
    let mut crcs = Vec::new();
    for (d, &at) in data.iter().zip(layout.tensor_at()) {
        file[at as usize..at as usize + d.len()].copy_from_slice(d);
        crcs.push(crc32fast::hash(d));
    }
    for (at, bytes) in layout.framing(&crcs).unwrap_or_default() {
        file[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
    }
    file
}

const TREE: &str = r#"{"dict":{"state_dict":{"odict":{"w":{"tensor":"w","param":true},"b":{"tensor":"b"}},"meta":{"dict":{"":{"dict":{"version":1}}}}},"step":12,"big":123456789012345678901234567890,"lr":{"float":"nan"},"shape":{"size":[2,3]},"t":{"tuple":[1,"x",null,true]},"dt":{"dtype":"bfloat16"},"dev":{"device":"cpu"},"raw":{"bytes_hex":"00ff"},"again":{"tensor":"w","param":true},"h":{"tensor":"h"}}}"#;

fn sample(limit: Option<u64>) -> (Vec<u8>, TorchLayout) {
    let specs = vec![
        spec("w", Dtype::F32, &[2, 3]),
        spec("b", Dtype::I64, &[3]),
        spec("h", Dtype::U16, &[5]),
    ];
    let layout = match limit {
        Some(l) => TorchLayout::with_limit(specs, TREE, l),
        None => TorchLayout::new(specs, TREE),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let data = vec![(0..24u8).collect(), vec![7u8; 24], vec![1u8; 10]];
    (build(&layout, &data), layout)
}

#[test]
fn written_files_read_back_with_aligned_storages_and_the_same_tree() {
    let (file, layout) = sample(None);
    assert!(torchzip::is_zip(&file));
    for &at in layout.tensor_at() {
        assert_eq!(at % ALIGN, 0, "storage at {at} is not {ALIGN}-byte aligned");
    }
    let opened = torchzip::check_bytes(&file).unwrap_or_else(|e| panic!("{}", e.0));
    let keys: Vec<(&str, Dtype, u64)> = opened
        .storages
        .iter()
        .map(|s| (s.storage.key.as_str(), s.storage.dtype, s.storage.nbytes))
        .collect();
    assert_eq!(keys, vec![("0", Dtype::F32, 24), ("1", Dtype::I64, 24), ("2", Dtype::U8, 10)]);
    let tree = json_tree::parse(&opened.tree).unwrap_or(Node::Null);
    let Some(Node::List(items)) = tree.get("dict") else {
        panic!("not a dict: {}", opened.tree)
    };
    let names: Vec<String> = items
        .iter()
        .filter_map(|p| match p {
            Node::List(kv) => match kv.first() {
                Some(Node::Str(k)) => Some(k.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(names, ["state_dict", "step", "big", "lr", "shape", "t", "dt", "dev", "raw", "again", "h"]);
    for want in [
        r#""123456789012345678901234567890""#.trim_matches('"'),
        r#"{"float":"nan"}"#,
        r#"{"size":[2,3]}"#,
        r#"{"dtype":"bfloat16"}"#,
        r#"{"device":"cpu"}"#,
        r#"{"bytes_hex":"00ff"}"#,
        r#"{"ref":0}"#,
        r#"[2,0,[5],[1],"U16",false]"#,
        r#"[0,0,[2,3],[3,1],"F32",false]"#,
        r#""meta":{"dict""#,
    ] {
        assert!(opened.tree.contains(want), "{want} not in {}", opened.tree);
    }
}

#[test]
fn zip64_records_read_back_where_sizes_or_offsets_need_them() {
    // A limit of 64 bytes forces zip64 fields on nearly every entry and the zip64 end records.
    let (file, layout) = sample(Some(64));
    let entries = torchzip::read_entries(&file.as_slice()).unwrap_or_else(|e| panic!("{}", e.0));
    assert_eq!(entries.len(), 8);
    let opened = torchzip::check_bytes(&file).unwrap_or_else(|e| panic!("{}", e.0));
    let at: Vec<u64> = opened.storages.iter().map(|s| s.data_at).collect();
    assert_eq!(at, layout.tensor_at());
    assert!(file.windows(4).any(|w| w == 0x0606_4b50u32.to_le_bytes()));
}

#[test]
fn a_flipped_storage_byte_or_crc_names_the_entry() {
    let (mut file, layout) = sample(None);
    file[layout.tensor_at()[1] as usize + 3] ^= 1;
    let err = torchzip::check_bytes(&file).err().map(|e| e.0).unwrap_or_default();
    assert!(err.contains("checksum mismatch in entry 'data/1'"), "{err}");
}

#[test]
fn unsupported_globals_opcodes_and_malformed_streams_are_refused() {
    let cases: [(&[u8], &str); 6] = [
        (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x85R.", "the global os.system"),
        (b"\x80\x02cbuiltins\nset\n)R.", "the global builtins.set"),
        (b"\x80\x02(cos\nsystem\ni.", "the global os.system"),
        (b"\x80\x02(X\x01\x00\x00\x00xi__main__\nC\n.", "opcode 0x69"),
        (b"\x80\x02K\x01K\x02.", "malformed stack"),
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x00K\x00)K\x01)\x89)tR.", "storage"),
    ];
    for (bytes, want) in cases {
        let err = pickle::decode(bytes).err().map(|e| e.0).unwrap_or_default();
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
}

#[test]
fn a_view_past_its_storage_is_refused() {
    // A tensor of 10 floats over a storage of 4.
    let p = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\n\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR.";
    let err = pickle::decode(p).err().map(|e| e.0).unwrap_or_default();
    assert!(err.contains("runs past its 16-byte storage '0'"), "{err}");
}
