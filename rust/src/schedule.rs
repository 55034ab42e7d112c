//! Bindings for the loop schedule and the epoch driver (`ferrotrain_core::epoch`). `run_train_epoch` adapts
//! Python callables to the driver's closures: the per-batch loop itself is pure Rust, tested
//! without an interpreter.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::IntoPyErr;
use crate::profile::{PyPhaseTimer, TimerStamps};
use ferrotrain_core::epoch::{run_epoch, AfterBatch, EpochError, EpochHooks, NoStamps, ScheduleCell};
use ferrotrain_core::schedule::{BatchPlan, Progress, Schedule, ScheduleConfig};

fn opt_limit(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

/// Flags of a `BatchPlan`, packed for the Python side (bit 0: zero_grad, bit 1: step, bit 2: last).
pub const ZERO_GRAD: u8 = 1;
pub const STEP: u8 = 2;
pub const LAST: u8 = 4;

fn pack(plan: &BatchPlan) -> u8 {
    (if plan.zero_grad { ZERO_GRAD } else { 0 })
        | (if plan.step_optimizer { STEP } else { 0 })
        | (if plan.is_last { LAST } else { 0 })
}

#[pyclass(name = "Schedule", module = "ferrotrain._core")]
pub struct PySchedule {
    inner: Schedule,
}

#[pymethods]
impl PySchedule {
    /// Limits use -1 for "none", as the Trainer arguments do.
    #[new]
    #[pyo3(signature = (*, max_epochs, max_steps, min_epochs, min_steps, accumulate_grad_batches,
        log_every_n_steps, check_val_every_n_epoch, val_check_batch, has_validation,
        automatic_optimization))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        max_epochs: i64,
        max_steps: i64,
        min_epochs: u64,
        min_steps: u64,
        accumulate_grad_batches: u64,
        log_every_n_steps: u64,
        check_val_every_n_epoch: Option<u64>,
        val_check_batch: Option<u64>,
        has_validation: bool,
        automatic_optimization: bool,
    ) -> PyResult<Self> {
        let cfg = ScheduleConfig {
            max_epochs: opt_limit(max_epochs),
            max_steps: opt_limit(max_steps),
            min_epochs,
            min_steps,
            accumulate_grad_batches,
            log_every_n_steps,
            check_val_every_n_epoch,
            val_check_batch,
            has_validation,
            automatic_optimization,
        };
        Schedule::new(cfg).map(|inner| Self { inner }).map_err(|e| e.into_py_err(py))
    }

    #[getter]
    fn should_stop(&self) -> bool {
        self.inner.should_stop()
    }

    #[setter]
    fn set_should_stop(&mut self, value: bool) {
        self.inner.set_should_stop(value);
    }

    /// A stop requested from outside the loop (preemption): the fit ends at the first batch
    /// boundary at or after this `global_step` with no accumulation window open; None: none.
    #[getter]
    fn stop_at_step(&self) -> Option<u64> {
        self.inner.stop_at_step()
    }

    #[setter]
    fn set_stop_at_step(&mut self, step: Option<u64>) {
        self.inner.set_stop_at_step(step);
    }

    fn stop_step_reached(&self) -> bool {
        self.inner.stop_step_reached()
    }

    /// Whether the running epoch is over (its batches, a limit, a requested stop).
    fn epoch_done(&self) -> bool {
        self.inner.epoch_done()
    }

    #[getter]
    fn global_step(&self) -> u64 {
        self.inner.progress().global_step
    }

    #[getter]
    fn current_epoch(&self) -> u64 {
        self.inner.progress().epoch
    }

    #[getter]
    fn batches_in_epoch(&self) -> u64 {
        self.inner.progress().batches_in_epoch
    }

    #[getter]
    fn batches_that_stepped(&self) -> u64 {
        self.inner.progress().batches_that_stepped
    }

    /// The epoch limit (-1: none); settable while a fit runs.
    #[setter]
    fn set_max_epochs(&mut self, max_epochs: i64) {
        self.inner.set_max_epochs(opt_limit(max_epochs));
    }

    /// Whether the current training batch is the epoch's last (`Trainer.is_last_batch`).
    #[getter]
    fn is_last_batch(&self) -> bool {
        self.inner.is_last_batch()
    }

    /// The loop progress as a flat dict, for checkpoints.
    fn state_dict(&self) -> [(&'static str, u64); 6] {
        let p = self.inner.checkpoint_progress();
        [
            ("epoch", p.epoch),
            ("epochs_processed", p.epochs_processed),
            ("batches_in_epoch", p.batches_in_epoch),
            ("total_batches", p.total_batches),
            ("global_step", p.global_step),
            ("batches_that_stepped", p.batches_that_stepped),
        ]
    }

    #[pyo3(signature = (*, epoch, epochs_processed, batches_in_epoch, total_batches, global_step, batches_that_stepped))]
    fn load_state_dict(
        &mut self,
        epoch: u64,
        epochs_processed: u64,
        batches_in_epoch: u64,
        total_batches: u64,
        global_step: u64,
        batches_that_stepped: u64,
    ) {
        self.inner.restore(Progress {
            epoch,
            epochs_processed,
            batches_in_epoch,
            total_batches,
            global_step,
            batches_that_stepped,
        });
    }

    fn set_val_check_batch(&mut self, val_check_batch: Option<u64>, has_validation: bool) {
        self.inner.set_val_check_batch(val_check_batch, has_validation);
    }

    #[getter]
    fn accumulate_grad_batches(&self) -> u64 {
        self.inner.config().accumulate_grad_batches
    }

    #[setter]
    fn set_accumulate_grad_batches(&mut self, py: Python<'_>, value: u64) -> PyResult<()> {
        self.inner.set_accumulate_grad_batches(value).map_err(|e| e.into_py_err(py))
    }

    fn fit_done(&self) -> bool {
        self.inner.fit_done()
    }

    fn max_steps_reached(&self) -> bool {
        self.inner.max_steps_reached()
    }

    fn begin_epoch(&mut self, py: Python<'_>, epoch_len: Option<u64>) -> PyResult<()> {
        self.inner.begin_epoch(epoch_len).map_err(|e| e.into_py_err(py))
    }

    fn end_epoch(&mut self, py: Python<'_>) -> PyResult<()> {
        self.inner.end_epoch().map_err(|e| e.into_py_err(py))
    }

    fn complete_epoch(&mut self, py: Python<'_>) -> PyResult<()> {
        self.inner.complete_epoch().map_err(|e| e.into_py_err(py))
    }

    fn count_optimizer_step(&mut self) {
        self.inner.count_optimizer_step();
    }

    fn estimated_stepping_batches(&self, batches_per_epoch: Option<u64>) -> Option<u64> {
        self.inner.estimated_stepping_batches(batches_per_epoch)
    }
}

/// Drive one training epoch (`ferrotrain_core::epoch::run_epoch`) over Python callables.
///
/// - `fetcher.fetch()` returns `(batch, is_last)` or `None` when the loader is exhausted (looked
///   up per batch: the fetcher may switch strategies mid-epoch);
/// - `train_batch(batch, batch_idx, flags)` runs the batch and returns False when
///   `on_train_batch_start` returned -1 (only an explicit False ends the epoch);
/// - `after_batch(log, log_step, validate, stepped)`;
/// - `timer` (profiling on): each step (fetch to `after_batch`) and its wait for data are stamped
///   on it.
///
/// Returns the number of batches run. Python exceptions raised in the callbacks propagate
/// unchanged.
#[pyfunction]
#[pyo3(signature = (schedule, fetcher, train_batch, after_batch, after_every_batch, timer=None))]
pub fn run_train_epoch(
    py: Python<'_>,
    schedule: &Bound<'_, PySchedule>,
    fetcher: &Bound<'_, PyAny>,
    train_batch: &Bound<'_, PyAny>,
    after_batch: &Bound<'_, PyAny>,
    after_every_batch: bool,
    timer: Option<&Bound<'_, PyPhaseTimer>>,
) -> PyResult<u64> {
    let cell = Cell(schedule);
    let no = pyo3::types::PyBool::new(py, false);
    let hooks = EpochHooks {
        fetch: || -> PyResult<Option<(Bound<'_, PyAny>, bool)>> {
            let item = fetcher.call_method0(pyo3::intern!(py, "fetch"))?;
            if item.is_none() {
                return Ok(None);
            }
            let pair = item.cast_into::<PyTuple>()?;
            Ok(Some((pair.get_item(0)?, pair.get_item(1)?.extract()?)))
        },
        train_batch: |batch: Bound<'_, PyAny>, plan: &BatchPlan| -> PyResult<bool> {
            let proceed = train_batch.call1((batch, plan.batch_idx, pack(plan)))?;
            Ok(!proceed.is(&*no))
        },
        after_batch: |a: AfterBatch| -> PyResult<()> {
            after_batch.call1((a.log, a.log_step, a.validate, a.stepped))?;
            Ok(())
        },
        after_every_batch,
    };
    let out = match timer {
        None => run_epoch(&cell, hooks, &NoStamps),
        Some(t) => run_epoch(&cell, hooks, &TimerStamps::new(t)?),
    };
    out.map_err(|e| match e {
        EpochError::Schedule(e) => e.into_py_err(py),
        EpochError::Hook(e) => e,
    })
}

/// The Python-owned schedule, borrowed for each of the driver's questions (the callbacks borrow
/// it in between: `trainer.global_step`, `count_optimizer_step`).
struct Cell<'a, 'py>(&'a Bound<'py, PySchedule>);

impl ScheduleCell for Cell<'_, '_> {
    fn with<R>(&self, f: impl FnOnce(&mut Schedule) -> R) -> R {
        f(&mut self.0.borrow_mut().inner)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySchedule>()?;
    m.add_function(wrap_pyfunction!(run_train_epoch, m)?)?;
    m.add("FLAG_ZERO_GRAD", ZERO_GRAD)?;
    m.add("FLAG_STEP", STEP)?;
    m.add("FLAG_LAST", LAST)?;
    Ok(())
}
