//! The checkpoint tree format: the tags that mark every non-JSON value, and the writer of each
//! tagged value. The encoder's walk (`rust/src/checkpoint_tree.rs`) says which Python value is
//! which and calls these; the torch writer (`pickle.rs`) reads the same tags back, and
//! `ferrotrain/checkpoint/_tree.py` documents and decodes them.
//!
//! ```text
//! nan / inf / -inf          {"float": "nan" | "inf" | "-inf"}
//! tuple / torch.Size        {"tuple": [...]} / {"size": [...]}
//! dict / OrderedDict        {"dict": {k: v} | [[k, v], ...]} / {"odict": ..., "meta": _metadata?}
//! tensor / Parameter        {"tensor": name, "device"?: "cuda:0", "param"?: requires_grad}
//! numpy array / scalar      {"ndarray": name} / {"np_scalar": name}
//! bytes                     {"bytes": name} (safetensors) / {"bytes_hex": "00ff"} (torch)
//! torch.dtype / device      {"dtype": "bfloat16"} / {"device": "cuda:0"}
//! ```

use super::tree::JsonText;

/// The tag keys.
pub mod tag {
    pub const FLOAT: &str = "float";
    pub const TUPLE: &str = "tuple";
    pub const SIZE: &str = "size";
    pub const DICT: &str = "dict";
    pub const ODICT: &str = "odict";
    /// Beside `odict`: `nn.Module.state_dict()`'s `_metadata`.
    pub const META: &str = "meta";
    pub const TENSOR: &str = "tensor";
    /// Beside `tensor`: the tensor is on this device (not the CPU).
    pub const DEVICE: &str = "device";
    /// Beside `tensor`: it is an `nn.Parameter`, with this `requires_grad`.
    pub const PARAM: &str = "param";
    pub const NDARRAY: &str = "ndarray";
    pub const NP_SCALAR: &str = "np_scalar";
    pub const BYTES: &str = "bytes";
    pub const BYTES_HEX: &str = "bytes_hex";
    pub const DTYPE: &str = "dtype";
}

/// The non-finite floats' names under `float`.
pub const NAN: &str = "nan";
pub const INF: &str = "inf";
pub const NEG_INF: &str = "-inf";

impl JsonText {
    fn tag_key(&mut self, tag: &str) {
        self.raw("{");
        self.string(tag);
        self.raw(":");
    }

    /// `{"tag":` — the tagged value follows, then [`JsonText::end_tagged`].
    pub fn begin_tagged(&mut self, tag: &str) {
        self.tag_key(tag);
    }

    pub fn end_tagged(&mut self) {
        self.raw("}");
    }

    /// `{"tag": "text"}`.
    pub fn tagged_str(&mut self, tag: &str, text: &str) {
        self.tag_key(tag);
        self.string(text);
        self.raw("}");
    }

    /// Any float: finite ones as JSON numbers, the others tagged.
    pub fn any_float(&mut self, v: f64) {
        if v.is_finite() {
            self.float(v);
        } else {
            let name = if v.is_nan() {
                NAN
            } else if v > 0.0 {
                INF
            } else {
                NEG_INF
            };
            self.tagged_str(tag::FLOAT, name);
        }
    }

    /// A `torch.dtype` by its `str()` ("torch.bfloat16" is written "bfloat16").
    pub fn dtype(&mut self, torch_str: &str) {
        self.tagged_str(tag::DTYPE, torch_str.strip_prefix("torch.").unwrap_or(torch_str));
    }

    pub fn device(&mut self, device: &str) {
        self.tagged_str(tag::DEVICE, device);
    }

    /// A `torch.Size`.
    pub fn size(&mut self, dims: &[i64]) {
        self.tag_key(tag::SIZE);
        self.begin_list();
        for (i, &d) in dims.iter().enumerate() {
            self.item(i);
            self.int(d);
        }
        self.end_list();
        self.raw("}");
    }

    /// Bytes in a torch checkpoint, where they are a pickled value rather than a tensor.
    pub fn bytes_hex(&mut self, b: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hex: String = b
            .iter()
            .flat_map(|x| [char::from(HEX[usize::from(x >> 4)]), char::from(HEX[usize::from(x & 15)])])
            .collect();
        self.tagged_str(tag::BYTES_HEX, &hex);
    }

    /// A stored tensor, by its name in the file.
    pub fn tensor_ref(&mut self, name: &str, device: Option<&str>, param: Option<bool>) {
        self.tag_key(tag::TENSOR);
        self.string(name);
        if let Some(d) = device {
            self.raw(",");
            self.string(tag::DEVICE);
            self.raw(":");
            self.string(d);
        }
        if let Some(p) = param {
            self.raw(",");
            self.string(tag::PARAM);
            self.raw(":");
            self.bool(p);
        }
        self.raw("}");
    }

    /// `{"dict":` or `{"odict":`; the items follow (an object or a list of pairs), then
    /// optionally [`JsonText::mapping_meta`], then [`JsonText::end_tagged`].
    pub fn begin_mapping(&mut self, ordered: bool) {
        self.tag_key(if ordered { tag::ODICT } else { tag::DICT });
    }

    /// `,"meta":` — an OrderedDict's `_metadata` value follows.
    pub fn mapping_meta(&mut self) {
        self.raw(",");
        self.string(tag::META);
        self.raw(":");
    }

    pub fn begin_list(&mut self) {
        self.raw("[");
    }

    pub fn end_list(&mut self) {
        self.raw("]");
    }

    pub fn begin_object(&mut self) {
        self.raw("{");
    }

    pub fn end_object(&mut self) {
        self.raw("}");
    }

    /// Before the `i`-th item of a list or object: the separator.
    pub fn item(&mut self, i: usize) {
        if i > 0 {
            self.raw(",");
        }
    }

    /// An object key and its colon; the value follows.
    pub fn key(&mut self, k: &str) {
        self.string(k);
        self.raw(":");
    }
}

#[cfg(test)]
mod tests {
    use super::super::json_tree::{parse, Node};
    use super::*;

    fn text(f: impl FnOnce(&mut JsonText)) -> String {
        let mut j = JsonText::default();
        f(&mut j);
        j.into_string()
    }

    #[test]
    fn each_tagged_value_is_an_object_with_its_tag_first() {
        assert_eq!(text(|j| j.any_float(f64::NAN)), r#"{"float":"nan"}"#);
        assert_eq!(text(|j| j.any_float(f64::NEG_INFINITY)), r#"{"float":"-inf"}"#);
        assert_eq!(text(|j| j.any_float(0.5)), "0.5");
        assert_eq!(text(|j| j.dtype("torch.bfloat16")), r#"{"dtype":"bfloat16"}"#);
        assert_eq!(text(|j| j.device("cuda:0")), r#"{"device":"cuda:0"}"#);
        assert_eq!(text(|j| j.size(&[2, 3])), r#"{"size":[2,3]}"#);
        assert_eq!(text(|j| j.size(&[])), r#"{"size":[]}"#);
        assert_eq!(text(|j| j.bytes_hex(&[0, 255, 16])), r#"{"bytes_hex":"00ff10"}"#);
        assert_eq!(text(|j| j.tensor_ref("w", None, None)), r#"{"tensor":"w"}"#);
        assert_eq!(
            text(|j| j.tensor_ref("w", Some("cuda:1"), Some(false))),
            r#"{"tensor":"w","device":"cuda:1","param":false}"#
        );
        assert_eq!(text(|j| j.tagged_str(tag::NDARRAY, "a")), r#"{"ndarray":"a"}"#);
    }

    #[test]
    fn a_nested_tree_reads_back_with_its_tags_and_order() {
        let tree = text(|j| {
            j.begin_mapping(true);
            j.begin_object();
            for (i, k) in ["b", "a"].into_iter().enumerate() {
                j.item(i);
                j.key(k);
                j.begin_tagged(tag::TUPLE);
                j.begin_list();
                j.item(0);
                j.int(1);
                j.item(1);
                j.null();
                j.end_list();
                j.end_tagged();
            }
            j.end_object();
            j.mapping_meta();
            j.begin_mapping(false);
            j.begin_list();
            j.end_list();
            j.end_tagged();
            j.end_tagged();
        });
        assert_eq!(tree, r#"{"odict":{"b":{"tuple":[1,null]},"a":{"tuple":[1,null]}},"meta":{"dict":[]}}"#);
        let node = parse(&tree).unwrap();
        let Some(Node::Object(items)) = node.get(tag::ODICT) else { panic!("{node:?}") };
        assert_eq!(items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(node.get(tag::META).and_then(|m| m.get(tag::DICT)), Some(&Node::List(vec![])));
    }
}
