//! Bindings for the loop profiler's `PhaseTimer`, and the stamps the batch runner makes with it.
//!
//! Python wraps hooks and step parts in `enter(i)` / `exit()` pairs only when profiling is on;
//! `run_train_epoch` stamps each step's start and end and the wait for data. With no timer, the
//! batch runner uses `ferrotrain_core::epoch::NoStamps`, whose methods are empty and inlined away: profiling off costs
//! nothing per step.

use pyo3::prelude::*;

use ferrotrain_core::epoch::Stamps;
use ferrotrain_core::profile::PhaseTimer;

/// Phase name of the wait for the next batch, stamped by the batch runner itself.
pub const DATA_WAIT: &str = "[loop] wait for data";

#[pyclass(name = "PhaseTimer", module = "ferrotrain._core")]
pub struct PyPhaseTimer {
    inner: PhaseTimer,
}

#[pymethods]
impl PyPhaseTimer {
    #[new]
    fn new() -> Self {
        Self { inner: PhaseTimer::new() }
    }

    /// Index of phase `name`, registered on first use (call once at plan time).
    fn phase(&mut self, name: &str) -> usize {
        self.inner.phase(name)
    }

    fn enter(&mut self, phase: usize) {
        self.inner.enter(phase);
    }

    fn exit(&mut self) {
        self.inner.exit();
    }

    fn begin_step(&mut self) {
        self.inner.begin_step();
    }

    fn end_step(&mut self) {
        self.inner.end_step();
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    /// `(name, calls, in_step_ns, outside_ns)` per phase, in registration order.
    fn stats(&self) -> Vec<(String, u64, u64, u64)> {
        self.inner
            .phases()
            .iter()
            .map(|p| (p.name.clone(), p.calls, p.in_step_ns, p.outside_ns))
            .collect()
    }

    #[getter]
    fn steps(&self) -> u64 {
        self.inner.steps()
    }

    #[getter]
    fn step_ns(&self) -> u64 {
        self.inner.step_ns()
    }

    #[getter]
    fn overhead_ns(&self) -> u64 {
        self.inner.overhead_ns()
    }
}

/// A timer borrowed for the epoch; each stamp borrows it only for the stamp (Python wrappers
/// borrow it in between).
pub struct TimerStamps<'a, 'py> {
    timer: &'a Bound<'py, PyPhaseTimer>,
    data_wait: usize,
}

impl<'a, 'py> TimerStamps<'a, 'py> {
    pub fn new(timer: &'a Bound<'py, PyPhaseTimer>) -> PyResult<Self> {
        let data_wait = timer.try_borrow_mut()?.inner.phase(DATA_WAIT);
        Ok(Self { timer, data_wait })
    }

    fn with(&self, f: impl FnOnce(&mut PhaseTimer)) {
        // A timer already borrowed (never the case in the loop) skips the stamp rather than fail.
        if let Ok(mut t) = self.timer.try_borrow_mut() {
            f(&mut t.inner);
        }
    }
}

impl Stamps for TimerStamps<'_, '_> {
    fn begin_step(&self) {
        self.with(PhaseTimer::begin_step);
    }
    fn enter_data_wait(&self) {
        let i = self.data_wait;
        self.with(|t| t.enter(i));
    }
    fn exit(&self) {
        self.with(PhaseTimer::exit);
    }
    fn end_step(&self) {
        self.with(PhaseTimer::end_step);
    }
    fn cancel_step(&self) {
        self.with(PhaseTimer::cancel_step);
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPhaseTimer>()?;
    m.add("PHASE_DATA_WAIT", DATA_WAIT)?;
    Ok(())
}
