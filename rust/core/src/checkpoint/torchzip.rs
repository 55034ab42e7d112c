//! torch's checkpoint file: the zip archive `torch.save` writes. Every entry is stored
//! (uncompressed) with its CRC-32; each entry's bytes start on a 64-byte boundary (padding in the
//! local header's extra field, as torch pads), so `torch.load(mmap=True)` maps tensors in place.
//!
//! ```text
//! archive/data.pkl             the object tree (pickle protocol 2, see `pickle.rs`)
//! archive/.format_version      "1"
//! archive/.storage_alignment   "64"
//! archive/byteorder            "little"
//! archive/data/<i>             the bytes of tensor i (its whole storage)
//! archive/version              "3\n"
//! central directory, end of central directory (zip64 records when offsets or sizes need them)
//! ```
//!
//! This module owns the layout (where each entry goes, the framing bytes once the CRCs are
//! known) and the parsing of any such archive's central directory, with every offset and length
//! checked against the file's size. It does no I/O (see `io.rs`).

use super::error::{CheckpointError, FormatError};
use super::format::{tensor_nbytes, TensorSpec};
use super::json_tree;
use super::pickle;

/// Entries' data start on this boundary (torch's `.storage_alignment`).
pub const ALIGN: u64 = 64;
const ARCHIVE: &str = "archive";
const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_ID: u16 = 0x0001;
/// The extra field torch pads with ("FB").
const PAD_ID: u16 = 0x4246;
const U32_MAX: u64 = 0xFFFF_FFFF;
/// 1980-01-01 00:00 in DOS time (no clock in the file: the same bytes for the same checkpoint).
const DOS_DATE: u16 = 0x21;

#[derive(Clone, Debug)]
enum Body {
    Small(Vec<u8>, u32),
    Tensor(usize),
}

#[derive(Clone, Debug)]
struct Record {
    name: String,
    header_at: u64,
    data_at: u64,
    size: u64,
    body: Body,
}

impl Record {
    fn zip64(&self, limit: u64) -> bool {
        self.size >= limit || self.header_at >= limit
    }
}

/// Where everything of one torch checkpoint goes.
#[derive(Clone, Debug)]
pub struct TorchLayout {
    specs: Vec<TensorSpec>,
    records: Vec<Record>,
    nbytes: Vec<u64>,
    /// Per tensor: absolute file offset of its bytes.
    tensor_at: Vec<u64>,
    /// Per tensor: offset in a snapshot buffer (the file's spacing, so buffer copies stay aligned).
    buffer_offsets: Vec<u64>,
    data_len: u64,
    cd_at: u64,
    file_len: u64,
    /// Sizes and offsets at or above this need zip64 fields (a parameter so tests reach it).
    limit: u64,
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn clamp32(v: u64, limit: u64) -> u32 {
    if v >= limit {
        u32::MAX
    } else {
        v as u32
    }
}

impl TorchLayout {
    /// Lay out a checkpoint whose tree is the encoder's JSON `tree` and whose tensors are
    /// `specs` (tensor i becomes storage i).
    pub fn new(specs: Vec<TensorSpec>, tree: &str) -> Result<TorchLayout, CheckpointError> {
        Self::with_limit(specs, tree, U32_MAX)
    }

    pub(crate) fn with_limit(
        specs: Vec<TensorSpec>,
        tree: &str,
        limit: u64,
    ) -> Result<TorchLayout, CheckpointError> {
        let node = json_tree::parse(tree).map_err(|e| CheckpointError::Invalid(e.0))?;
        let encoded = pickle::encode(&node, &specs)?;
        let mut nbytes = Vec::with_capacity(specs.len());
        for s in &specs {
            nbytes.push(tensor_nbytes(s.dtype, &s.shape).ok_or_else(|| {
                CheckpointError::Invalid(format!("tensor '{}' has an absurd shape {:?}", s.name, s.shape))
            })?);
        }
        let small = |name: &str, bytes: Vec<u8>| {
            let crc = crc32fast::hash(&bytes);
            (format!("{ARCHIVE}/{name}"), Body::Small(bytes, crc))
        };
        let mut bodies = vec![
            small("data.pkl", encoded.pickle),
            small(".format_version", b"1".to_vec()),
            small(".storage_alignment", ALIGN.to_string().into_bytes()),
            small("byteorder", b"little".to_vec()),
        ];
        for i in 0..specs.len() {
            bodies.push((format!("{ARCHIVE}/data/{i}"), Body::Tensor(i)));
        }
        bodies.push(small("version", b"3\n".to_vec()));
        let mut records = Vec::with_capacity(bodies.len());
        let mut cursor = 0u64;
        let mut tensor_at = vec![0u64; specs.len()];
        for (name, body) in bodies {
            let size = match &body {
                Body::Small(b, _) => b.len() as u64,
                Body::Tensor(i) => nbytes[*i],
            };
            let header_at = cursor;
            let zip64_len = if size >= limit { 20 } else { 0 };
            let base = header_at + 30 + name.len() as u64 + zip64_len;
            let data_at = if base % ALIGN == 0 {
                base
            } else {
                (base + 4).div_ceil(ALIGN) * ALIGN
            };
            if let Body::Tensor(i) = body {
                tensor_at[i] = data_at;
            }
            cursor = data_at.checked_add(size).ok_or_else(|| {
                CheckpointError::Invalid("checkpoint larger than 2^64 bytes".into())
            })?;
            records.push(Record {
                name,
                header_at,
                data_at,
                size,
                body,
            });
        }
        let first = tensor_at.iter().copied().min().unwrap_or(0);
        let buffer_offsets: Vec<u64> = tensor_at.iter().map(|&a| a - first).collect();
        let data_len = buffer_offsets
            .iter()
            .zip(&nbytes)
            .map(|(o, n)| o + n)
            .max()
            .unwrap_or(0);
        let mut layout = TorchLayout {
            specs,
            records,
            nbytes,
            tensor_at,
            buffer_offsets,
            data_len,
            cd_at: cursor,
            file_len: 0,
            limit,
        };
        let tail = layout.central_directory(&vec![0; layout.specs.len()])?;
        layout.file_len = cursor + tail.len() as u64;
        Ok(layout)
    }

    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }
    pub fn nbytes(&self) -> &[u64] {
        &self.nbytes
    }
    pub fn buffer_offsets(&self) -> &[u64] {
        &self.buffer_offsets
    }
    pub fn tensor_at(&self) -> &[u64] {
        &self.tensor_at
    }
    pub fn data_len(&self) -> u64 {
        self.data_len
    }
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    fn crc_of(&self, r: &Record, crcs: &[u32]) -> u32 {
        match &r.body {
            Body::Small(_, c) => *c,
            Body::Tensor(i) => crcs.get(*i).copied().unwrap_or(0),
        }
    }

    fn local_header(&self, r: &Record, crc: u32) -> Vec<u8> {
        let zip64 = r.size >= self.limit;
        let mut out = Vec::with_capacity((r.data_at - r.header_at) as usize);
        put32(&mut out, LOCAL_SIG);
        put16(&mut out, if zip64 { 45 } else { 20 });
        put16(&mut out, 0); // flags
        put16(&mut out, 0); // stored
        put16(&mut out, 0); // time
        put16(&mut out, DOS_DATE);
        put32(&mut out, crc);
        put32(&mut out, clamp32(r.size, self.limit));
        put32(&mut out, clamp32(r.size, self.limit));
        put16(&mut out, r.name.len() as u16);
        let extra_len = r.data_at - r.header_at - 30 - r.name.len() as u64;
        put16(&mut out, extra_len as u16);
        out.extend_from_slice(r.name.as_bytes());
        if zip64 {
            put16(&mut out, ZIP64_ID);
            put16(&mut out, 16);
            put64(&mut out, r.size);
            put64(&mut out, r.size);
        }
        let pad = (r.data_at - r.header_at) as usize - out.len();
        if pad > 0 {
            put16(&mut out, PAD_ID);
            put16(&mut out, (pad - 4) as u16);
            out.resize((r.data_at - r.header_at) as usize, b'Z');
        }
        out
    }

    fn central_directory(&self, crcs: &[u32]) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::with_capacity(self.records.len() * 96 + 128);
        for r in &self.records {
            let zip64 = r.zip64(self.limit);
            let mut extra = Vec::new();
            if zip64 {
                let mut body = Vec::new();
                if r.size >= self.limit {
                    put64(&mut body, r.size);
                    put64(&mut body, r.size);
                }
                if r.header_at >= self.limit {
                    put64(&mut body, r.header_at);
                }
                put16(&mut extra, ZIP64_ID);
                put16(&mut extra, body.len() as u16);
                extra.extend_from_slice(&body);
            }
            put32(&mut out, CENTRAL_SIG);
            put16(&mut out, if zip64 { 45 } else { 20 }); // made by
            put16(&mut out, if zip64 { 45 } else { 20 }); // needed
            put16(&mut out, 0);
            put16(&mut out, 0);
            put16(&mut out, 0);
            put16(&mut out, DOS_DATE);
            put32(&mut out, self.crc_of(r, crcs));
            put32(&mut out, clamp32(r.size, self.limit));
            put32(&mut out, clamp32(r.size, self.limit));
            put16(&mut out, r.name.len() as u16);
            put16(&mut out, extra.len() as u16);
            put16(&mut out, 0); // comment
            put16(&mut out, 0); // disk
            put16(&mut out, 0); // internal attributes
            put32(&mut out, 0); // external attributes
            put32(&mut out, clamp32(r.header_at, self.limit));
            out.extend_from_slice(r.name.as_bytes());
            out.extend_from_slice(&extra);
        }
        let cd_len = out.len() as u64;
        let count = self.records.len() as u64;
        let need64 = self.cd_at >= self.limit || cd_len >= self.limit || count >= 0xFFFF;
        if need64 {
            let eocd64_at = self.cd_at + cd_len;
            put32(&mut out, EOCD64_SIG);
            put64(&mut out, 44);
            put16(&mut out, 45);
            put16(&mut out, 45);
            put32(&mut out, 0);
            put32(&mut out, 0);
            put64(&mut out, count);
            put64(&mut out, count);
            put64(&mut out, cd_len);
            put64(&mut out, self.cd_at);
            put32(&mut out, EOCD64_LOCATOR_SIG);
            put32(&mut out, 0);
            put64(&mut out, eocd64_at);
            put32(&mut out, 1);
        }
        put32(&mut out, EOCD_SIG);
        put16(&mut out, 0);
        put16(&mut out, 0);
        let c16 = if need64 { 0xFFFF } else { count as u16 };
        put16(&mut out, c16);
        put16(&mut out, c16);
        put32(&mut out, if need64 { u32::MAX } else { cd_len as u32 });
        put32(&mut out, if need64 { u32::MAX } else { self.cd_at as u32 });
        put16(&mut out, 0);
        Ok(out)
    }

    /// Every byte of the file that is not tensor data, as `(offset, bytes)`, given each tensor's
    /// CRC-32 (in spec order).
    pub fn framing(&self, crcs: &[u32]) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError> {
        if crcs.len() != self.specs.len() {
            return Err(CheckpointError::Invalid("one checksum per tensor expected".into()));
        }
        let mut out = Vec::with_capacity(self.records.len() * 2 + 1);
        for r in &self.records {
            out.push((r.header_at, self.local_header(r, self.crc_of(r, crcs))));
            if let Body::Small(b, _) = &r.body {
                out.push((r.data_at, b.clone()));
            }
        }
        out.push((self.cd_at, self.central_directory(crcs)?));
        Ok(out)
    }
}

// ------------------------------------------------------------------------------------- reading

/// One stored entry of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    /// Absolute offset of the entry's bytes.
    pub data_at: u64,
    pub size: u64,
    pub crc: u32,
}

fn rd16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}
fn rd32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn rd64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

fn short(what: &str) -> FormatError {
    FormatError::new(format!("zip archive: {what} is truncated"))
}

/// Read access to a file's bytes (a slice in tests and the fuzz target, `pread` for files).
pub trait ReadAt {
    fn file_len(&self) -> u64;
    fn read_at(&self, at: u64, n: usize) -> Result<Vec<u8>, FormatError>;
}

impl ReadAt for &[u8] {
    fn file_len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, at: u64, n: usize) -> Result<Vec<u8>, FormatError> {
        let at = usize::try_from(at).map_err(|_| short("a read"))?;
        self.get(at..at.saturating_add(n))
            .filter(|s| s.len() == n)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| short("a record"))
    }
}

/// True when the bytes start like a zip archive.
pub fn is_zip(head: &[u8]) -> bool {
    head.starts_with(&LOCAL_SIG.to_le_bytes())
}

/// The stored entries of a zip archive, from its central directory; every entry's local header
/// is checked and its bytes lie inside the file before the central directory. Compressed or
/// encrypted entries are refused.
pub fn read_entries<R: ReadAt>(f: &R) -> Result<Vec<ZipEntry>, FormatError> {
    let len = f.file_len();
    if len < 22 {
        return Err(FormatError::new(format!("file of {len} bytes is too short to be a zip archive")));
    }
    let tail_len = len.min(22 + 0xFFFF) as usize;
    let tail_at = len - tail_len as u64;
    let tail = f.read_at(tail_at, tail_len)?;
    let eocd = (0..=tail_len - 22)
        .rev()
        .find(|&i| rd32(&tail, i) == Some(EOCD_SIG) && rd16(&tail, i + 20).map(usize::from) == Some(tail_len - i - 22))
        .ok_or_else(|| FormatError::new("no zip end-of-central-directory record (truncated file?)"))?;
    let mut count = u64::from(rd16(&tail, eocd + 10).ok_or_else(|| short("the end record"))?);
    let mut cd_len = u64::from(rd32(&tail, eocd + 12).ok_or_else(|| short("the end record"))?);
    let mut cd_at = u64::from(rd32(&tail, eocd + 16).ok_or_else(|| short("the end record"))?);
    let eocd_abs = tail_at + eocd as u64;
    let mut cd_end_limit = eocd_abs;
    if count == 0xFFFF || cd_len == U32_MAX || cd_at == U32_MAX {
        let loc_at = eocd_abs.checked_sub(20).ok_or_else(|| short("the zip64 locator"))?;
        let loc = f.read_at(loc_at, 20)?;
        if rd32(&loc, 0) != Some(EOCD64_LOCATOR_SIG) {
            return Err(FormatError::new("zip64 end locator missing"));
        }
        let at = rd64(&loc, 8).ok_or_else(|| short("the zip64 locator"))?;
        if at.checked_add(56).map_or(true, |e| e > loc_at) {
            return Err(FormatError::new("zip64 end record out of range"));
        }
        let rec = f.read_at(at, 56)?;
        if rd32(&rec, 0) != Some(EOCD64_SIG) {
            return Err(FormatError::new("zip64 end record missing"));
        }
        count = rd64(&rec, 32).ok_or_else(|| short("the zip64 end record"))?;
        cd_len = rd64(&rec, 40).ok_or_else(|| short("the zip64 end record"))?;
        cd_at = rd64(&rec, 48).ok_or_else(|| short("the zip64 end record"))?;
        cd_end_limit = at;
    }
    if cd_at.checked_add(cd_len).map_or(true, |e| e > cd_end_limit) {
        return Err(FormatError::new(format!(
            "central directory [{cd_at}, +{cd_len}) runs past the end of the {len}-byte file"
        )));
    }
    if count > cd_len / 46 + 1 {
        return Err(FormatError::new(format!("{count} entries cannot fit a {cd_len}-byte central directory")));
    }
    let cd = f.read_at(cd_at, cd_len as usize)?;
    let mut entries = Vec::with_capacity(count as usize);
    let mut p = 0usize;
    for _ in 0..count {
        if rd32(&cd, p) != Some(CENTRAL_SIG) {
            return Err(FormatError::new(format!("central directory entry at {} has a bad signature", cd_at + p as u64)));
        }
        let flags = rd16(&cd, p + 8).ok_or_else(|| short("a central directory entry"))?;
        let method = rd16(&cd, p + 10).ok_or_else(|| short("a central directory entry"))?;
        let crc = rd32(&cd, p + 16).ok_or_else(|| short("a central directory entry"))?;
        let mut csize = u64::from(rd32(&cd, p + 20).ok_or_else(|| short("a central directory entry"))?);
        let mut usize_ = u64::from(rd32(&cd, p + 24).ok_or_else(|| short("a central directory entry"))?);
        let n = usize::from(rd16(&cd, p + 28).ok_or_else(|| short("a central directory entry"))?);
        let e = usize::from(rd16(&cd, p + 30).ok_or_else(|| short("a central directory entry"))?);
        let c = usize::from(rd16(&cd, p + 32).ok_or_else(|| short("a central directory entry"))?);
        let mut header_at = u64::from(rd32(&cd, p + 42).ok_or_else(|| short("a central directory entry"))?);
        let name = cd.get(p + 46..p + 46 + n).ok_or_else(|| short("a central directory entry"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| FormatError::new("a zip entry name is not UTF-8"))?
            .to_string();
        let extra = cd.get(p + 46 + n..p + 46 + n + e).ok_or_else(|| short("a central directory entry"))?;
        // zip64 extra: the fields that were clamped, in order.
        let mut q = 0usize;
        while q + 4 <= extra.len() {
            let id = rd16(extra, q).unwrap_or(0);
            let sz = usize::from(rd16(extra, q + 2).unwrap_or(0));
            if id == ZIP64_ID {
                let mut r = q + 4;
                let mut next = || {
                    let v = rd64(extra, r);
                    r += 8;
                    v.ok_or_else(|| short("a zip64 extra field"))
                };
                if usize_ == U32_MAX {
                    usize_ = next()?;
                }
                if csize == U32_MAX {
                    csize = next()?;
                }
                if header_at == U32_MAX {
                    header_at = next()?;
                }
            }
            q += 4 + sz;
        }
        if flags & 1 != 0 {
            return Err(FormatError::new(format!("zip entry '{name}' is encrypted")));
        }
        if method != 0 || csize != usize_ {
            return Err(FormatError::new(format!(
                "zip entry '{name}' is compressed (method {method}); torch checkpoints store entries uncompressed"
            )));
        }
        let local = f.read_at(header_at, 30).map_err(|_| FormatError::new(format!("local header of '{name}' is out of range")))?;
        if rd32(&local, 0) != Some(LOCAL_SIG) {
            return Err(FormatError::new(format!("local header of '{name}' has a bad signature")));
        }
        let ln = u64::from(rd16(&local, 26).unwrap_or(0));
        let le = u64::from(rd16(&local, 28).unwrap_or(0));
        let data_at = header_at + 30 + ln + le;
        if data_at.checked_add(usize_).map_or(true, |end| end > cd_at) {
            return Err(FormatError::new(format!(
                "zip entry '{name}' ({usize_} bytes at {data_at}) runs past the data region (truncated file?)"
            )));
        }
        let lname = f.read_at(header_at + 30, ln as usize)?;
        if lname != name.as_bytes() {
            return Err(FormatError::new(format!("local header of '{name}' names another entry")));
        }
        entries.push(ZipEntry {
            name,
            data_at,
            size: usize_,
            crc,
        });
        p += 46 + n + e + c;
    }
    Ok(entries)
}

/// A storage of a torch checkpoint, located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageEntry {
    pub storage: pickle::StorageRef,
    pub data_at: u64,
    pub crc: u32,
}

/// A torch checkpoint's decoded tree and located storages.
#[derive(Debug)]
pub struct TorchFile {
    pub tree: String,
    pub storages: Vec<StorageEntry>,
    /// Every entry (for verification of all of them).
    pub entries: Vec<ZipEntry>,
}

/// Find `data.pkl`, check its CRC, decode it, and locate every storage it names. The storages'
/// bytes are not read here.
pub fn open<R: ReadAt>(f: &R) -> Result<TorchFile, FormatError> {
    let entries = read_entries(f)?;
    let first = entries.first().ok_or_else(|| FormatError::new("empty zip archive"))?;
    let prefix = match first.name.split_once('/') {
        Some((p, _)) => p.to_string(),
        None => return Err(FormatError::new("not a torch checkpoint (entries are not in one folder)")),
    };
    let find = |name: &str| entries.iter().find(|e| e.name == format!("{prefix}/{name}"));
    let pkl = find("data.pkl").ok_or_else(|| FormatError::new("not a torch checkpoint (no data.pkl)"))?;
    if pkl.size > 1 << 31 {
        return Err(FormatError::new("data.pkl larger than 2 GiB"));
    }
    let bytes = f.read_at(pkl.data_at, pkl.size as usize)?;
    let got = crc32fast::hash(&bytes);
    if got != pkl.crc {
        return Err(FormatError::new(format!(
            "checksum mismatch in entry '{}' (stored {:08x}, computed {got:08x})",
            pkl.name, pkl.crc
        )));
    }
    if let Some(order) = find("byteorder") {
        let b = f.read_at(order.data_at, order.size.min(16) as usize)?;
        if b != b"little" {
            return Err(FormatError::new("big-endian torch checkpoints are not supported"));
        }
    }
    let decoded = pickle::decode(&bytes)?;
    let mut storages = Vec::with_capacity(decoded.storages.len());
    for s in decoded.storages {
        let e = find(&format!("data/{}", s.key))
            .ok_or_else(|| FormatError::new(format!("storage '{}' has no data/{} entry", s.key, s.key)))?;
        if e.size != s.nbytes {
            return Err(FormatError::new(format!(
                "entry '{}' holds {} bytes but its storage needs {}",
                e.name, e.size, s.nbytes
            )));
        }
        storages.push(StorageEntry {
            data_at: e.data_at,
            crc: e.crc,
            storage: s,
        });
    }
    Ok(TorchFile {
        tree: decoded.tree,
        storages,
        entries,
    })
}


/// `open`, then check every storage's CRC-32: the whole read of a file held in memory (the pure
/// path the fuzz target and the tests drive).
pub fn check_bytes(file: &[u8]) -> Result<TorchFile, FormatError> {
    let opened = open(&file)?;
    for s in &opened.storages {
        let bytes = file
            .get(s.data_at as usize..(s.data_at + s.storage.nbytes) as usize)
            .ok_or_else(|| short("a storage"))?;
        let got = crc32fast::hash(bytes);
        if got != s.crc {
            return Err(FormatError::new(format!(
                "checksum mismatch in entry 'data/{}' (stored {:08x}, computed {got:08x})",
                s.storage.key, s.crc
            )));
        }
    }
    Ok(opened)
}
