//! The `data.pkl` of a torch checkpoint, both ways, for the restricted tree only: dicts,
//! OrderedDicts (with `_metadata`), lists, tuples, str, int (any size), float, bool, None,
//! `torch.Size`, `torch.device`, torch dtypes, bytes, tensors and Parameters. That is what
//! `torch.load(weights_only=True)` accepts without any allowlisting.
//!
//! - `encode` turns the encoder's tree (JSON, see `ferrotrain/checkpoint/_tree.py`) into the
//!   pickle opcodes `torch.save` writes for the same objects (protocol 2; tensor `i` is storage
//!   `i`, record `data/i`).
//! - `decode` runs a small stack machine over the opcodes and never executes anything: the
//!   only globals it knows are the constructors above, resolved to data, and every other opcode
//!   or global is refused with its name and offset. It returns the tree as JSON for the Python
//!   decoder (tags documented at `decode`) and the storages the tensors view.
//!
//! Pure Rust, no I/O.

use std::fmt::Write as _;

use super::error::{CheckpointError, FormatError};
use super::format::{Dtype, TensorSpec};
use super::json_tree::Node;
use super::tree::JsonText;
use super::tree_format::{tag, INF, NAN, NEG_INF};

// Opcodes (pickletools' names).
const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const EMPTY_DICT: u8 = b'}';
const EMPTY_LIST: u8 = b']';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const MEMOIZE: u8 = 0x94;
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const GLOBAL: u8 = b'c';
const STACK_GLOBAL: u8 = 0x93;
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const BINPERSID: u8 = b'Q';

/// torch's legacy storage class of a dtype (`torch.FloatStorage`...); the dtypes without one
/// are saved as `UntypedStorage` with `_rebuild_tensor_v3`, as torch does.
fn storage_class(d: Dtype) -> Option<&'static str> {
    Some(match d {
        Dtype::Bool => "BoolStorage",
        Dtype::U8 => "ByteStorage",
        Dtype::I8 => "CharStorage",
        Dtype::I16 => "ShortStorage",
        Dtype::I32 => "IntStorage",
        Dtype::I64 => "LongStorage",
        Dtype::F16 => "HalfStorage",
        Dtype::BF16 => "BFloat16Storage",
        Dtype::F32 => "FloatStorage",
        Dtype::F64 => "DoubleStorage",
        Dtype::C64 => "ComplexFloatStorage",
        _ => return None,
    })
}

/// torch's attribute name of a dtype (`torch.float32`).
fn torch_dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Bool => "bool",
        Dtype::U8 => "uint8",
        Dtype::I8 => "int8",
        Dtype::U16 => "uint16",
        Dtype::I16 => "int16",
        Dtype::U32 => "uint32",
        Dtype::I32 => "int32",
        Dtype::U64 => "uint64",
        Dtype::I64 => "int64",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
        Dtype::F8E4M3 => "float8_e4m3fn",
        Dtype::F8E5M2 => "float8_e5m2",
        Dtype::F8E4M3Fnuz => "float8_e4m3fnuz",
        Dtype::F8E5M2Fnuz => "float8_e5m2fnuz",
        Dtype::C64 => "complex64",
    }
}

/// torch dtype attribute names (aliases included) a file may name, and the file dtype of each.
const DTYPE_ALIASES: [(&str, Option<Dtype>); 12] = [
    ("float", Some(Dtype::F32)),
    ("double", Some(Dtype::F64)),
    ("half", Some(Dtype::F16)),
    ("short", Some(Dtype::I16)),
    ("int", Some(Dtype::I32)),
    ("long", Some(Dtype::I64)),
    ("cfloat", Some(Dtype::C64)),
    ("complex128", None),
    ("cdouble", None),
    ("complex32", None),
    ("chalf", None),
    ("bits8", None),
];

fn dtype_from_torch_name(name: &str) -> Option<Option<Dtype>> {
    if let Some(d) = Dtype::ALL.into_iter().find(|&d| torch_dtype_name(d) == name) {
        return Some(Some(d));
    }
    DTYPE_ALIASES.iter().find(|(n, _)| *n == name).map(|&(_, d)| d)
}

fn storage_dtype(class: &str) -> Option<Dtype> {
    Dtype::ALL.into_iter().find(|&d| storage_class(d) == Some(class))
}

// ------------------------------------------------------------------------------------- encode

/// The pickle of a tree, and per tensor the location (device) its storage is saved from.
pub struct Encoded {
    pub pickle: Vec<u8>,
    pub locations: Vec<String>,
}

struct Writer<'a> {
    out: Vec<u8>,
    specs: &'a [TensorSpec],
    locations: Vec<Option<String>>,
    /// Memo slots of the globals and tensors written so far (a tensor referenced twice is one
    /// object when loaded, as it was when saved).
    globals: Vec<(String, u32)>,
    tensors: Vec<Option<u32>>,
    /// Memo slots of Parameters, by tensor (and requires_grad).
    params: Vec<(usize, bool, u32)>,
    next_memo: u32,
}

fn invalid(what: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid(what.into())
}

impl Writer<'_> {
    fn put(&mut self) -> u32 {
        let i = self.next_memo;
        self.next_memo += 1;
        if let Ok(b) = u8::try_from(i) {
            self.out.extend_from_slice(&[BINPUT, b]);
        } else {
            self.out.push(LONG_BINPUT);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
        i
    }

    fn get(&mut self, i: u32) {
        if let Ok(b) = u8::try_from(i) {
            self.out.extend_from_slice(&[BINGET, b]);
        } else {
            self.out.push(LONG_BINGET);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        let key = format!("{module}\n{name}\n");
        if let Some(&(_, i)) = self.globals.iter().find(|(k, _)| *k == key) {
            self.get(i);
            return;
        }
        self.out.push(GLOBAL);
        self.out.extend_from_slice(key.as_bytes());
        let i = self.put();
        self.globals.push((key, i));
    }

    fn string(&mut self, s: &str) {
        self.out.push(BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.out.extend_from_slice(&[BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.out.push(BININT2);
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.out.push(BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.long(&long_bytes_of_i128(i128::from(v)));
        }
    }

    fn long(&mut self, bytes: &[u8]) {
        if let Ok(n) = u8::try_from(bytes.len()) {
            self.out.extend_from_slice(&[LONG1, n]);
        } else {
            self.out.push(LONG4);
            self.out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(bytes);
    }

    fn int_digits(&mut self, digits: &str) -> Result<(), CheckpointError> {
        if let Ok(v) = digits.parse::<i64>() {
            self.int(v);
            return Ok(());
        }
        let bytes = long_bytes_of_digits(digits).ok_or_else(|| invalid(format!("bad integer {digits}")))?;
        self.long(&bytes);
        Ok(())
    }

    fn float(&mut self, v: f64) {
        self.out.push(BINFLOAT);
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(&[EMPTY_TUPLE, REDUCE]);
    }

    fn tuple_of(&mut self, items: &[Node]) -> Result<(), CheckpointError> {
        match items.len() {
            0 => self.out.push(EMPTY_TUPLE),
            n @ 1..=3 => {
                for v in items {
                    self.value(v)?;
                }
                self.out.push([TUPLE1, TUPLE2, TUPLE3][n - 1]);
            }
            _ => {
                self.out.push(MARK);
                for v in items {
                    self.value(v)?;
                }
                self.out.push(TUPLE);
            }
        }
        Ok(())
    }

    fn int_tuple(&mut self, items: &[u64]) {
        let many = items.len() > 3;
        if items.is_empty() {
            self.out.push(EMPTY_TUPLE);
            return;
        }
        if many {
            self.out.push(MARK);
        }
        for &v in items {
            self.int(v as i64);
        }
        self.out.push(if many { TUPLE } else { [TUPLE1, TUPLE2, TUPLE3][items.len() - 1] });
    }

    fn items(&mut self, body: &Node) -> Result<(), CheckpointError> {
        let n = match body {
            Node::Object(items) => items.len(),
            Node::List(items) => items.len(),
            _ => return Err(invalid("a dict body must be an object or a list of pairs")),
        };
        if n == 0 {
            return Ok(());
        }
        self.out.push(MARK);
        match body {
            Node::Object(items) => {
                for (k, v) in items {
                    self.string(k);
                    self.value(v)?;
                }
            }
            Node::List(items) => {
                for pair in items {
                    let Node::List(kv) = pair else {
                        return Err(invalid("a dict item must be a [key, value] pair"));
                    };
                    let [k, v] = kv.as_slice() else {
                        return Err(invalid("a dict item must be a [key, value] pair"));
                    };
                    self.value(k)?;
                    self.value(v)?;
                }
            }
            _ => {}
        }
        self.out.push(SETITEMS);
        Ok(())
    }

    fn tensor(&mut self, name: &str, device: Option<&str>) -> Result<(), CheckpointError> {
        let i = self
            .specs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| invalid(format!("the tree names a tensor '{name}' that is not stored")))?;
        if let Some(slot) = self.tensors[i] {
            self.get(slot);
            return Ok(());
        }
        let location = device.unwrap_or("cpu").to_string();
        self.locations[i].get_or_insert(location.clone());
        let spec = &self.specs[i];
        let (dtype, shape) = (spec.dtype, spec.shape.clone());
        let class = storage_class(dtype);
        if class.is_some() {
            self.global("torch._utils", "_rebuild_tensor_v2");
        } else {
            self.global("torch._utils", "_rebuild_tensor_v3");
        }
        self.out.push(MARK);
        // The storage, as a persistent id: ('storage', class, key, location, numel).
        self.out.push(MARK);
        self.string("storage");
        let numel: u64 = shape.iter().product();
        match class {
            Some(c) => {
                self.global("torch", c);
                self.string(&i.to_string());
                self.string(&location);
                self.int(numel as i64);
            }
            None => {
                self.global("torch.storage", "UntypedStorage");
                self.string(&i.to_string());
                self.string(&location);
                self.int((numel * dtype.size()) as i64);
            }
        }
        self.out.extend_from_slice(&[TUPLE, BINPERSID]);
        self.int(0);
        self.int_tuple(&shape);
        let mut strides = vec![0u64; shape.len()];
        let mut acc = 1u64;
        for (s, &d) in strides.iter_mut().zip(&shape).rev() {
            *s = acc;
            acc = acc.saturating_mul(d.max(1));
        }
        self.int_tuple(&strides);
        self.out.push(NEWFALSE);
        self.empty_ordered_dict();
        if class.is_none() {
            self.global("torch", torch_dtype_name(dtype));
        }
        self.out.extend_from_slice(&[TUPLE, REDUCE]);
        self.tensors[i] = Some(self.put());
        Ok(())
    }

    fn value(&mut self, v: &Node) -> Result<(), CheckpointError> {
        match v {
            Node::Null => self.out.push(NONE),
            Node::Bool(b) => self.out.push(if *b { NEWTRUE } else { NEWFALSE }),
            Node::Int(d) => self.int_digits(d)?,
            Node::Float(f) => self.float(*f),
            Node::Str(s) => self.string(s),
            Node::List(items) => {
                self.out.push(EMPTY_LIST);
                if !items.is_empty() {
                    self.out.push(MARK);
                    for x in items {
                        self.value(x)?;
                    }
                    self.out.push(APPENDS);
                }
            }
            Node::Object(_) => self.tagged(v)?,
        }
        Ok(())
    }

    fn tagged(&mut self, v: &Node) -> Result<(), CheckpointError> {
        if let Some(t) = v.get(tag::TENSOR) {
            let Node::Str(name) = t else {
                return Err(invalid("a tensor name must be a string"));
            };
            let device = match v.get(tag::DEVICE) {
                Some(Node::Str(d)) => Some(d.as_str()),
                _ => None,
            };
            if let Some(Node::Bool(rg)) = v.get(tag::PARAM) {
                let i = self.specs.iter().position(|s| s.name == *name);
                if let Some(&(_, _, slot)) = self.params.iter().find(|p| Some(p.0) == i && p.1 == *rg) {
                    self.get(slot);
                    return Ok(());
                }
                self.global("torch._utils", "_rebuild_parameter");
                self.tensor(name, device)?;
                self.out.push(if *rg { NEWTRUE } else { NEWFALSE });
                self.empty_ordered_dict();
                self.out.extend_from_slice(&[TUPLE3, REDUCE]);
                let slot = self.put();
                if let Some(i) = i {
                    self.params.push((i, *rg, slot));
                }
            } else {
                self.tensor(name, device)?;
            }
            return Ok(());
        }
        let Node::Object(items) = v else {
            return Err(invalid("expected a tagged object"));
        };
        let Some((tag, body)) = items.first() else {
            return Err(invalid("empty object in the tree"));
        };
        match (tag.as_str(), body) {
            (tag::DICT, _) => {
                self.out.push(EMPTY_DICT);
                self.items(body)?;
            }
            (tag::ODICT, _) => {
                self.empty_ordered_dict();
                self.items(body)?;
                if let Some(meta) = v.get(tag::META) {
                    self.out.push(EMPTY_DICT);
                    self.string("_metadata");
                    self.value(meta)?;
                    self.out.extend_from_slice(&[SETITEM, BUILD]);
                }
            }
            (tag::TUPLE, Node::List(xs)) => self.tuple_of(xs)?,
            (tag::SIZE, Node::List(xs)) => {
                self.global("torch", "Size");
                self.tuple_of(xs)?;
                self.out.extend_from_slice(&[TUPLE1, REDUCE]);
            }
            (tag::FLOAT, Node::Str(s)) => self.float(match s.as_str() {
                NAN => f64::NAN,
                INF => f64::INFINITY,
                NEG_INF => f64::NEG_INFINITY,
                _ => return Err(invalid(format!("unknown float {s}"))),
            }),
            (tag::DTYPE, Node::Str(name)) => {
                if dtype_from_torch_name(name).is_none() {
                    return Err(invalid(format!("unknown dtype {name}")));
                }
                self.global("torch", name);
            }
            (tag::BYTES_HEX, Node::Str(hex)) => {
                // As pickle protocol 2 writes bytes: _codecs.encode(latin-1 text, 'latin1').
                let bytes = (0..hex.len() / 2)
                    .map(|i| hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .filter(|_| hex.len() % 2 == 0)
                    .ok_or_else(|| invalid("bad bytes_hex"))?;
                let text: String = bytes.iter().map(|&b| char::from(b)).collect();
                self.global("_codecs", "encode");
                self.string(&text);
                self.string("latin1");
                self.out.extend_from_slice(&[TUPLE2, REDUCE]);
            }
            (tag::DEVICE, Node::Str(d)) => {
                self.global("torch", "device");
                self.string(d);
                self.out.extend_from_slice(&[TUPLE1, REDUCE]);
            }
            (tag, _) => {
                return Err(invalid(format!(
                    "a '{tag}' value cannot be stored in a torch checkpoint"
                )))
            }
        }
        Ok(())
    }
}

/// The pickle of `tree` (the encoder's JSON, parsed), whose tensors are `specs` in order.
pub fn encode(tree: &Node, specs: &[TensorSpec]) -> Result<Encoded, CheckpointError> {
    let mut w = Writer {
        out: Vec::with_capacity(1024 + 160 * specs.len()),
        specs,
        locations: vec![None; specs.len()],
        globals: Vec::new(),
        tensors: vec![None; specs.len()],
        params: Vec::new(),
        next_memo: 0,
    };
    w.out.extend_from_slice(&[PROTO, 2]);
    w.value(tree)?;
    w.out.push(STOP);
    let locations = w
        .locations
        .into_iter()
        .map(|l| l.unwrap_or_else(|| "cpu".into()))
        .collect();
    Ok(Encoded {
        pickle: w.out,
        locations,
    })
}

/// Python's LONG encoding (little-endian two's complement, shortest form) of an i128.
fn long_bytes_of_i128(v: i128) -> Vec<u8> {
    let mut bytes = v.to_le_bytes().to_vec();
    while bytes.len() > 1 {
        let last = bytes[bytes.len() - 1];
        let prev_sign = bytes[bytes.len() - 2] & 0x80;
        if (last == 0 && prev_sign == 0) || (last == 0xff && prev_sign != 0) {
            bytes.pop();
        } else {
            break;
        }
    }
    bytes
}

/// Python's LONG encoding of a decimal integer of any size.
fn long_bytes_of_digits(digits: &str) -> Option<Vec<u8>> {
    let (neg, body) = match digits.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, digits),
    };
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Magnitude, little-endian bytes.
    let mut mag: Vec<u8> = vec![0];
    for d in body.bytes() {
        let mut carry = u32::from(d - b'0');
        for b in mag.iter_mut() {
            let v = u32::from(*b) * 10 + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            mag.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    mag.push(0); // room for the sign bit
    if neg {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let v = u16::from(!*b) + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    while mag.len() > 1 {
        let last = mag[mag.len() - 1];
        let prev_sign = mag[mag.len() - 2] & 0x80;
        if (last == 0 && prev_sign == 0) || (last == 0xff && prev_sign != 0) {
            mag.pop();
        } else {
            break;
        }
    }
    Some(mag)
}

/// The decimal digits of a LONG (little-endian two's complement).
fn digits_of_long(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "0".into();
    }
    let neg = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut mag = bytes.to_vec();
    if neg {
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let v = u16::from(!*b) + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    // Repeated division by 10^9 on big-endian u8 digits.
    let mut be: Vec<u8> = mag.into_iter().rev().collect();
    let mut chunks: Vec<u32> = Vec::new();
    while be.iter().any(|&b| b != 0) {
        let mut rem = 0u64;
        for b in be.iter_mut() {
            let cur = (rem << 8) | u64::from(*b);
            *b = (cur / 1_000_000_000) as u8;
            rem = cur % 1_000_000_000;
        }
        chunks.push(rem as u32);
        let zeros = be.iter().take_while(|&&b| b == 0).count();
        be.drain(..zeros);
    }
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    match chunks.split_last() {
        None => s.push('0'),
        Some((top, rest)) => {
            let _ = write!(s, "{top}");
            for c in rest.iter().rev() {
                let _ = write!(s, "{c:09}");
            }
        }
    }
    s
}

// ------------------------------------------------------------------------------------- decode

/// A storage that the tensors of a decoded pickle view: its record key (`data/<key>`), element
/// type, size in bytes and the location (device) it was saved from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: Dtype,
    pub nbytes: u64,
    pub location: String,
}

/// A decoded `data.pkl`: the tree as JSON (see `decode`) and the storages, by index.
#[derive(Debug)]
pub struct Decoded {
    pub tree: String,
    pub storages: Vec<StorageRef>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildV2,
    RebuildV3,
    RebuildParameter,
    RebuildParameterWithState,
    Size,
    Device,
    Dtype(Option<Dtype>, usize),
    StorageClass(Option<Dtype>),
    CodecsEncode,
}

#[derive(Clone, Debug)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Big(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Obj(usize),
}

#[derive(Debug)]
enum Obj {
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    ODict(Vec<(Val, Val)>, Option<Val>),
    Tuple(Vec<Val>),
    Global(Global),
    Storage(usize),
    Tensor {
        storage: usize,
        offset: u64,
        size: Vec<u64>,
        stride: Vec<u64>,
        dtype: Dtype,
        requires_grad: bool,
    },
    Param(Val, bool),
    Size(Vec<Val>),
    Device(String),
    Dtype(usize),
}

/// The dtype names a decoded tree can hold (`{"dtype": name}`), indexed by `Global::Dtype`.
fn dtype_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Dtype::ALL.iter().map(|&d| torch_dtype_name(d)).collect();
    v.extend(DTYPE_ALIASES.iter().map(|(n, _)| *n));
    v
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u32, Val>,
    heap: Vec<Obj>,
    storages: Vec<StorageRef>,
    dtype_names: Vec<&'static str>,
}

fn bad(at: usize, what: impl std::fmt::Display) -> FormatError {
    FormatError::new(format!("data.pkl at byte {at}: {what}"))
}

fn refused(at: usize, what: impl std::fmt::Display) -> FormatError {
    FormatError::new(format!(
        "data.pkl at byte {at}: {what}, which ferrotrain does not load without running code from \
         the file; if you trust this file, load it with weights_only=False"
    ))
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(bad(self.pos, "truncated"));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn line(&mut self) -> Result<&'a str, FormatError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&n| n <= 256)
            .ok_or_else(|| bad(self.pos, "a GLOBAL name is not terminated"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| bad(self.pos, "a GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self, at: usize) -> Result<Val, FormatError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(bad(at, "stack underflow"));
        }
        self.stack.pop().ok_or_else(|| bad(at, "stack underflow"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<Val>, FormatError> {
        let m = self.marks.pop().ok_or_else(|| bad(at, "no MARK"))?;
        Ok(self.stack.split_off(m))
    }

    fn alloc(&mut self, o: Obj) -> Val {
        self.heap.push(o);
        Val::Obj(self.heap.len() - 1)
    }

    /// A dtype is a value; every other global is a constructor REDUCE calls.
    fn alloc_global(&mut self, g: Global) -> Val {
        match g {
            Global::Dtype(_, idx) => self.alloc(Obj::Dtype(idx)),
            g => self.alloc(Obj::Global(g)),
        }
    }

    fn top_obj(&mut self, at: usize) -> Result<usize, FormatError> {
        match self.stack.last() {
            Some(Val::Obj(i)) if self.stack.len() > self.marks.last().copied().unwrap_or(0) => Ok(*i),
            _ => Err(bad(at, "expected a container on the stack")),
        }
    }

    fn global(&self, at: usize, module: &str, name: &str) -> Result<Global, FormatError> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", "Size") => Global::Size,
            ("torch", "device") => Global::Device,
            ("torch.storage", "UntypedStorage") | ("torch", "UntypedStorage") => {
                Global::StorageClass(None)
            }
            ("_codecs", "encode") => Global::CodecsEncode,
            ("torch", n) if n.ends_with("Storage") => match storage_dtype(n) {
                Some(d) => Global::StorageClass(Some(d)),
                None => return Err(refused(at, format!("storage type torch.{n}"))),
            },
            ("torch", n) => match dtype_from_torch_name(n) {
                Some(d) => {
                    let idx = self
                        .dtype_names
                        .iter()
                        .position(|x| *x == n)
                        .ok_or_else(|| bad(at, "dtype"))?;
                    Global::Dtype(d, idx)
                }
                None => return Err(refused(at, format!("the global torch.{n}"))),
            },
            (m, n) => return Err(refused(at, format!("the global {m}.{n}"))),
        })
    }

    fn int_of(&self, v: &Val, at: usize, what: &str) -> Result<i64, FormatError> {
        match v {
            Val::Int(i) => Ok(*i),
            Val::Bool(b) => Ok(i64::from(*b)),
            _ => Err(bad(at, format!("{what} must be an int"))),
        }
    }

    fn tuple_items(&self, v: &Val, at: usize, what: &str) -> Result<Vec<Val>, FormatError> {
        match v {
            Val::Obj(i) => match &self.heap[*i] {
                Obj::Tuple(items) => Ok(items.clone()),
                Obj::Size(items) => Ok(items.clone()),
                _ => Err(bad(at, format!("{what} must be a tuple"))),
            },
            _ => Err(bad(at, format!("{what} must be a tuple"))),
        }
    }

    fn dims(&self, v: &Val, at: usize, what: &str) -> Result<Vec<u64>, FormatError> {
        self.tuple_items(v, at, what)?
            .iter()
            .map(|x| {
                let n = self.int_of(x, at, what)?;
                u64::try_from(n).map_err(|_| bad(at, format!("{what} holds a negative value")))
            })
            .collect()
    }

    fn empty_hooks(&self, v: &Val, at: usize) -> Result<(), FormatError> {
        match v {
            Val::Obj(i) => match &self.heap[*i] {
                Obj::ODict(items, _) | Obj::Dict(items) if items.is_empty() => Ok(()),
                Obj::ODict(..) | Obj::Dict(_) => Err(refused(at, "a tensor with backward hooks")),
                _ => Err(bad(at, "backward hooks must be an OrderedDict")),
            },
            Val::None => Ok(()),
            _ => Err(bad(at, "backward hooks must be an OrderedDict")),
        }
    }

    fn tensor(&mut self, at: usize, v3: bool, args: &[Val]) -> Result<Val, FormatError> {
        let want = if v3 { 7 } else { 6 };
        if args.len() != want && args.len() != want + 1 {
            return Err(bad(at, format!("a tensor needs {want} arguments, got {}", args.len())));
        }
        let storage = match &args[0] {
            Val::Obj(i) => match self.heap[*i] {
                Obj::Storage(s) => s,
                _ => return Err(bad(at, "a tensor's first argument must be a storage")),
            },
            _ => return Err(bad(at, "a tensor's first argument must be a storage")),
        };
        let offset = u64::try_from(self.int_of(&args[1], at, "a storage offset")?)
            .map_err(|_| bad(at, "negative storage offset"))?;
        let size = self.dims(&args[2], at, "a tensor size")?;
        let stride = self.dims(&args[3], at, "a tensor stride")?;
        if size.len() != stride.len() {
            return Err(bad(at, "a tensor's size and stride differ in length"));
        }
        let requires_grad = matches!(args[4], Val::Bool(true));
        self.empty_hooks(&args[5], at)?;
        let s = &self.storages[storage];
        let dtype = if v3 {
            match &args[6] {
                Val::Obj(i) => match self.heap[*i] {
                    Obj::Dtype(idx) => match dtype_from_torch_name(self.dtype_names[idx]) {
                        Some(Some(d)) => d,
                        _ => return Err(refused(at, format!("a tensor of dtype {}", self.dtype_names[idx]))),
                    },
                    _ => return Err(bad(at, "a tensor's dtype argument must be a dtype")),
                },
                _ => return Err(bad(at, "a tensor's dtype argument must be a dtype")),
            }
        } else {
            s.dtype
        };
        // The view must lie inside its storage (torch checks too, with a less helpful message).
        let numel: Option<u64> = size.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if numel != Some(0) {
            let mut last = offset;
            for (&d, &st) in size.iter().zip(&stride) {
                last = (d - 1)
                    .checked_mul(st)
                    .and_then(|x| last.checked_add(x))
                    .ok_or_else(|| bad(at, "a tensor's extent overflows"))?;
            }
            let needed = last
                .checked_add(1)
                .and_then(|n| n.checked_mul(dtype.size()))
                .ok_or_else(|| bad(at, "a tensor's extent overflows"))?;
            if needed > s.nbytes {
                return Err(bad(
                    at,
                    format!(
                        "a tensor of size {size:?} and stride {stride:?} at offset {offset} runs past its {}-byte storage '{}'",
                        s.nbytes, s.key
                    ),
                ));
            }
        }
        Ok(self.alloc(Obj::Tensor {
            storage,
            offset,
            size,
            stride,
            dtype,
            requires_grad,
        }))
    }

    fn reduce(&mut self, at: usize, g: Global, args: Vec<Val>) -> Result<Val, FormatError> {
        match g {
            Global::OrderedDict if args.is_empty() => Ok(self.alloc(Obj::ODict(Vec::new(), None))),
            Global::RebuildV2 => self.tensor(at, false, &args),
            Global::RebuildV3 => self.tensor(at, true, &args),
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n = if g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != n {
                    return Err(bad(at, "a Parameter needs its tensor, requires_grad and hooks"));
                }
                match &args[0] {
                    Val::Obj(i) if matches!(self.heap[*i], Obj::Tensor { .. }) => {}
                    _ => return Err(bad(at, "a Parameter must wrap a tensor")),
                }
                self.empty_hooks(&args[2], at)?;
                if n == 4 {
                    let empty = match &args[3] {
                        Val::None => true,
                        Val::Obj(i) => matches!(&self.heap[*i], Obj::Dict(d) if d.is_empty()),
                        _ => false,
                    };
                    if !empty {
                        return Err(refused(at, "a Parameter with extra Python state"));
                    }
                }
                let rg = matches!(args[1], Val::Bool(true));
                Ok(self.alloc(Obj::Param(args[0].clone(), rg)))
            }
            Global::Size if args.len() == 1 => {
                let items = self.tuple_items(&args[0], at, "torch.Size's argument")?;
                for x in &items {
                    self.int_of(x, at, "a torch.Size dimension")?;
                }
                Ok(self.alloc(Obj::Size(items)))
            }
            Global::Device => match args.as_slice() {
                [Val::Str(s)] => Ok(self.alloc(Obj::Device(s.clone()))),
                [Val::Str(s), Val::Int(i)] => Ok(self.alloc(Obj::Device(format!("{s}:{i}")))),
                _ => Err(bad(at, "torch.device takes a string (and an index)")),
            },
            Global::CodecsEncode => match args.as_slice() {
                [Val::Str(s), Val::Str(enc)] if enc == "latin1" => {
                    let bytes: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                    bytes
                        .map(Val::Bytes)
                        .ok_or_else(|| bad(at, "bytes text is not latin-1"))
                }
                _ => Err(refused(at, "_codecs.encode with other arguments than bytes' (text, 'latin1')")),
            },
            _ => Err(refused(at, format!("a call of {g:?} with these arguments"))),
        }
    }

    fn persistent(&mut self, at: usize, pid: Val) -> Result<Val, FormatError> {
        let items = self.tuple_items(&pid, at, "a persistent id")?;
        let [Val::Str(kind), Val::Obj(class), Val::Str(key), Val::Str(location), numel] = items.as_slice() else {
            return Err(bad(at, "a persistent id must be ('storage', type, key, location, numel)"));
        };
        if kind != "storage" {
            return Err(bad(at, format!("unknown persistent id kind '{kind}'")));
        }
        let Obj::Global(Global::StorageClass(dtype)) = self.heap[*class] else {
            return Err(bad(at, "a persistent id must name a storage type"));
        };
        let numel = u64::try_from(self.int_of(numel, at, "a storage size")?)
            .map_err(|_| bad(at, "negative storage size"))?;
        let dtype = dtype.unwrap_or(Dtype::U8);
        let nbytes = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| bad(at, "a storage size overflows"))?;
        if key.is_empty() || key.len() > 64 || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad(at, format!("storage key {key:?} is not a record name")));
        }
        let idx = match self.storages.iter().position(|s| s.key == *key) {
            Some(i) => {
                let s = &self.storages[i];
                if s.dtype != dtype || s.nbytes != nbytes {
                    return Err(bad(at, format!("storage '{key}' is described twice, differently")));
                }
                i
            }
            None => {
                self.storages.push(StorageRef {
                    key: key.clone(),
                    dtype,
                    nbytes,
                    location: location.clone(),
                });
                self.storages.len() - 1
            }
        };
        Ok(self.alloc(Obj::Storage(idx)))
    }

    fn run(&mut self) -> Result<Val, FormatError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                PROTO => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(bad(at, format!("unsupported pickle protocol {v}")));
                    }
                }
                FRAME => {
                    self.u64()?;
                }
                STOP => {
                    if self.stack.len() != 1 || !self.marks.is_empty() {
                        return Err(bad(at, "STOP with a malformed stack"));
                    }
                    return self.stack.pop().ok_or_else(|| bad(at, "empty stack"));
                }
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    self.pop(at)?;
                }
                POP_MARK => {
                    self.pop_mark(at)?;
                }
                EMPTY_DICT => {
                    let v = self.alloc(Obj::Dict(Vec::new()));
                    self.stack.push(v);
                }
                EMPTY_LIST => {
                    let v = self.alloc(Obj::List(Vec::new()));
                    self.stack.push(v);
                }
                EMPTY_TUPLE => {
                    let v = self.alloc(Obj::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                TUPLE => {
                    let items = self.pop_mark(at)?;
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                NONE => self.stack.push(Val::None),
                NEWTRUE => self.stack.push(Val::Bool(true)),
                NEWFALSE => self.stack.push(Val::Bool(false)),
                BININT => {
                    let v = self.u32()? as i32;
                    self.stack.push(Val::Int(i64::from(v)));
                }
                BININT1 => {
                    let v = self.u8()?;
                    self.stack.push(Val::Int(i64::from(v)));
                }
                BININT2 => {
                    let b = self.take(2)?;
                    self.stack.push(Val::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
                }
                LONG1 | LONG4 => {
                    let n = if op == LONG1 {
                        usize::from(self.u8()?)
                    } else {
                        self.u32()? as usize
                    };
                    if n > 4096 {
                        return Err(bad(at, "an integer of more than 4096 bytes"));
                    }
                    let b = self.take(n)?;
                    let v = if n <= 8 {
                        let mut a = [if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
                        a[..n].copy_from_slice(b);
                        Val::Int(i64::from_le_bytes(a))
                    } else {
                        Val::Big(digits_of_long(b))
                    };
                    self.stack.push(v);
                }
                BINFLOAT => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Val::Float(f64::from_be_bytes(a)));
                }
                BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                    let n = match op {
                        SHORT_BINUNICODE => usize::from(self.u8()?),
                        BINUNICODE => self.u32()? as usize,
                        _ => usize::try_from(self.u64()?).map_err(|_| bad(at, "string too long"))?,
                    };
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b).map_err(|_| bad(at, "a string is not UTF-8"))?;
                    self.stack.push(Val::Str(s.to_string()));
                }
                BINBYTES | SHORT_BINBYTES => {
                    let n = if op == SHORT_BINBYTES {
                        usize::from(self.u8()?)
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    self.stack.push(Val::Bytes(b.to_vec()));
                }
                BINPUT | LONG_BINPUT | MEMOIZE => {
                    let idx = match op {
                        BINPUT => u32::from(self.u8()?),
                        LONG_BINPUT => self.u32()?,
                        _ => self.memo.len() as u32,
                    };
                    let v = self.stack.last().cloned().ok_or_else(|| bad(at, "memo of an empty stack"))?;
                    self.memo.insert(idx, v);
                }
                BINGET | LONG_BINGET => {
                    let idx = if op == BINGET {
                        u32::from(self.u8()?)
                    } else {
                        self.u32()?
                    };
                    let v = self.memo.get(&idx).cloned().ok_or_else(|| bad(at, format!("memo {idx} is empty")))?;
                    self.stack.push(v);
                }
                APPEND | APPENDS => {
                    let items = if op == APPEND {
                        vec![self.pop(at)?]
                    } else {
                        self.pop_mark(at)?
                    };
                    let i = self.top_obj(at)?;
                    match &mut self.heap[i] {
                        Obj::List(l) => l.extend(items),
                        _ => return Err(bad(at, "APPEND to something that is not a list")),
                    }
                }
                SETITEM | SETITEMS => {
                    let flat = if op == SETITEM {
                        let v = self.pop(at)?;
                        let k = self.pop(at)?;
                        vec![k, v]
                    } else {
                        self.pop_mark(at)?
                    };
                    if flat.len() % 2 != 0 {
                        return Err(bad(at, "SETITEMS with an odd number of items"));
                    }
                    let i = self.top_obj(at)?;
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        self.check_key(&k, at)?;
                        pairs.push((k, v));
                    }
                    match &mut self.heap[i] {
                        Obj::Dict(d) | Obj::ODict(d, _) => {
                            for (k, v) in pairs {
                                // A repeated key replaces the earlier value, as in Python.
                                match d.iter_mut().find(|(ek, _)| same_key(ek, &k)) {
                                    Some(slot) => slot.1 = v,
                                    None => d.push((k, v)),
                                }
                            }
                        }
                        _ => return Err(bad(at, "SETITEM on something that is not a dict")),
                    }
                }
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(at, module, name)?;
                    let v = self.alloc_global(g);
                    self.stack.push(v);
                }
                STACK_GLOBAL => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Val::Str(module), Val::Str(name)) = (module, name) else {
                        return Err(bad(at, "STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(at, &module, &name)?;
                    let v = self.alloc_global(g);
                    self.stack.push(v);
                }
                REDUCE => {
                    let args = self.pop(at)?;
                    let f = self.pop(at)?;
                    let args = self.tuple_items(&args, at, "REDUCE's arguments")?;
                    let g = match f {
                        Val::Obj(i) => match self.heap[i] {
                            Obj::Global(g) => g,
                            _ => return Err(bad(at, "REDUCE of something that is not a global")),
                        },
                        _ => return Err(bad(at, "REDUCE of something that is not a global")),
                    };
                    let v = self.reduce(at, g, args)?;
                    self.stack.push(v);
                }
                BUILD => {
                    let state = self.pop(at)?;
                    let i = self.top_obj(at)?;
                    let meta = match &state {
                        Val::Obj(s) => match &self.heap[*s] {
                            Obj::Dict(items) => {
                                if items.iter().any(|(k, _)| !matches!(k, Val::Str(s) if s == "_metadata")) {
                                    return Err(refused(at, "object state other than an OrderedDict's _metadata"));
                                }
                                items.first().map(|(_, v)| v.clone())
                            }
                            _ => return Err(refused(at, "BUILD with this state")),
                        },
                        _ => return Err(refused(at, "BUILD with this state")),
                    };
                    match &mut self.heap[i] {
                        Obj::ODict(_, m) => *m = meta,
                        _ => return Err(refused(at, "BUILD of something that is not an OrderedDict")),
                    }
                }
                BINPERSID => {
                    let pid = self.pop(at)?;
                    let v = self.persistent(at, pid)?;
                    self.stack.push(v);
                }
                other => {
                    return Err(refused(at, format!("pickle opcode 0x{other:02x}")));
                }
            }
        }
    }

    fn check_key(&self, k: &Val, at: usize) -> Result<(), FormatError> {
        match k {
            Val::None | Val::Bool(_) | Val::Int(_) | Val::Big(_) | Val::Float(_) | Val::Str(_) => Ok(()),
            Val::Obj(i) if matches!(self.heap[*i], Obj::Tuple(_)) => Ok(()),
            _ => Err(bad(at, "a dict key must be None, bool, int, float, str or a tuple")),
        }
    }
}

fn same_key(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Big(x), Val::Big(y)) => x == y,
        (Val::None, Val::None) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        _ => false,
    }
}

/// Writes a decoded value tree as JSON, within a node budget (memo references can repeat a
/// subtree; a hostile file must not make this exponential) and a depth limit.
struct Emit<'m> {
    m: &'m Machine<'m>,
    json: JsonText,
    budget: usize,
    /// Bound on the JSON's length (memo references can repeat long strings too).
    max_len: usize,
    open: Vec<usize>,
    /// Tensors and Parameters already written (heap index -> id): a second reference is written
    /// as `{"ref": id}`, so one object saved twice loads as one object.
    ids: std::collections::HashMap<usize, usize>,
}

impl Emit<'_> {
    fn value(&mut self, v: &Val) -> Result<(), FormatError> {
        if self.budget == 0 || self.json.len() > self.max_len {
            return Err(FormatError::new("data.pkl expands to too many objects (repeated memo references)"));
        }
        self.budget -= 1;
        match v {
            Val::None => self.json.null(),
            Val::Bool(b) => self.json.bool(*b),
            Val::Int(i) => self.json.int(*i),
            Val::Big(d) => {
                self.json.int_digits(d);
            }
            Val::Float(f) => {
                if f.is_finite() {
                    self.json.float(*f);
                } else {
                    let s = if f.is_nan() {
                        "nan"
                    } else if *f > 0.0 {
                        "inf"
                    } else {
                        "-inf"
                    };
                    self.json.raw("{\"float\":");
                    self.json.string(s);
                    self.json.raw("}");
                }
            }
            Val::Str(s) => self.json.string(s),
            Val::Bytes(b) => {
                self.json.raw("{\"bytes_hex\":\"");
                let mut hex = String::with_capacity(b.len() * 2);
                for x in b {
                    let _ = write!(hex, "{x:02x}");
                }
                self.json.raw(&hex);
                self.json.raw("\"}");
            }
            Val::Obj(i) => {
                if self.open.contains(i) {
                    return Err(FormatError::new("data.pkl: an object contains itself"));
                }
                if self.open.len() >= 900 {
                    return Err(FormatError::new("data.pkl: nested too deeply"));
                }
                self.open.push(*i);
                let r = self.obj(*i);
                self.open.pop();
                r?;
            }
        }
        Ok(())
    }

    fn seq(&mut self, items: &[Val]) -> Result<(), FormatError> {
        self.json.raw("[");
        for (n, x) in items.iter().enumerate() {
            if n > 0 {
                self.json.raw(",");
            }
            self.value(x)?;
        }
        self.json.raw("]");
        Ok(())
    }

    fn pairs(&mut self, items: &[(Val, Val)]) -> Result<(), FormatError> {
        self.json.raw("[");
        for (n, (k, v)) in items.iter().enumerate() {
            self.json.raw(if n > 0 { ",[" } else { "[" });
            self.value(k)?;
            self.json.raw(",");
            self.value(v)?;
            self.json.raw("]");
        }
        self.json.raw("]");
        Ok(())
    }

    fn obj(&mut self, i: usize) -> Result<(), FormatError> {
        let m = self.m;
        let shared = matches!(m.heap[i], Obj::Tensor { .. } | Obj::Param(..));
        if shared {
            if let Some(id) = self.ids.get(&i) {
                self.json.raw(&format!("{{\"ref\":{id}}}"));
                return Ok(());
            }
            let id = self.ids.len();
            self.ids.insert(i, id);
            self.json.raw(&format!("{{\"id\":{id},\"of\":"));
        }
        self.obj_body(i)?;
        if shared {
            self.json.raw("}");
        }
        Ok(())
    }

    fn obj_body(&mut self, i: usize) -> Result<(), FormatError> {
        let m = self.m;
        match &m.heap[i] {
            Obj::List(items) => self.seq(items)?,
            Obj::Tuple(items) => {
                self.json.raw("{\"tuple\":");
                self.seq(items)?;
                self.json.raw("}");
            }
            Obj::Size(items) => {
                self.json.raw("{\"size\":");
                self.seq(items)?;
                self.json.raw("}");
            }
            Obj::Dict(items) => {
                self.json.raw("{\"dict\":");
                self.pairs(items)?;
                self.json.raw("}");
            }
            Obj::ODict(items, meta) => {
                self.json.raw("{\"odict\":");
                self.pairs(items)?;
                if let Some(meta) = meta {
                    self.json.raw(",\"meta\":");
                    self.value(meta)?;
                }
                self.json.raw("}");
            }
            Obj::Tensor {
                storage,
                offset,
                size,
                stride,
                dtype,
                requires_grad,
            } => {
                let ints = |v: &[u64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
                self.json.raw(&format!(
                    "{{\"view\":[{storage},{offset},[{}],[{}],\"{}\",{}]}}",
                    ints(size),
                    ints(stride),
                    dtype.name(),
                    requires_grad
                ));
            }
            Obj::Param(t, rg) => {
                self.json.raw("{\"param\":[");
                self.value(t)?;
                self.json.raw(if *rg { ",true]}" } else { ",false]}" });
            }
            Obj::Device(d) => {
                self.json.raw("{\"device\":");
                self.json.string(d);
                self.json.raw("}");
            }
            Obj::Dtype(idx) => {
                self.json.raw("{\"dtype\":");
                self.json.string(m.dtype_names[*idx]);
                self.json.raw("}");
            }
            Obj::Global(g) => {
                return Err(FormatError::new(format!("data.pkl: a bare global ({g:?}) in the tree")))
            }
            Obj::Storage(_) => return Err(FormatError::new("data.pkl: a bare storage in the tree")),
        }
        Ok(())
    }
}

/// Decode a `data.pkl` without running anything. The tree comes back as JSON with the tags
/// of `ferrotrain/checkpoint/_tree.py` plus: `{"dict": [[k, v], ...]}` for every dict,
/// `{"odict": [[k, v], ...], "meta"?: ...}`, `{"view": [storage index, offset, [size],
/// [stride], dtype, requires_grad]}` for a tensor, `{"param": [view, requires_grad]}`,
/// `{"bytes_hex": "..."}`, `{"dtype": torch attribute name}`; a tensor or Parameter is wrapped
/// as `{"id": n, "of": ...}` where it first appears and is `{"ref": n}` where it appears again.
pub fn decode(data: &[u8]) -> Result<Decoded, FormatError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: std::collections::HashMap::new(),
        heap: Vec::new(),
        storages: Vec::new(),
        dtype_names: dtype_names(),
    };
    let root = m.run()?;
    if m.pos != data.len() {
        return Err(bad(m.pos, "bytes after STOP"));
    }
    let budget = 16 * data.len() + 100_000;
    let mut e = Emit {
        m: &m,
        json: JsonText::with_capacity(data.len() * 2 + 64),
        budget,
        max_len: 64 * data.len() + (1 << 20),
        open: Vec::new(),
        ids: std::collections::HashMap::new(),
    };
    e.value(&root)?;
    let tree = e.json.into_string();
    Ok(Decoded {
        tree,
        storages: m.storages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_encoding_matches_python() {
        // Python: (2**70).to_bytes(...) as pickle's encode_long.
        assert_eq!(long_bytes_of_digits("0"), Some(vec![0]));
        assert_eq!(long_bytes_of_digits("255"), Some(vec![0xff, 0x00]));
        assert_eq!(long_bytes_of_digits("-1"), Some(vec![0xff]));
        assert_eq!(long_bytes_of_digits("-128"), Some(vec![0x80]));
        assert_eq!(long_bytes_of_digits("-129"), Some(vec![0x7f, 0xff]));
        let big = "1180591620717411303424"; // 2**70
        let b = long_bytes_of_digits(big).unwrap_or_default();
        assert_eq!(b, vec![0, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        assert_eq!(digits_of_long(&b), big);
        assert_eq!(digits_of_long(&long_bytes_of_digits("-98765432109876543210").unwrap_or_default()), "-98765432109876543210");
        assert_eq!(long_bytes_of_i128(i128::from(i64::MIN)), i64::MIN.to_le_bytes().to_vec());
    }
}
