//! The epoch driver: one training epoch, batch by batch. It fetches each batch, asks the
//! schedule what to do with it, and hands the work that needs torch to three closures (fetch the
//! batch, run it, log and validate after it). The closures return `Result`, so the caller's
//! errors (a Python exception, a test's "stop here") end the epoch and come back unchanged.
//!
//! The schedule is reached through [`ScheduleCell`], borrowed only for each question: the
//! closures change it themselves while a batch runs (an optimizer step is counted, a callback
//! sets `should_stop`). The bindings run this driver over Python callables; the property tests
//! (`schedule/proptests.rs`) run it over the reference scenarios, so both drive the same code.

use std::cell::RefCell;
use std::fmt;

use crate::schedule::{BatchPlan, Schedule, ScheduleError};

/// A schedule the driver borrows one question at a time.
pub trait ScheduleCell {
    fn with<R>(&self, f: impl FnOnce(&mut Schedule) -> R) -> R;
}

impl ScheduleCell for RefCell<Schedule> {
    fn with<R>(&self, f: impl FnOnce(&mut Schedule) -> R) -> R {
        f(&mut self.borrow_mut())
    }
}

/// What the driver stamps on a profiler. Chosen once per epoch, so the loop is compiled once per
/// implementation and the unprofiled one ([`NoStamps`]) has no timer code at all.
pub trait Stamps {
    fn begin_step(&self);
    fn enter_data_wait(&self);
    fn exit(&self);
    fn end_step(&self);
    fn cancel_step(&self);
}

/// Profiling off: every stamp is empty and inlined away.
pub struct NoStamps;

impl Stamps for NoStamps {
    #[inline(always)]
    fn begin_step(&self) {}
    #[inline(always)]
    fn enter_data_wait(&self) {}
    #[inline(always)]
    fn exit(&self) {}
    #[inline(always)]
    fn end_step(&self) {}
    #[inline(always)]
    fn cancel_step(&self) {}
}

/// What follows a batch, when there is logging or validation to do (or the caller asked for
/// every batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfterBatch {
    /// Send step-level metrics to the loggers, at `log_step`.
    pub log: bool,
    pub log_step: u64,
    /// Run the validation loop now.
    pub validate: bool,
    /// The batch counts as a stepping batch (automatic step taken, or manual optimization).
    pub stepped: bool,
}

/// Why an epoch ended early: the schedule was called out of order, or a closure failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EpochError<E> {
    Schedule(ScheduleError),
    Hook(E),
}

impl<E: fmt::Display> fmt::Display for EpochError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Schedule(e) => e.fmt(f),
            Self::Hook(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for EpochError<E> {}

/// The work of one epoch that the driver does not own.
pub struct EpochHooks<F, T, A> {
    /// The next `(batch, is_last)`, or `None` when the loader is exhausted.
    pub fetch: F,
    /// Run the batch (transfer, `on_train_batch_start`, the step, `on_train_batch_end`);
    /// `Ok(false)` when `on_train_batch_start` returned -1, which ends the epoch as in Lightning.
    pub train_batch: T,
    /// Log and validate after a batch; called only when there is something to do, or after
    /// every batch with `after_every_batch` (plateau schedulers stepping per batch).
    pub after_batch: A,
    pub after_every_batch: bool,
}

/// Run batches until the schedule says the epoch is done, the loader is exhausted, or a batch is
/// aborted. Returns the number of batches started. On an error the step being stamped is
/// cancelled, so a profiler never counts a half step.
pub fn run_epoch<B, E, F, T, A>(
    schedule: &impl ScheduleCell,
    hooks: EpochHooks<F, T, A>,
    stamps: &impl Stamps,
) -> Result<u64, EpochError<E>>
where
    F: FnMut() -> Result<Option<(B, bool)>, E>,
    T: FnMut(B, &BatchPlan) -> Result<bool, E>,
    A: FnMut(AfterBatch) -> Result<(), E>,
{
    let mut ran = 0u64;
    let out = drive(schedule, hooks, stamps, &mut ran);
    if out.is_err() {
        stamps.cancel_step();
    }
    out.map(|()| ran)
}

fn drive<B, E, F, T, A>(
    schedule: &impl ScheduleCell,
    mut hooks: EpochHooks<F, T, A>,
    stamps: &impl Stamps,
    ran: &mut u64,
) -> Result<(), EpochError<E>>
where
    F: FnMut() -> Result<Option<(B, bool)>, E>,
    T: FnMut(B, &BatchPlan) -> Result<bool, E>,
    A: FnMut(AfterBatch) -> Result<(), E>,
{
    // Manual optimization never accumulates: every batch counts as a stepping batch.
    let automatic = schedule.with(|s| s.config().automatic_optimization);
    while !schedule.with(|s| s.epoch_done()) {
        stamps.begin_step();
        stamps.enter_data_wait();
        let item = (hooks.fetch)().map_err(EpochError::Hook)?;
        stamps.exit();
        let Some((batch, is_last)) = item else {
            stamps.cancel_step();
            break;
        };
        let plan = schedule.with(|s| s.begin_batch(is_last)).map_err(EpochError::Schedule)?;
        *ran += 1;
        if !(hooks.train_batch)(batch, &plan).map_err(EpochError::Hook)? {
            schedule.with(Schedule::abort_batch).map_err(EpochError::Schedule)?;
            stamps.end_step();
            break;
        }
        let out = schedule.with(Schedule::end_batch).map_err(EpochError::Schedule)?;
        if out.log || out.validate || hooks.after_every_batch {
            let stepped = plan.step_optimizer || !automatic;
            let after = AfterBatch { log: out.log, log_step: out.log_step, validate: out.validate, stepped };
            (hooks.after_batch)(after).map_err(EpochError::Hook)?;
        }
        stamps.end_step();
        if out.epoch_done {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "epoch/tests.rs"]
mod tests;
