//! The pure parts of encoding a checkpoint tree (the walk over Python objects is in
//! `rust/src/checkpoint_tree.rs`): the JSON text of the tree, the names tensors get from their key
//! paths, and the key that recognises two views of the same memory so they are stored once.
//!
//! The tree format itself (which tag each type gets) is `tree_format.rs`; it is documented in
//! `ferrotrain/checkpoint/_tree.py` too, whose decoder reads it back.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::format::Dtype;

/// The JSON text of a tree, written in one pass (no intermediate values).
#[derive(Default)]
pub struct JsonText {
    out: String,
}

impl JsonText {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            out: String::with_capacity(n),
        }
    }

    pub fn into_string(self) -> String {
        self.out
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Raw JSON punctuation or an already valid JSON token.
    pub fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    pub fn null(&mut self) {
        self.out.push_str("null");
    }

    pub fn bool(&mut self, b: bool) {
        self.out.push_str(if b { "true" } else { "false" });
    }

    pub fn int(&mut self, v: i64) {
        let _ = write!(self.out, "{v}");
    }

    /// An integer given as its decimal digits (Python ints beyond 64 bits).
    pub fn int_digits(&mut self, digits: &str) -> bool {
        let body = digits.strip_prefix('-').unwrap_or(digits);
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        self.out.push_str(digits);
        true
    }

    /// A finite float, written so that it reads back as a float (never as an int) with the
    /// same value: `1.0`, `0.01`, `1e-5`, `1e16`.
    pub fn float(&mut self, v: f64) {
        debug_assert!(v.is_finite());
        let start = self.out.len();
        let _ = write!(self.out, "{v:?}");
        // Debug prints "1e16" / "1e-7" / "0.1" / "1.0": all floats to a JSON reader; make sure.
        if !self.out[start..].contains(['.', 'e', 'E']) {
            self.out.push_str(".0");
        }
    }

    /// A JSON string literal. Control characters are escaped; everything else is written as
    /// UTF-8 (JSON allows it, and the header holding the tree is UTF-8).
    pub fn string(&mut self, s: &str) {
        self.out.reserve(s.len() + 2);
        self.out.push('"');
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc: Option<&str> = match b {
                b'"' => Some("\\\""),
                b'\\' => Some("\\\\"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                0x08 => Some("\\b"),
                0x0c => Some("\\f"),
                0..=0x1f => None,
                _ => continue,
            };
            self.out.push_str(&s[plain..i]);
            match esc {
                Some(e) => self.out.push_str(e),
                None => {
                    let _ = write!(self.out, "\\u{b:04x}");
                }
            }
            plain = i + 1;
        }
        self.out.push_str(&s[plain..]);
        self.out.push('"');
    }
}

/// Tensor names: the key path joined with `/` ("state_dict/" dropped, so the weights keep their
/// state_dict names in the file), made unique with a `~n` suffix; `__metadata__` is reserved
/// by the file format.
#[derive(Default)]
pub struct Names {
    taken: HashSet<String>,
}

impl Names {
    pub fn claim(&mut self, parts: &[String]) -> String {
        let parts = if parts.len() > 1 && parts[0] == "state_dict" {
            &parts[1..]
        } else {
            parts
        };
        let mut base = parts.join("/");
        if base.is_empty() {
            base = "tensor".into();
        }
        let mut name = base.clone();
        let mut n = 0u64;
        while self.taken.contains(&name) || name == "__metadata__" {
            n += 1;
            name = format!("{base}~{n}");
        }
        self.taken.insert(name.clone());
        name
    }
}

/// Where a tensor's elements are: two tensors with equal keys are views of the same memory
/// with the same shape, strides and dtype, so one copy in the file serves both.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemoryKey {
    pub device: String,
    pub dtype: Dtype,
    /// Address of the first element.
    pub address: usize,
    pub shape: Vec<i64>,
    pub strides: Vec<i64>,
    pub conj: bool,
    pub neg: bool,
}

/// The tensors of a tree, in first-seen order, each stored once.
#[derive(Default)]
pub struct TensorTable {
    names: Names,
    by_memory: HashMap<MemoryKey, usize>,
    /// Per stored tensor: its name.
    pub stored: Vec<String>,
}

impl TensorTable {
    /// The index of the stored tensor for memory `key` (`None`: no elements, never shared),
    /// and whether it is new (the caller then keeps the tensor at that index).
    pub fn add(&mut self, key: Option<MemoryKey>, path: &[String]) -> (usize, bool) {
        if let Some(k) = &key {
            if let Some(&i) = self.by_memory.get(k) {
                return (i, false);
            }
        }
        let i = self.stored.len();
        self.stored.push(self.names.claim(path));
        if let Some(k) = key {
            self.by_memory.insert(k, i);
        }
        (i, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_control_characters() {
        let mut j = JsonText::default();
        j.string("a\"b\\c\nd\u{1}é\u{7f}");
        assert_eq!(j.into_string(), "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"");
        let v: serde_json::Value =
            serde_json::from_str("\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"").unwrap_or_default();
        assert_eq!(v.as_str(), Some("a\"b\\c\nd\u{1}é\u{7f}"));
    }

    #[test]
    fn floats_read_back_as_the_same_float() {
        for v in [
            0.0,
            -0.0,
            1.0,
            0.01,
            1e-5,
            1e16,
            1.5e300,
            f64::MIN_POSITIVE,
            -2.5,
            123456789.0,
        ] {
            let mut j = JsonText::default();
            j.float(v);
            let text = j.into_string();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            assert!(back.is_f64(), "{text} reads back as a float");
            assert_eq!(back.as_f64().map(f64::to_bits), Some(v.to_bits()), "{text}");
        }
    }

    #[test]
    fn big_ints_are_written_only_as_digits() {
        let mut j = JsonText::default();
        assert!(j.int_digits("-123456789012345678901234567890"));
        assert!(!j.int_digits("12a"));
        assert!(!j.int_digits("-"));
        assert_eq!(j.into_string(), "-123456789012345678901234567890");
    }

    #[test]
    fn names_drop_state_dict_and_stay_unique() {
        let mut n = Names::default();
        assert_eq!(
            n.claim(&parts(&["state_dict", "net.0.weight"])),
            "net.0.weight"
        );
        assert_eq!(n.claim(&parts(&["state_dict"])), "state_dict");
        assert_eq!(n.claim(&parts(&["net.0.weight"])), "net.0.weight~1");
        assert_eq!(n.claim(&parts(&[])), "tensor");
        assert_eq!(n.claim(&parts(&["__metadata__"])), "__metadata__~1");
        assert_eq!(n.claim(&parts(&["a", "0", "b"])), "a/0/b");
    }

    #[test]
    fn views_of_the_same_memory_are_stored_once() {
        let key = |address| MemoryKey {
            device: "cpu".into(),
            dtype: Dtype::F32,
            address,
            shape: vec![2, 3],
            strides: vec![3, 1],
            conj: false,
            neg: false,
        };
        let mut t = TensorTable::default();
        assert_eq!(t.add(Some(key(64)), &parts(&["a"])), (0, true));
        assert_eq!(t.add(Some(key(64)), &parts(&["b"])), (0, false));
        assert_eq!(t.add(Some(key(128)), &parts(&["a"])), (1, true));
        assert_eq!(t.add(None, &parts(&["e"])), (2, true));
        assert_eq!(t.add(None, &parts(&["e"])), (3, true));
        assert_eq!(t.stored, vec!["a", "a~1", "e", "e~1"]);
    }
}
