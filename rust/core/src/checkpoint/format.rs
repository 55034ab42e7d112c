//! The on-disk layout: a safetensors file with ferrotrain's metadata.
//!
//! ```text
//! [u64 little-endian N] [N bytes of JSON header, padded with spaces] [data region]
//! header = {"__metadata__": {str: str}, "<tensor name>": {"dtype", "shape", "data_offsets"}, ...}
//! ```
//!
//! `data_offsets` are relative to the data region; the tensors tile it exactly (no gap, no
//! overlap), as the `safetensors` library requires. ferrotrain adds four metadata keys:
//! `ferrotrain.format` (the version), `ferrotrain.tree` (a JSON document describing the nested
//! checkpoint, tensors referenced by name; owned and decoded by the Python layer),
//! `ferrotrain.tree_crc32` and `ferrotrain.crc32` (a JSON map tensor name -> CRC-32 as 8 hex
//! digits). Tensors are ordered by decreasing element size and the data region starts on an
//! 8-byte boundary, so every tensor is aligned for zero-copy memory mapping.
//!
//! This module owns the layout arithmetic, the header's serialisation and its validation; it
//! does no I/O (see `io.rs`) and knows nothing about Python.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::error::{CheckpointError, FormatError};

pub const FORMAT_KEY: &str = "ferrotrain.format";
pub const FORMAT_VERSION: &str = "1";
pub const TREE_KEY: &str = "ferrotrain.tree";
pub const TREE_CHECKSUM_KEY: &str = "ferrotrain.tree_crc32";
pub const CHECKSUMS_KEY: &str = "ferrotrain.crc32";
const METADATA_KEY: &str = "__metadata__";
/// The safetensors library refuses headers above 100 MB; so do we (it also bounds what a hostile
/// header length can make us allocate).
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// The data region starts on this boundary (the largest element size).
const DATA_ALIGN: u64 = 8;
const CRC_PLACEHOLDER: u32 = 0;

/// Element types, named as safetensors names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
    F8E4M3,
    F8E5M2,
    F8E4M3Fnuz,
    F8E5M2Fnuz,
    C64,
}

impl Dtype {
    pub const ALL: [Dtype; 18] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::U16,
        Dtype::I16,
        Dtype::U32,
        Dtype::I32,
        Dtype::U64,
        Dtype::I64,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F32,
        Dtype::F64,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::F8E4M3Fnuz,
        Dtype::F8E5M2Fnuz,
        Dtype::C64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3Fnuz => "F8_E4M3FNUZ",
            Dtype::F8E5M2Fnuz => "F8_E5M2FNUZ",
            Dtype::C64 => "C64",
        }
    }

    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F8E4M3Fnuz | Dtype::F8E5M2Fnuz => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 | Dtype::C64 => 8,
        }
    }
}

/// Byte count of a tensor, or None when the shape is absurd: a dimension above i64::MAX, or an
/// element count (zero dimensions counted as one) that overflows i64 — torch could not build it.
pub fn tensor_nbytes(dtype: Dtype, shape: &[u64]) -> Option<u64> {
    let mut numel: u64 = 1;
    let mut bound: u64 = 1;
    for &d in shape {
        if d > i64::MAX as u64 {
            return None;
        }
        numel = numel.checked_mul(d)?;
        bound = bound.checked_mul(d.max(1))?;
    }
    if bound > i64::MAX as u64 {
        return None;
    }
    numel.checked_mul(dtype.size())
}

/// One tensor to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
}

/// Where each tensor goes in a file about to be written, and the header's exact length.
#[derive(Clone, Debug)]
pub struct Layout {
    specs: Vec<TensorSpec>,
    /// Per spec (input order): start relative to the data region.
    offsets: Vec<u64>,
    nbytes: Vec<u64>,
    data_len: u64,
    metadata: BTreeMap<String, String>,
    /// Length of the padded JSON (without the 8-byte prefix); the same for any checksums, since
    /// each is written as exactly 8 hex digits.
    header_json_len: u64,
}

impl Layout {
    /// Place `specs` (names unique) behind a header carrying the `tree` document and the extra
    /// `metadata`; the `ferrotrain.*` keys (version, tree, checksums) are added here and must
    /// not be given.
    pub fn new(
        specs: Vec<TensorSpec>,
        tree: &str,
        mut metadata: BTreeMap<String, String>,
    ) -> Result<Layout, CheckpointError> {
        if let Some(k) = metadata.keys().find(|k| k.starts_with("ferrotrain.")) {
            return Err(CheckpointError::Invalid(format!(
                "metadata key '{k}' is reserved"
            )));
        }
        metadata.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
        metadata.insert(TREE_KEY.into(), tree.into());
        metadata.insert(
            TREE_CHECKSUM_KEY.into(),
            format!("{:08x}", crc32fast::hash(tree.as_bytes())),
        );
        let mut seen = HashSet::with_capacity(specs.len());
        let mut nbytes = Vec::with_capacity(specs.len());
        for s in &specs {
            if s.name == METADATA_KEY || !seen.insert(s.name.as_str()) {
                return Err(CheckpointError::Invalid(format!(
                    "tensor name '{}' is reserved or used twice",
                    s.name
                )));
            }
            let n = tensor_nbytes(s.dtype, &s.shape).ok_or_else(|| {
                CheckpointError::Invalid(format!(
                    "tensor '{}' has an absurd shape {:?}",
                    s.name, s.shape
                ))
            })?;
            nbytes.push(n);
        }
        // Largest elements first: every tensor then starts on a multiple of its element size.
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(specs[i].dtype.size()));
        let mut offsets = vec![0u64; specs.len()];
        let mut cursor: u64 = 0;
        for &i in &order {
            offsets[i] = cursor;
            cursor = cursor.checked_add(nbytes[i]).ok_or_else(|| {
                CheckpointError::Invalid("checkpoint larger than 2^64 bytes".into())
            })?;
        }
        let mut layout = Layout {
            specs,
            offsets,
            nbytes,
            data_len: cursor,
            metadata,
            header_json_len: 0,
        };
        let placeholder = vec![CRC_PLACEHOLDER; layout.specs.len()];
        let json = layout.header_json(&placeholder)?;
        let unpadded = json.len() as u64;
        // Pad so that the data region (8 + json) starts on DATA_ALIGN.
        layout.header_json_len = (8 + unpadded).div_ceil(DATA_ALIGN) * DATA_ALIGN - 8;
        if layout.header_json_len > MAX_HEADER_LEN {
            return Err(CheckpointError::Invalid(format!(
                "header of {} bytes exceeds the {MAX_HEADER_LEN}-byte limit (too many tensors or too much metadata)",
                layout.header_json_len
            )));
        }
        Ok(layout)
    }

    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Start of each tensor relative to the data region, in input order.
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    pub fn nbytes(&self) -> &[u64] {
        &self.nbytes
    }

    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Absolute file offset of the data region.
    pub fn data_start(&self) -> u64 {
        8 + self.header_json_len
    }

    pub fn file_len(&self) -> u64 {
        self.data_start() + self.data_len
    }

    fn header_json(&self, crcs: &[u32]) -> Result<Vec<u8>, CheckpointError> {
        let mut sums = Map::new();
        for (s, c) in self.specs.iter().zip(crcs) {
            sums.insert(s.name.clone(), Value::String(format!("{c:08x}")));
        }
        let mut meta: Map<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        meta.insert(
            CHECKSUMS_KEY.to_string(),
            Value::String(Value::Object(sums).to_string()),
        );
        let mut root = Map::new();
        root.insert(METADATA_KEY.to_string(), Value::Object(meta));
        for ((s, &off), &n) in self.specs.iter().zip(&self.offsets).zip(&self.nbytes) {
            let mut entry = Map::new();
            entry.insert("dtype".into(), Value::String(s.dtype.name().into()));
            entry.insert(
                "shape".into(),
                Value::Array(s.shape.iter().map(|&d| Value::from(d)).collect()),
            );
            entry.insert(
                "data_offsets".into(),
                Value::Array(vec![Value::from(off), Value::from(off + n)]),
            );
            root.insert(s.name.clone(), Value::Object(entry));
        }
        serde_json::to_vec(&Value::Object(root))
            .map_err(|e| CheckpointError::Invalid(format!("cannot serialise the header: {e}")))
    }

    /// The 8-byte length prefix and the padded JSON header, with the given per-tensor CRC-32s
    /// (input order).
    pub fn header_bytes(&self, crcs: &[u32]) -> Result<Vec<u8>, CheckpointError> {
        if crcs.len() != self.specs.len() {
            return Err(CheckpointError::Invalid(
                "one checksum per tensor expected".into(),
            ));
        }
        let json = self.header_json(crcs)?;
        let padded = self.header_json_len as usize;
        if json.len() > padded {
            return Err(CheckpointError::Invalid("header grew after layout".into()));
        }
        let mut out = Vec::with_capacity(8 + padded);
        out.extend_from_slice(&self.header_json_len.to_le_bytes());
        out.extend_from_slice(&json);
        out.resize(8 + padded, b' ');
        Ok(out)
    }
}

/// One tensor found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range relative to the data region.
    pub start: u64,
    pub end: u64,
}

/// A validated header.
#[derive(Clone, Debug)]
pub struct ParsedHeader {
    /// Absolute offset of the data region.
    pub data_start: u64,
    pub data_len: u64,
    /// In file order.
    pub entries: Vec<Entry>,
    pub metadata: BTreeMap<String, String>,
}

/// Validate the 8-byte prefix against the file's length; returns the JSON header's length.
pub fn header_len(prefix: [u8; 8], file_len: u64) -> Result<u64, FormatError> {
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_LEN {
        return Err(FormatError::new(format!(
            "header length {n} exceeds the {MAX_HEADER_LEN}-byte limit"
        )));
    }
    if n.checked_add(8).map_or(true, |end| end > file_len) {
        return Err(FormatError::new(format!(
            "header length {n} runs past the end of the {file_len}-byte file"
        )));
    }
    if n < 2 {
        return Err(FormatError::new("header too short"));
    }
    Ok(n)
}

fn as_u64(v: &Value, what: &str) -> Result<u64, FormatError> {
    v.as_u64()
        .ok_or_else(|| FormatError::new(format!("{what} is not a non-negative integer")))
}

fn parse_entry(name: &str, v: &Value, data_len: u64) -> Result<Entry, FormatError> {
    let obj = v
        .as_object()
        .ok_or_else(|| FormatError::new(format!("entry of tensor '{name}' is not an object")))?;
    if obj.len() != 3 {
        return Err(FormatError::new(format!(
            "entry of tensor '{name}' must have exactly dtype, shape, data_offsets"
        )));
    }
    let dtype_name = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| FormatError::new(format!("tensor '{name}' has no dtype")))?;
    let dtype = Dtype::parse(dtype_name).ok_or_else(|| {
        FormatError::new(format!("tensor '{name}' has unknown dtype '{dtype_name}'"))
    })?;
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| FormatError::new(format!("tensor '{name}' has no shape")))?
        .iter()
        .map(|d| as_u64(d, &format!("a dimension of tensor '{name}'")))
        .collect::<Result<Vec<u64>, _>>()?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| FormatError::new(format!("tensor '{name}' has no data_offsets")))?;
    let [start, end] = offsets.as_slice() else {
        return Err(FormatError::new(format!(
            "data_offsets of tensor '{name}' must be [begin, end]"
        )));
    };
    let start = as_u64(start, &format!("data_offsets of tensor '{name}'"))?;
    let end = as_u64(end, &format!("data_offsets of tensor '{name}'"))?;
    if start > end || end > data_len {
        return Err(FormatError::new(format!(
            "tensor '{name}' has data_offsets [{start}, {end}] outside the {data_len}-byte data region"
        )));
    }
    let nbytes = tensor_nbytes(dtype, &shape).ok_or_else(|| {
        FormatError::new(format!("tensor '{name}' has an absurd shape {shape:?}"))
    })?;
    if nbytes != end - start {
        return Err(FormatError::new(format!(
            "tensor '{name}' of shape {shape:?} and dtype {dtype_name} needs {nbytes} bytes but data_offsets span {}",
            end - start
        )));
    }
    Ok(Entry {
        name: name.to_string(),
        dtype,
        shape,
        start,
        end,
    })
}

/// Parse and validate the JSON header of a file whose data region is `data_len` bytes long.
/// Checks every entry (known dtype, shape matching the byte count, offsets in range) and that the
/// tensors tile the data region exactly.
pub fn parse_header(
    json: &[u8],
    data_start: u64,
    data_len: u64,
) -> Result<ParsedHeader, FormatError> {
    if json.first() != Some(&b'{') {
        return Err(FormatError::new(
            "header does not start with a JSON object (wrong magic)",
        ));
    }
    let root: Value = serde_json::from_slice(json)
        .map_err(|e| FormatError::new(format!("header is not valid JSON: {e}")))?;
    let Value::Object(root) = root else {
        return Err(FormatError::new("header is not a JSON object"));
    };
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(root.len());
    for (name, v) in &root {
        if name == METADATA_KEY {
            let obj = v
                .as_object()
                .ok_or_else(|| FormatError::new("__metadata__ is not an object"))?;
            for (k, v) in obj {
                let s = v.as_str().ok_or_else(|| {
                    FormatError::new(format!("metadata value '{k}' is not a string"))
                })?;
                metadata.insert(k.clone(), s.to_string());
            }
        } else {
            entries.push(parse_entry(name, v, data_len)?);
        }
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut cursor = 0u64;
    for e in &entries {
        if e.start != cursor {
            let what = if e.start < cursor {
                "overlaps the previous tensor"
            } else {
                "leaves a gap before it"
            };
            return Err(FormatError::new(format!(
                "tensor '{}' {what} (offset {})",
                e.name, e.start
            )));
        }
        cursor = e.end;
    }
    if cursor != data_len {
        return Err(FormatError::new(format!(
            "tensors cover {cursor} bytes but the data region holds {data_len} (truncated or padded file)"
        )));
    }
    Ok(ParsedHeader {
        data_start,
        data_len,
        entries,
        metadata,
    })
}

/// Parse a whole file held in memory (the prefix, the header, and the data region's bounds).
pub fn parse(file: &[u8]) -> Result<ParsedHeader, FormatError> {
    let prefix: [u8; 8] = file
        .get(..8)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| FormatError::new("file shorter than the 8-byte header length"))?;
    let n = header_len(prefix, file.len() as u64)?;
    let data_start = 8 + n;
    let json = file
        .get(8..data_start as usize)
        .ok_or_else(|| FormatError::new("header runs past the end of the file"))?;
    parse_header(json, data_start, file.len() as u64 - data_start)
}

fn parse_crc(name: &str, v: &Value) -> Result<u32, FormatError> {
    let s = v.as_str().filter(|s| s.len() == 8);
    s.and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| FormatError::new(format!("checksum of tensor '{name}' is not 8 hex digits")))
}

/// Check the ferrotrain metadata: the format version, the tree's checksum, and a checksum for
/// every tensor (and none for a tensor that is not there). Returns the CRC-32s in entry order.
pub fn ferrotrain_checksums(header: &ParsedHeader) -> Result<Vec<u32>, FormatError> {
    let meta = &header.metadata;
    match meta.get(FORMAT_KEY).map(String::as_str) {
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(FormatError::new(format!(
                "unsupported ferrotrain format version '{v}'"
            )))
        }
        None => {
            return Err(FormatError::new(
                "not a ferrotrain checkpoint (no ferrotrain.format metadata)",
            ))
        }
    }
    let tree = meta
        .get(TREE_KEY)
        .ok_or_else(|| FormatError::new("no ferrotrain.tree metadata"))?;
    let tree_crc = meta
        .get(TREE_CHECKSUM_KEY)
        .map(|s| parse_crc("ferrotrain.tree", &Value::String(s.clone())))
        .transpose()?
        .ok_or_else(|| FormatError::new("no ferrotrain.tree_crc32 metadata"))?;
    if crc32fast::hash(tree.as_bytes()) != tree_crc {
        return Err(FormatError::new(
            "checksum mismatch in the ferrotrain.tree metadata",
        ));
    }
    let sums = meta
        .get(CHECKSUMS_KEY)
        .ok_or_else(|| FormatError::new("no ferrotrain.crc32 metadata"))?;
    let sums: Value = serde_json::from_str(sums).map_err(|e| {
        FormatError::new(format!("ferrotrain.crc32 metadata is not valid JSON: {e}"))
    })?;
    let sums = sums
        .as_object()
        .ok_or_else(|| FormatError::new("ferrotrain.crc32 metadata is not an object"))?;
    if sums.len() != header.entries.len() {
        return Err(FormatError::new(format!(
            "{} checksums for {} tensors",
            sums.len(),
            header.entries.len()
        )));
    }
    header
        .entries
        .iter()
        .map(|e| {
            let v = sums
                .get(&e.name)
                .ok_or_else(|| FormatError::new(format!("no checksum for tensor '{}'", e.name)))?;
            parse_crc(&e.name, v)
        })
        .collect()
}
