//! Bindings for metric accumulation. `update_from_tensor` reads a scalar straight from a CPU
//! tensor's memory, described by one C call through torch's DLPack exchange table: no
//! `.item()`, no host copy, no torch attribute read on the step path (`self.log` of a loss).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::errors::Raise;
use ferrotrain_core::clip::{bf16_to_f32, f16_to_f32};
use ferrotrain_core::dlpack;
use ferrotrain_core::dtype::{self, Scalar};
use ferrotrain_core::metrics::{MetricStore, Reduce};

#[pyclass(name = "MetricStore", module = "ferrotrain._core")]
pub struct PyMetricStore {
    inner: MetricStore,
}

#[pymethods]
impl PyMetricStore {
    #[new]
    fn new() -> Self {
        Self { inner: MetricStore::new() }
    }

    fn register(&mut self, py: Python<'_>, reduce: &str) -> PyResult<usize> {
        let r = Reduce::parse(reduce).ok_or_else(|| {
            Raise::Misconfiguration.err(py, format!("`reduce_fx` must be one of 'mean', 'sum', 'max', 'min', got {reduce:?}"),
            )
        })?;
        Ok(self.inner.register(r))
    }

    fn update(&mut self, slot: usize, value: f64, weight: f64) -> bool {
        self.inner.update(slot, value, weight)
    }

    /// Add the value of `tensor` when it is a one-element CPU tensor of exactly `tensor_type`
    /// (`torch.Tensor`) with a dtype read here; returns False, having added nothing, for any
    /// other tensor (the caller then takes torch's path, or raises for a non-scalar).
    fn update_from_tensor(
        &mut self,
        slot: usize,
        tensor: &Bound<'_, PyAny>,
        tensor_type: &Bound<'_, PyType>,
        weight: f64,
    ) -> PyResult<bool> {
        let py = tensor.py();
        if !tensor.get_type().is(tensor_type) {
            return Ok(false);
        }
        let Some(describe) = describer(tensor_type) else { return Ok(false) };
        let mut t = dlpack::DlTensor::default();
        // SAFETY: `tensor` is a live object of exactly the type that published `describe`, and
        // the GIL is held, as the exchange API requires.
        if unsafe { describe(tensor.as_ptr().cast(), &mut t) } != 0 {
            drop(PyErr::take(py));
            return Ok(false);
        }
        // SAFETY: the exporter filled `t` for `tensor`, alive and unchanged while the GIL is held.
        let Some(view) = (unsafe { dlpack::cpu_view(&t) }) else { return Ok(false) };
        let Some(scalar) = dtype::of_dlpack(t.dtype).and_then(|r| r.scalar) else { return Ok(false) };
        if view.shape.iter().product::<i64>() != 1 {
            return Ok(false);
        }
        // DLPack has no negation bit: a lazily negated view must be resolved by torch.
        if tensor.call_method0(intern!(py, "is_neg"))?.is_truthy()? {
            return Ok(false);
        }
        self.update_from_ptr(py, slot, view.address, scalar.code(), weight)?;
        Ok(true)
    }

    /// Read one element of `dtype` (a `_core.DTYPES` scalar code) at `ptr` (a live CPU tensor's `data_ptr()`) and add it.
    fn update_from_ptr(&mut self, py: Python<'_>, slot: usize, ptr: usize, dtype: u8, weight: f64) -> PyResult<f64> {
        if ptr == 0 {
            return Err(Raise::LoopState.err(py, "metric tensor has no storage"));
        }
        let Some(scalar) = Scalar::from_code(dtype) else {
            return Err(Raise::LoopState.err(py, format!("unknown metric dtype code {dtype}")));
        };
        // SAFETY: the caller passes the data_ptr of a CPU tensor it holds alive for this call,
        // with at least one element of `dtype`; unaligned reads keep any storage offset safe.
        let value = unsafe {
            match scalar {
                Scalar::F32 => f64::from(std::ptr::read_unaligned(ptr as *const f32)),
                Scalar::F64 => std::ptr::read_unaligned(ptr as *const f64),
                Scalar::F16 => f64::from(f16_to_f32(std::ptr::read_unaligned(ptr as *const u16))),
                Scalar::BF16 => f64::from(bf16_to_f32(std::ptr::read_unaligned(ptr as *const u16))),
                Scalar::I64 => std::ptr::read_unaligned(ptr as *const i64) as f64,
                Scalar::I32 => f64::from(std::ptr::read_unaligned(ptr as *const i32)),
                Scalar::Bool => f64::from(std::ptr::read_unaligned(ptr as *const u8)),
            }
        };
        self.inner.update(slot, value, weight);
        Ok(value)
    }

    fn compute(&self, slot: usize) -> Option<f64> {
        self.inner.compute(slot)
    }

    fn last(&self, slot: usize) -> Option<f64> {
        self.inner.last(slot)
    }

    fn count(&self, slot: usize) -> u64 {
        self.inner.count(slot)
    }

    fn reset(&mut self, slot: usize) {
        self.inner.reset(slot);
    }

    fn reset_all(&mut self) {
        self.inner.reset_all();
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// torch's DLPack describer for `tensor_type` (always `torch.Tensor`), looked up once: `self.log`
/// runs every step, and the table lives as long as the process.
fn describer(tensor_type: &Bound<'_, PyType>) -> Option<dlpack::DlTensorFromPyObject> {
    static DESCRIBE: PyOnceLock<Option<dlpack::DlTensorFromPyObject>> = PyOnceLock::new();
    *DESCRIBE.get_or_init(tensor_type.py(), || crate::clip::exchange_api(tensor_type))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMetricStore>()?;
    Ok(())
}
