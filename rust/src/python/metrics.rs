//! Bindings for metric accumulation. `update_from_ptr` reads a scalar straight from a CPU
//! tensor's memory: no `.item()`, no host copy, no torch call on the step path.

use pyo3::prelude::*;

use super::errors::ferro_err;
use crate::clip::{bf16_to_f32, f16_to_f32};
use crate::metrics::{MetricStore, Reduce};

/// dtype codes shared with `ferrotrain/trainer/results.py` (and, for 0-3, the clip bindings).
const F32: u8 = 0;
const F64: u8 = 1;
const F16: u8 = 2;
const BF16: u8 = 3;
const I64: u8 = 4;
const I32: u8 = 5;
const BOOL: u8 = 6;

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
            ferro_err(
                py,
                "MisconfigurationException",
                format!("`reduce_fx` must be one of 'mean', 'sum', 'max', 'min', got {reduce:?}"),
            )
        })?;
        Ok(self.inner.register(r))
    }

    fn update(&mut self, slot: usize, value: f64, weight: f64) -> bool {
        self.inner.update(slot, value, weight)
    }

    /// Read one element of `dtype` at `ptr` (a live CPU tensor's `data_ptr()`) and add it.
    fn update_from_ptr(&mut self, py: Python<'_>, slot: usize, ptr: usize, dtype: u8, weight: f64) -> PyResult<f64> {
        if ptr == 0 {
            return Err(ferro_err(py, "LoopStateError", "metric tensor has no storage"));
        }
        // SAFETY: the caller passes the data_ptr of a CPU tensor it holds alive for this call,
        // with at least one element of `dtype`; unaligned reads keep any storage offset safe.
        let value = unsafe {
            match dtype {
                F32 => f64::from(std::ptr::read_unaligned(ptr as *const f32)),
                F64 => std::ptr::read_unaligned(ptr as *const f64),
                F16 => f64::from(f16_to_f32(std::ptr::read_unaligned(ptr as *const u16))),
                BF16 => f64::from(bf16_to_f32(std::ptr::read_unaligned(ptr as *const u16))),
                I64 => std::ptr::read_unaligned(ptr as *const i64) as f64,
                I32 => f64::from(std::ptr::read_unaligned(ptr as *const i32)),
                BOOL => f64::from(std::ptr::read_unaligned(ptr as *const u8)),
                _ => return Err(ferro_err(py, "LoopStateError", format!("unknown metric dtype code {dtype}"))),
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMetricStore>()?;
    Ok(())
}
