//! Bindings for the gradient-norm and clip math (`ferrotrain_core::clip`). `split_grads` describes each
//! contiguous CPU gradient as a `(data_ptr, numel, dtype_code)` triple (through torch's DLPack
//! exchange table, `ferrotrain_core::dlpack`) and returns them checked, as a `GradBufs`, while Python keeps
//! the tensors alive for the call; the kernel functions take only a `GradBufs` (no pointer comes
//! from Python), release the GIL and run on the raw memory. Every non-CPU or strided gradient
//! stays in Python, on torch's `_foreach` path.

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple, PyType};

use crate::errors::Raise;
use ferrotrain_core::clip::{self, DType, Grad, GradMut, NormAcc, NormType};
use ferrotrain_core::dlpack;

/// A checked `(data_ptr, numel, dtype)` triple.
#[derive(Clone, Copy)]
struct RawBuf {
    ptr: usize,
    len: usize,
    dtype: DType,
}

impl RawBuf {
    /// A shared view of the memory.
    ///
    /// SAFETY: `split_grads` read the start and length of a contiguous CPU tensor of this dtype,
    /// whose owner (Python) holds it alive for the whole call; `checked` verified
    /// the pointer is non-null and aligned. Nothing writes it while this view lives: the only
    /// writers are `grad_mut` views, made one at a time after all reads are done.
    unsafe fn grad(&self) -> Grad<'_> {
        let p = self.ptr as *const u8;
        match self.dtype {
            DType::F32 => Grad::F32(std::slice::from_raw_parts(p.cast(), self.len)),
            DType::F64 => Grad::F64(std::slice::from_raw_parts(p.cast(), self.len)),
            DType::F16 => Grad::F16(std::slice::from_raw_parts(p.cast(), self.len)),
            DType::BF16 => Grad::BF16(std::slice::from_raw_parts(p.cast(), self.len)),
        }
    }

    /// A mutable view of the memory.
    ///
    /// SAFETY: as `grad`, and the view must be dropped before another view of any buffer is
    /// made: two triples may point at the same memory (a parameter listed twice), so views are
    /// created one at a time, never held together.
    unsafe fn grad_mut(&self) -> GradMut<'_> {
        let p = self.ptr as *mut u8;
        match self.dtype {
            DType::F32 => GradMut::F32(std::slice::from_raw_parts_mut(p.cast(), self.len)),
            DType::F64 => GradMut::F64(std::slice::from_raw_parts_mut(p.cast(), self.len)),
            DType::F16 => GradMut::F16(std::slice::from_raw_parts_mut(p.cast(), self.len)),
            DType::BF16 => GradMut::BF16(std::slice::from_raw_parts_mut(p.cast(), self.len)),
        }
    }
}

/// Check every triple before any memory is touched; empty buffers are dropped. Also returns
/// the set of dtypes seen, as a bit mask over the dtype codes (Python picks the result dtype
/// from it, as torch promotes the per-dtype norms).
fn checked(py: Python<'_>, bufs: Vec<(usize, usize, u8)>) -> PyResult<(Vec<RawBuf>, u8)> {
    let mut out = Vec::with_capacity(bufs.len());
    let mut mask = 0u8;
    for (ptr, len, code) in bufs {
        let dtype = DType::from_code(code)
            .ok_or_else(|| Raise::LoopState.err(py, format!("unknown gradient dtype code {code}")))?;
        mask |= 1 << code;
        if len == 0 {
            continue;
        }
        if ptr == 0 || ptr % dtype.size() != 0 || len.checked_mul(dtype.size()).is_none() {
            return Err(Raise::LoopState.err(py, format!("gradient buffer at {ptr:#x} with {len} elements of {dtype:?} is null or misaligned"),
            ));
        }
        out.push(RawBuf { ptr, len, dtype });
    }
    Ok((out, mask))
}

/// The buffers of a list of gradients as `split_grads` sorted them, checked once, for the
/// calls that follow within the same Python function (`utilities/clip.py`), which holds the
/// gradient tensors alive alongside it. Never kept across steps: gradients come and go.
#[pyclass(frozen, module = "ferrotrain._core", name = "GradBufs")]
pub struct GradBufs {
    /// The non-empty buffers, checked.
    bufs: Vec<RawBuf>,
    mask: u8,
    /// For every gradient covered, in order: whether it has elements (per-gradient norms
    /// report the empty ones too).
    nonempty: Vec<bool>,
}

impl GradBufs {
    fn from_triples(py: Python<'_>, triples: Vec<(usize, usize, u8)>) -> PyResult<Self> {
        let nonempty = triples.iter().map(|t| t.1 != 0).collect();
        let (bufs, mask) = checked(py, triples)?;
        Ok(Self { bufs, mask, nonempty })
    }
}

#[pymethods]
impl GradBufs {
    /// The number of gradients covered (empty ones included).
    fn __len__(&self) -> usize {
        self.nonempty.len()
    }
}

/// Sort gradients for `utilities/clip.py` in one call: a gradient goes to the native path when
/// its type is exactly `tensor_type` (a subclass may override what it reports), its dtype is one
/// of `dtypes` (the codes' order), it is on the CPU and contiguous, and it can export its
/// memory (sparse and mkldnn tensors cannot). Returns the native buffers and the indices of the
/// gradients left to torch. Each gradient is described by one C call through torch's DLPack
/// exchange table when torch has one, else by reading its attributes.
#[pyfunction]
fn split_grads(
    py: Python<'_>,
    grads: &Bound<'_, PyList>,
    tensor_type: &Bound<'_, PyType>,
    dtypes: &Bound<'_, PyTuple>,
) -> PyResult<(GradBufs, Vec<usize>)> {
    let describe = exchange_api(tensor_type);
    let mut triples = Vec::with_capacity(grads.len());
    let mut slow = Vec::new();
    for (i, g) in grads.iter().enumerate() {
        let triple = match describe {
            Some(f) if g.get_type().is(tensor_type) => dlpack_triple(py, &g, f),
            _ => native_triple(py, &g, tensor_type, dtypes)?,
        };
        match triple {
            Some(t) => triples.push(t),
            None => slow.push(i),
        }
    }
    Ok((GradBufs::from_triples(py, triples)?, slow))
}

/// The DLPack describer torch publishes on the tensor type (`__dlpack_c_exchange_api__`), if
/// this torch has one whose layout we know. Looked up per call: a getattr, no import.
pub(super) fn exchange_api(tensor_type: &Bound<'_, PyType>) -> Option<dlpack::DlTensorFromPyObject> {
    let py = tensor_type.py();
    let capsule = tensor_type.getattr(intern!(py, "__dlpack_c_exchange_api__")).ok()?;
    // SAFETY: `capsule` is a live object; GetPointer checks that it is a capsule with this
    // name and returns null (with an exception set) otherwise.
    let api = unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule.as_ptr(), dlpack::EXCHANGE_API_CAPSULE.as_ptr()) };
    if api.is_null() {
        drop(PyErr::take(py));
        return None;
    }
    // SAFETY: a capsule of this name holds a `DLPackExchangeAPI` that lives as long as the
    // process (dlpack.h); its header is read first and the rest only for the known major version.
    let api = unsafe { &*api.cast::<dlpack::DlExchangeApi>() };
    if api.header.version.major != dlpack::MAJOR_VERSION {
        return None;
    }
    api.dltensor_from_py_object_no_sync
}

/// The triple of one gradient of exactly the exporting type, read in one C call; `None` when it
/// is not a contiguous CPU buffer of a native dtype (or cannot be exported: sparse, mkldnn).
fn dlpack_triple(py: Python<'_>, g: &Bound<'_, PyAny>, describe: dlpack::DlTensorFromPyObject) -> Option<(usize, usize, u8)> {
    let mut t = dlpack::DlTensor::default();
    // SAFETY: `g` is a live object of the type that published `describe` (checked by the
    // caller), and the GIL is held, as the exchange API requires.
    if unsafe { describe(g.as_ptr().cast(), &mut t) } != 0 {
        drop(PyErr::take(py));
        return None;
    }
    // SAFETY: the exporter filled `t` for `g`, which the caller holds alive and which nothing
    // changes while the GIL is held; shape and strides point at `ndim` values.
    let (ptr, numel, dtype) = unsafe { dlpack::cpu_buffer(&t) }?;
    Some((ptr, numel, dtype as u8))
}

fn native_triple(
    py: Python<'_>,
    g: &Bound<'_, PyAny>,
    tensor_type: &Bound<'_, PyType>,
    dtypes: &Bound<'_, PyTuple>,
) -> PyResult<Option<(usize, usize, u8)>> {
    if !g.get_type().is(tensor_type) {
        return Ok(None);
    }
    let dtype = g.getattr(intern!(py, "dtype"))?;
    let Some(code) = dtypes.iter().position(|d| d.is(&dtype)) else {
        return Ok(None);
    };
    if !g.getattr(intern!(py, "is_cpu"))?.is_truthy()? || !g.call_method0(intern!(py, "is_contiguous"))?.is_truthy()? {
        return Ok(None);
    }
    let ptr = match g.call_method0(intern!(py, "data_ptr")) {
        Ok(p) => p.extract::<usize>()?,
        Err(e) if e.is_instance_of::<PyRuntimeError>(py) => return Ok(None),
        Err(e) => return Err(e),
    };
    let numel = g.call_method0(intern!(py, "numel"))?.extract::<usize>()?;
    // At most 4 dtypes are passed: the position fits a u8.
    Ok(Some((ptr, numel, u8::try_from(code).unwrap_or(u8::MAX))))
}

/// The buffers of a call, and their dtype mask: a copy of a few words per gradient, far cheaper
/// than describing the gradients again.
fn held(bufs: &Bound<'_, GradBufs>) -> (Vec<RawBuf>, u8) {
    let b = bufs.get();
    (b.bufs.clone(), b.mask)
}

fn norm_type(py: Python<'_>, p: f64) -> PyResult<NormType> {
    NormType::from_p(p).ok_or_else(|| {
        Raise::Misconfiguration.err(py, format!("`norm_type` must be a positive number or 'inf' (infinity norm), got {p}"),
        )
    })
}

fn total(bufs: &[RawBuf], norm: NormType) -> f64 {
    let mut acc = NormAcc::new(norm);
    for b in bufs {
        // SAFETY: see `RawBuf::grad`; no mutable view exists during this loop.
        acc.add(unsafe { b.grad() });
    }
    acc.finish()
}

fn scale(bufs: &[RawBuf], coef: f64) {
    for b in bufs {
        // SAFETY: see `RawBuf::grad_mut`; the view dies at the end of this statement.
        clip::scale_in_place(unsafe { b.grad_mut() }, coef);
    }
}

/// The total `norm_type`-norm of the buffers, seen as one vector, and the dtype mask.
#[pyfunction]
fn grad_norm_bufs(py: Python<'_>, bufs: Bound<'_, GradBufs>, norm_type: f64) -> PyResult<(f64, u8)> {
    let norm = self::norm_type(py, norm_type)?;
    let (bufs, mask) = held(&bufs);
    Ok((py.detach(|| total(&bufs, norm)), mask))
}

/// The norm of each gradient and of all together, in one pass. Empty gradients have norm 0.
#[pyfunction]
fn grad_norms_bufs(py: Python<'_>, bufs: Bound<'_, GradBufs>, norm_type: f64) -> PyResult<(Vec<f64>, f64)> {
    let norm = self::norm_type(py, norm_type)?;
    let nonempty = bufs.get().nonempty.clone();
    let (bufs, _) = held(&bufs);
    let (norms, total) = py.detach(|| {
        // SAFETY: see `RawBuf::grad`; only shared views exist in this closure.
        let grads: Vec<Grad<'_>> = bufs.iter().map(|b| unsafe { b.grad() }).collect();
        clip::norms_and_total(&grads, norm)
    });
    let mut each = Vec::with_capacity(nonempty.len());
    let mut it = norms.into_iter();
    for k in nonempty {
        each.push(if k { it.next().unwrap_or(0.0) } else { 0.0 });
    }
    Ok((each, total))
}

/// torch's `clip_grad_norm_` on the buffers: the total norm, then (unless the coefficient is at
/// least 1) an in-place scale by `max_norm / (norm + 1e-6)`. With `error_if_nonfinite`, a NaN or
/// inf norm scales nothing; the caller raises. Returns `(norm, scaled, dtype mask)`.
#[pyfunction]
fn clip_grad_norm_bufs(
    py: Python<'_>,
    bufs: Bound<'_, GradBufs>,
    max_norm: f64,
    norm_type: f64,
    error_if_nonfinite: bool,
) -> PyResult<(f64, bool, u8)> {
    let norm = self::norm_type(py, norm_type)?;
    let (bufs, mask) = held(&bufs);
    let (t, scaled) = py.detach(|| {
        let t = total(&bufs, norm);
        if error_if_nonfinite && !t.is_finite() {
            return (t, false);
        }
        match clip::clip_coef(t, max_norm) {
            Some(coef) => {
                scale(&bufs, coef);
                (t, true)
            }
            None => (t, false),
        }
    });
    Ok((t, scaled, mask))
}

/// Multiply every element of the buffers by `coef` in place.
#[pyfunction]
fn scale_bufs(py: Python<'_>, bufs: Bound<'_, GradBufs>, coef: f64) -> PyResult<()> {
    let (bufs, _) = held(&bufs);
    py.detach(|| scale(&bufs, coef));
    Ok(())
}

/// Clamp every element of the buffers to `[-clip_value, clip_value]` in place.
#[pyfunction]
fn clamp_bufs(py: Python<'_>, bufs: Bound<'_, GradBufs>, clip_value: f64) -> PyResult<()> {
    let (bufs, _) = held(&bufs);
    py.detach(|| {
        for b in &bufs {
            // SAFETY: see `RawBuf::grad_mut`; the view dies at the end of this statement.
            clip::clamp_in_place(unsafe { b.grad_mut() }, clip_value);
        }
    });
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<GradBufs>()?;
    m.add_function(wrap_pyfunction!(split_grads, m)?)?;
    m.add_function(wrap_pyfunction!(grad_norm_bufs, m)?)?;
    m.add_function(wrap_pyfunction!(grad_norms_bufs, m)?)?;
    m.add_function(wrap_pyfunction!(clip_grad_norm_bufs, m)?)?;
    m.add_function(wrap_pyfunction!(scale_bufs, m)?)?;
    m.add_function(wrap_pyfunction!(clamp_bufs, m)?)?;
    Ok(())
}
