//! `encode_checkpoint`: a checkpoint dict becomes its JSON tree, its tensors and the file
//! layout in one native walk. It runs on the training thread at every checkpoint, where the
//! Python encoder it replaces cost several hundred microseconds for a small model (one Python
//! call per node and several attribute reads per tensor); here a node is a type check and a
//! few bytes of JSON, and a CPU tensor is described by one C call through torch's DLPack
//! exchange table (`ferrotrain_core::dlpack`).
//!
//! The rules (which type gets which tag, what may be saved, how tensors are named and shared)
//! are the ones `ferrotrain/checkpoint/_tree.py` documents and decodes. Rare values take a
//! Python helper of that module: tensors that are not plain CPU tensors (devices, Parameters,
//! complex, subclasses, which also raise its errors), numpy values and bytes; every error is
//! built there, from the key path this walk keeps.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

use crate::checkpoint::PyLayout;
use crate::errors::{IntoPyErr, Raise};
use ferrotrain_core::checkpoint::tree::{JsonText, MemoryKey, TensorTable};
use ferrotrain_core::checkpoint::tree_format::tag;
use ferrotrain_core::checkpoint::{AnyLayout, Dtype, Layout, TensorSpec, TorchLayout};
use ferrotrain_core::dlpack;

/// Deeper trees are refused (a Python encoder hit its recursion limit near here too); it also
/// bounds this walk's stack use.
const MAX_DEPTH: usize = 900;

/// One step of a key path: a str key, a list index, or another key object.
enum Part<'py> {
    Str(String),
    Index(usize),
    Obj(Bound<'py, PyAny>),
}

/// The types and helpers the walk compares against, from `_tree._ENCODING` (a tuple, built once
/// when that module is imported).
struct Types<'py> {
    tensor: Bound<'py, PyType>,
    dtype: Bound<'py, PyType>,
    device: Bound<'py, PyType>,
    size: Bound<'py, PyType>,
    odict: Bound<'py, PyType>,
    /// numpy.ndarray and numpy.generic, or None without numpy.
    ndarray: Option<Bound<'py, PyType>>,
    generic: Option<Bound<'py, PyType>>,
    /// `tensor_info(t, path)`, `numpy_tensor(a, path, scalar)`, `bytes_tensor(b, path)`,
    /// `fail(path, what)`, `utf8(s)`.
    tensor_info: Bound<'py, PyAny>,
    numpy_tensor: Bound<'py, PyAny>,
    bytes_tensor: Bound<'py, PyAny>,
    fail: Bound<'py, PyAny>,
    utf8: Bound<'py, PyAny>,
}

impl<'py> Types<'py> {
    fn from_tuple(t: &Bound<'py, PyTuple>) -> PyResult<Self> {
        let ty = |i: usize| -> PyResult<Bound<'py, PyType>> {
            Ok(t.get_item(i)?.cast_into::<PyType>()?)
        };
        let opt_ty = |i: usize| -> PyResult<Option<Bound<'py, PyType>>> {
            let v = t.get_item(i)?;
            if v.is_none() {
                Ok(None)
            } else {
                Ok(Some(v.cast_into::<PyType>()?))
            }
        };
        Ok(Self {
            tensor: ty(0)?,
            dtype: ty(1)?,
            device: ty(2)?,
            size: ty(3)?,
            odict: ty(4)?,
            ndarray: opt_ty(5)?,
            generic: opt_ty(6)?,
            tensor_info: t.get_item(7)?,
            numpy_tensor: t.get_item(8)?,
            bytes_tensor: t.get_item(9)?,
            fail: t.get_item(10)?,
            utf8: t.get_item(11)?,
        })
    }
}

struct Walk<'py> {
    py: Python<'py>,
    types: Types<'py>,
    describe: Option<dlpack::DlTensorFromPyObject>,
    json: JsonText,
    table: TensorTable,
    tensors: Vec<Bound<'py, PyAny>>,
    specs: Vec<TensorSpec>,
    direct: Vec<Option<(usize, usize)>>,
    /// Addresses of the containers on the current path (a container inside itself is a cycle).
    open: Vec<usize>,
    path: Vec<Part<'py>>,
    /// Bytes are values of the tree in torch's format (tensors in safetensors').
    torch_format: bool,
}

/// What `_tree._tensor_info` returns: the tensor to store, its dtype name and shape, the device
/// it was saved from (not the CPU), a Parameter's requires_grad, its memory (device, address,
/// strides, conj, neg; None when empty), and its address when it can be read as it is.
type SlowTensorInfo<'py> = (
    Bound<'py, PyAny>,
    String,
    Vec<i64>,
    Option<String>,
    Option<bool>,
    Option<(String, usize, Vec<i64>, bool, bool)>,
    Option<usize>,
);

/// What a tensor is stored as: its index among the stored tensors, and the extra entries.
struct TensorRef {
    index: usize,
    device: Option<String>,
    param: Option<bool>,
}

impl<'py> Walk<'py> {
    // ---------------------------------------------------------------- errors and paths
    fn path_tuple(&self) -> PyResult<Bound<'py, PyTuple>> {
        let py = self.py;
        let items: Vec<Bound<'py, PyAny>> = self
            .path
            .iter()
            .map(|p| match p {
                Part::Str(s) => PyString::new(py, s).into_any(),
                Part::Index(i) => i
                    .into_pyobject(py)
                    .map(|v| v.into_any())
                    .unwrap_or_else(|e| match e {}),
                Part::Obj(o) => o.clone(),
            })
            .collect();
        PyTuple::new(py, items)
    }

    /// `CheckpointError("cannot save <key path>: <what>")`, built by `_tree`.
    fn fail(&self, what: String) -> PyErr {
        match self
            .path_tuple()
            .and_then(|p| self.types.fail.call1((p, what)))
        {
            Ok(err) => PyErr::from_value(err),
            Err(e) => e,
        }
    }

    /// The path as the tensor name's parts (`str(key)` of each step).
    fn name_parts(&self) -> PyResult<Vec<String>> {
        self.path
            .iter()
            .map(|p| match p {
                Part::Str(s) => Ok(s.clone()),
                Part::Index(i) => Ok(i.to_string()),
                Part::Obj(o) => self.text_of(&o.str()?),
            })
            .collect()
    }

    /// A str's text as UTF-8; lone surrogates (which UTF-8 cannot hold) are escaped by `_tree`.
    fn text_of(&self, s: &Bound<'py, PyString>) -> PyResult<String> {
        match s.to_cow() {
            Ok(t) => Ok(t.into_owned()),
            Err(_) => self.types.utf8.call1((s,))?.extract::<String>(),
        }
    }

    fn enter(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let addr = obj.as_ptr() as usize;
        if self.open.contains(&addr) {
            return Err(self.fail("the checkpoint contains itself (a cycle)".into()));
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(Raise::Checkpoint.err(self.py, "cannot save the checkpoint: it is nested too deeply",
            ));
        }
        self.open.push(addr);
        Ok(())
    }

    fn leave(&mut self) {
        self.open.pop();
    }

    // ---------------------------------------------------------------- values
    fn value(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        // The common exact types first; the order below mirrors the rules in `_tree.py`.
        if obj.is_exact_instance_of::<PyString>() {
            let s = self.text_of(obj.cast::<PyString>()?)?;
            self.json.string(&s);
            return Ok(());
        }
        if obj.is_none() {
            self.json.null();
            return Ok(());
        }
        if obj.is_exact_instance_of::<PyBool>() {
            self.json.bool(obj.is_truthy()?);
            return Ok(());
        }
        if obj.is_exact_instance_of::<PyInt>() {
            return self.int(obj);
        }
        if obj.is_exact_instance_of::<PyFloat>() {
            self.json.any_float(obj.cast::<PyFloat>()?.value());
            return Ok(());
        }
        if obj.is_exact_instance_of::<PyDict>() {
            return self.container(obj, |w, o| w.mapping(o, false));
        }
        if obj.is_exact_instance_of::<PyList>() {
            return self.container(obj, |w, o| w.list(o));
        }
        if obj.is_instance(&self.types.tensor)? {
            return self.tensor_value(obj);
        }
        let ty = obj.get_type();
        if ty.is(&self.types.dtype) {
            let s = obj.str()?;
            let name = self.text_of(&s)?;
            self.json.dtype(&name);
            return Ok(());
        }
        if ty.is(&self.types.device) {
            let s = obj.str()?;
            let name = self.text_of(&s)?;
            self.json.device(&name);
            return Ok(());
        }
        if ty.is(&self.types.size) {
            let dims = obj.try_iter()?.map(|d| d?.extract::<i64>()).collect::<PyResult<Vec<i64>>>()?;
            self.json.size(&dims);
            return Ok(());
        }
        if obj.is_exact_instance_of::<PyBytes>() {
            if self.torch_format {
                // In torch's format bytes are a pickled value (`_codecs.encode`), not a tensor.
                self.json.bytes_hex(obj.cast::<PyBytes>()?.as_bytes());
                return Ok(());
            }
            let t = self.types.bytes_tensor.call1((obj, self.path_tuple()?))?;
            return self.tagged_tensor(tag::BYTES, &t);
        }
        // numpy arrays, then numpy scalars (np.float64 is also a float: numpy's rule comes first).
        let numpy = [(self.types.ndarray.clone(), tag::NDARRAY, false), (self.types.generic.clone(), tag::NP_SCALAR, true)];
        for (numpy_type, tag, scalar) in numpy {
            if let Some(ty) = numpy_type {
                if obj.is_instance(&ty)? {
                    let t = self.types.numpy_tensor.call1((obj, self.path_tuple()?, scalar))?;
                    return self.tagged_tensor(tag, &t);
                }
            }
        }
        if obj.is_instance_of::<PyDict>() {
            let ordered = ty.is(&self.types.odict);
            return self.container(obj, |w, o| w.mapping(o, ordered));
        }
        if obj.is_instance_of::<PyList>() {
            return self.container(obj, |w, o| w.list(o));
        }
        if obj.is_instance_of::<PyTuple>() {
            return self.container(obj, |w, o| {
                w.json.begin_tagged(tag::TUPLE);
                w.list(o)?;
                w.json.end_tagged();
                Ok(())
            });
        }
        // Subclasses of the scalar types (IntEnum, str enums...) are saved as their base type.
        if obj.is_instance_of::<PyInt>() {
            let plain = self.py.get_type::<PyInt>().call1((obj,))?;
            return self.int(&plain);
        }
        if obj.is_instance_of::<PyFloat>() {
            self.json.any_float(obj.extract::<f64>()?);
            return Ok(());
        }
        if obj.is_instance_of::<PyString>() {
            let s = self.text_of(obj.cast::<PyString>()?)?;
            self.json.string(&s);
            return Ok(());
        }
        let module = ty.module().map(|m| m.to_string()).unwrap_or_default();
        let qualname = ty.qualname().map(|m| m.to_string()).unwrap_or_default();
        Err(self.fail(format!(
            "values of type {module}.{qualname} cannot be saved (supported: tensors, \
             None/bool/int/float/str/bytes, dicts, lists, tuples, torch.dtype/device); nothing is pickled"
        )))
    }

    fn int(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        match obj.extract::<i64>() {
            Ok(v) => self.json.int(v),
            Err(_) => {
                // Beyond 64 bits: JSON numbers have no limit, and Python reads the digits back.
                let digits = obj.str()?;
                if !self.json.int_digits(&digits.to_cow()?) {
                    return Err(PyTypeError::new_err(format!(
                        "int {digits} has no decimal form"
                    )));
                }
            }
        }
        Ok(())
    }

    fn container(
        &mut self,
        obj: &Bound<'py, PyAny>,
        body: impl FnOnce(&mut Self, &Bound<'py, PyAny>) -> PyResult<()>,
    ) -> PyResult<()> {
        self.enter(obj)?;
        let out = body(self, obj);
        self.leave();
        out
    }

    fn list(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        // A snapshot of the items: nothing called during the walk can resize what is iterated.
        // (Exact lists and tuples are read by index: no iterator object to allocate.)
        let items: Vec<Bound<'py, PyAny>> = if obj.is_exact_instance_of::<PyList>() {
            obj.cast::<PyList>()?.iter().collect()
        } else if obj.is_exact_instance_of::<PyTuple>() {
            obj.cast::<PyTuple>()?.iter().collect()
        } else {
            obj.try_iter()?.collect::<PyResult<_>>()?
        };
        self.json.begin_list();
        for (i, v) in items.iter().enumerate() {
            self.json.item(i);
            self.path.push(Part::Index(i));
            let r = self.value(v);
            self.path.pop();
            r?;
        }
        self.json.end_list();
        Ok(())
    }

    fn mapping(&mut self, obj: &Bound<'py, PyAny>, ordered: bool) -> PyResult<()> {
        // `items()` in the mapping's own order (an OrderedDict may differ from its dict storage).
        let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> =
            if obj.is_exact_instance_of::<PyDict>() {
                dict_items(obj.cast::<PyDict>()?)
            } else {
                obj.call_method0(intern!(self.py, "items"))?
                    .try_iter()?
                    .map(|kv| kv.and_then(|kv| kv.extract()))
                    .collect::<PyResult<_>>()?
            };
        self.json.begin_mapping(ordered);
        if items.iter().all(|(k, _)| k.is_instance_of::<PyString>()) {
            self.json.begin_object();
            for (i, (k, v)) in items.iter().enumerate() {
                self.json.item(i);
                let key = self.text_of(k.cast::<PyString>()?)?;
                self.json.key(&key);
                self.path.push(Part::Str(key));
                let r = self.value(v);
                self.path.pop();
                r?;
            }
            self.json.end_object();
        } else {
            self.json.begin_list();
            for (i, (k, v)) in items.iter().enumerate() {
                self.json.item(i);
                self.path.push(Part::Obj(k.clone()));
                self.json.begin_list();
                let r = self.key(k).and_then(|()| {
                    self.json.item(1);
                    self.value(v)
                });
                self.json.end_list();
                self.path.pop();
                r?;
            }
            self.json.end_list();
        }
        if ordered {
            // nn.Module.state_dict() keeps the modules' versions here.
            let meta = obj.getattr_opt(intern!(self.py, "_metadata"))?;
            if let Some(meta) = meta.filter(|m| !m.is_none()) {
                self.json.mapping_meta();
                self.path.push(Part::Str("_metadata".into()));
                let r = self.value(&meta);
                self.path.pop();
                r?;
            }
        }
        self.json.end_tagged();
        Ok(())
    }

    /// A key of a dict whose keys are not all strings: None, bool, int, float, str or tuple.
    fn key(&mut self, k: &Bound<'py, PyAny>) -> PyResult<()> {
        let ok = k.is_none()
            || k.is_instance_of::<PyInt>()
            || k.is_instance_of::<PyFloat>()
            || k.is_instance_of::<PyString>()
            || k.is_instance_of::<PyTuple>();
        if ok {
            return self.value(k);
        }
        let repr = k
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        let qualname = k
            .get_type()
            .qualname()
            .map(|q| q.to_string())
            .unwrap_or_default();
        Err(self.fail(format!(
            "dict key {repr} of type {qualname} is not supported"
        )))
    }

    // ---------------------------------------------------------------- tensors
    fn tensor_value(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let r = self.tensor(obj)?;
        self.json.tensor_ref(&self.table.stored[r.index], r.device.as_deref(), r.param);
        Ok(())
    }

    /// A numpy value or bytes, already turned into a CPU tensor by `_tree`.
    fn tagged_tensor(&mut self, tag: &str, t: &Bound<'py, PyAny>) -> PyResult<()> {
        let r = self.tensor(t)?;
        self.json.tagged_str(tag, &self.table.stored[r.index]);
        Ok(())
    }

    fn tensor(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<TensorRef> {
        if obj.get_type().is(&self.types.tensor) {
            if let Some(fast) = self.describe_cpu(obj)? {
                let (key, dtype, shape, direct) = fast;
                let index = self.store(obj, key, dtype, &shape, direct)?;
                return Ok(TensorRef {
                    index,
                    device: None,
                    param: None,
                });
            }
        }
        // Everything else (other devices, Parameters, complex, subclasses...) is described,
        // or refused with its error, by `_tree`.
        let info = self.types.tensor_info.call1((obj, self.path_tuple()?))?;
        let (stored, dtype_name, shape, device, param, key, direct): SlowTensorInfo<'py> =
            info.extract()?;
        let dtype = Dtype::parse(&dtype_name).ok_or_else(|| {
            Raise::Checkpoint.err(self.py, format!("dtype {dtype_name} has no file type"),
            )
        })?;
        let key = key.map(|(device, address, strides, conj, neg)| MemoryKey {
            device,
            dtype,
            address,
            shape: shape.clone(),
            strides,
            conj,
            neg,
        });
        let nbytes = byte_len(dtype, &shape);
        let direct = direct.and_then(|p| nbytes.map(|n| (p, n)));
        let index = self.store(&stored, key, dtype, &shape, direct)?;
        Ok(TensorRef {
            index,
            device,
            param,
        })
    }

    /// A plain CPU tensor through the DLPack exchange table: (memory key, dtype, shape, and its
    /// bytes when contiguous). `None` leaves it to `_tree`'s slower path.
    #[allow(clippy::type_complexity)]
    fn describe_cpu(
        &self,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<Option<(Option<MemoryKey>, Dtype, Vec<i64>, Option<(usize, usize)>)>> {
        let Some(describe) = self.describe else {
            return Ok(None);
        };
        let mut t = dlpack::DlTensor::default();
        // SAFETY: `obj` is a live object of exactly the type that published `describe` (checked
        // by the caller), and the GIL is held, as the exchange API requires.
        if unsafe { describe(obj.as_ptr().cast(), &mut t) } != 0 {
            drop(PyErr::take(self.py));
            return Ok(None);
        }
        // SAFETY: the exporter filled `t` for `obj`, which the caller holds alive and which
        // nothing changes while the GIL is held; shape and strides point at `ndim` values.
        let Some(view) = (unsafe { dlpack::cpu_view(&t) }) else {
            return Ok(None);
        };
        let Some(dtype) = file_dtype(t.dtype) else {
            return Ok(None);
        };
        // DLPack has no negation bit: a lazily negated view (`.imag` of a conjugate) must be
        // resolved by torch, on the slow path.
        if obj.call_method0(intern!(self.py, "is_neg"))?.is_truthy()? {
            return Ok(None);
        }
        let Some(nbytes) = byte_len(dtype, &view.shape) else {
            return Ok(None);
        };
        let key = (nbytes > 0).then(|| MemoryKey {
            device: "cpu".into(),
            dtype,
            address: view.address,
            shape: view.shape.clone(),
            strides: view.strides.clone(),
            conj: false,
            neg: false,
        });
        let direct = view.contiguous.then_some((view.address, nbytes));
        Ok(Some((key, dtype, view.shape, direct)))
    }

    fn store(
        &mut self,
        obj: &Bound<'py, PyAny>,
        key: Option<MemoryKey>,
        dtype: Dtype,
        shape: &[i64],
        direct: Option<(usize, usize)>,
    ) -> PyResult<usize> {
        let parts = self.name_parts()?;
        let (index, new) = self.table.add(key, &parts);
        if new {
            let shape = shape
                .iter()
                .map(|&d| u64::try_from(d).unwrap_or(0))
                .collect();
            self.specs.push(TensorSpec {
                name: self.table.stored[index].clone(),
                dtype,
                shape,
            });
            self.tensors.push(obj.clone());
            self.direct.push(direct);
        }
        Ok(index)
    }
}

/// A snapshot of a dict's items, in order, taken before any of them is encoded (so nothing the
/// walk calls can change what is iterated). Read with `PyDict_Next`, which allocates nothing:
/// `items()` would make a tuple per entry, enough garbage at every checkpoint to set off
/// Python's cyclic collector, whose full passes over torch's objects cost more than the walk.
fn dict_items<'py>(d: &Bound<'py, PyDict>) -> Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let py = d.py();
    let mut out = Vec::with_capacity(d.len());
    let mut pos: pyo3::ffi::Py_ssize_t = 0;
    let mut key: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
    let mut value: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
    // SAFETY: the GIL is held and `d` is a live dict; no Python code runs between the calls (the
    // loop body only takes new references), so the dict cannot change during the iteration.
    // PyDict_Next returns borrowed, non-null references to the current entry when it returns 1.
    while unsafe { pyo3::ffi::PyDict_Next(d.as_ptr(), &mut pos, &mut key, &mut value) } != 0 {
        // SAFETY: as above: borrowed references to live objects, owned from here on.
        let (k, v) = unsafe {
            (
                Bound::from_borrowed_ptr(py, key),
                Bound::from_borrowed_ptr(py, value),
            )
        };
        out.push((k, v));
    }
    out
}

/// Bytes of a tensor of this dtype and shape (`None` when it cannot be counted).
fn byte_len(dtype: Dtype, shape: &[i64]) -> Option<usize> {
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
    numel.checked_mul(dtype.size() as usize)
}

/// The file dtype of a DLPack scalar type, for the types the fast path takes (complex and the
/// float8 types go through torch, which knows their exact flavour).
fn file_dtype(t: dlpack::DlDataType) -> Option<Dtype> {
    ferrotrain_core::dtype::of_dlpack(t).map(|r| r.file)
}

/// Encode `checkpoint` (a dict; `_tree.flatten` checks that) with the helpers of `_tree`.
/// Returns `(tree, names, tensors, layout, direct)`: the JSON tree, the stored tensors' names
/// and objects in first-seen order, the file layout (with `metadata` added to the header), and
/// per tensor `(address, nbytes)` when it is a contiguous CPU tensor whose memory can be read
/// as is, else None (torch copies it).
#[pyfunction]
#[pyo3(signature = (checkpoint, encoding, metadata, format = "torch"))]
#[allow(clippy::type_complexity)]
fn encode_checkpoint<'py>(
    py: Python<'py>,
    checkpoint: &Bound<'py, PyAny>,
    encoding: &Bound<'py, PyTuple>,
    metadata: std::collections::BTreeMap<String, String>,
    format: &str,
) -> PyResult<(
    String,
    Vec<String>,
    Vec<Bound<'py, PyAny>>,
    PyLayout,
    Vec<Option<(usize, usize)>>,
)> {
    let types = Types::from_tuple(encoding)?;
    let describe = crate::clip::exchange_api(&types.tensor);
    let mut walk = Walk {
        py,
        types,
        describe,
        json: JsonText::with_capacity(4096),
        table: TensorTable::default(),
        tensors: Vec::new(),
        specs: Vec::new(),
        direct: Vec::new(),
        open: Vec::new(),
        path: Vec::new(),
        torch_format: format == "torch",
    };
    walk.value(checkpoint)?;
    let tree = walk.json.into_string();
    let layout = match format {
        "torch" => TorchLayout::new(walk.specs, &tree).map(AnyLayout::Torch),
        "safetensors" => Layout::new(walk.specs, &tree, metadata).map(AnyLayout::Safetensors),
        other => {
            return Err(PyTypeError::new_err(format!(
                "format must be 'torch' or 'safetensors', got {other:?}"
            )))
        }
    }
    .map_err(|e| e.into_py_err(py))?;
    Ok((
        tree,
        walk.table.stored,
        walk.tensors,
        PyLayout::from(layout),
        walk.direct,
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_checkpoint, m)?)?;
    Ok(())
}
