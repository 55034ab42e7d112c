//! The loop schedule: for each training batch, decide whether the optimizer steps, whether the
//! gradients are zeroed, whether metrics go to the loggers, whether validation runs, and when an
//! epoch and the whole fit end. It follows Lightning 2.x's rules (`training_epoch_loop.py`,
//! `fit_loop.py`) and holds the loop progress counters, so a checkpoint can store and restore
//! them exactly.
//!
//! It owns no I/O and calls nothing: the batch runner asks it, batch by batch, what to do.
//!
//! The caller's protocol (what the Trainer and `run_train_epoch` do):
//!
//! ```text
//! set_num_training_batches(len)            # after the train loader is set up
//! while !fit_done():                       # true at once for a loader with no batches
//!     begin_epoch(len)                     # on_train_epoch_start before, unless resuming_mid_epoch()
//!     while !epoch_done():
//!         plan = begin_batch(is_last)      # zero_grad / step flags for the batch
//!         on_train_batch_start == -1  ->  abort_batch(); break
//!         ... step, on_train_batch_end ...
//!         out = end_batch()                # log at out.log_step, validate, epoch_done
//!         if out.epoch_done: break
//!     end_epoch(); on_train_epoch_end; complete_epoch()
//! ```
//!
//! Resume: `restore(progress)` with the counters saved at a checkpoint taken after a batch that
//! ran (`on_train_batch_end`, `on_validation_end`), in `on_train_epoch_end`, or between epochs.
//! Inside an epoch, the next `begin_epoch` takes the epoch's full length and continues counting
//! at `batches_in_epoch` (the loader must yield only the batches that remain); `fit_done` stays
//! false until that epoch is finished. A checkpoint taken in `on_train_epoch_end` resumes at the
//! next epoch.

use std::fmt;

/// What the user configured, already validated and resolved (no Python types here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// `None`: no epoch limit (`max_epochs=-1`).
    pub max_epochs: Option<u64>,
    /// `None`: no step limit (`max_steps=-1`).
    pub max_steps: Option<u64>,
    pub min_epochs: u64,
    pub min_steps: u64,
    pub accumulate_grad_batches: u64,
    /// 0: never send step metrics to the loggers (as in Lightning).
    pub log_every_n_steps: u64,
    /// `None`: validation is counted in batches across epochs (`check_val_every_n_epoch=None`).
    pub check_val_every_n_epoch: Option<u64>,
    /// Validate every this many batches; `None` only at the last batch of an epoch
    /// (Lightning's `val_check_batch = inf`).
    pub val_check_batch: Option<u64>,
    /// False when there is no validation data or no `validation_step`.
    pub has_validation: bool,
    /// False for manual optimization: the plan never zeroes or steps, every batch counts as a
    /// stepping batch for logging, and the user's optimizer steps are counted by
    /// `count_optimizer_step`.
    pub automatic_optimization: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            max_epochs: Some(1000),
            max_steps: None,
            min_epochs: 0,
            min_steps: 0,
            accumulate_grad_batches: 1,
            log_every_n_steps: 50,
            check_val_every_n_epoch: Some(1),
            val_check_batch: None,
            has_validation: false,
            automatic_optimization: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    /// A setting is out of range: (parameter, value, what is allowed).
    InvalidSetting(&'static str, String, &'static str),
    /// A call made out of order (a bug in the caller, reported instead of panicking).
    OutOfOrder(&'static str),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSetting(name, value, allowed) => {
                write!(f, "`{name}` must be {allowed}, got {value}")
            }
            Self::OutOfOrder(what) => write!(f, "loop schedule called out of order: {what}"),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// Loop progress: the counters that make up `trainer.current_epoch`, `global_step`, and the
/// position inside an epoch. Plain data, so it round-trips through a checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Epochs completed (`trainer.current_epoch`).
    pub epoch: u64,
    /// Epochs whose batches are all processed (increased before `on_train_epoch_end`).
    pub epochs_processed: u64,
    /// Batches started in the current epoch (the next batch's index).
    pub batches_in_epoch: u64,
    /// Batches started over the whole fit.
    pub total_batches: u64,
    /// Optimizer steps taken (`trainer.global_step`).
    pub global_step: u64,
    /// Batches that ended with an optimizer step (the step value loggers see).
    pub batches_that_stepped: u64,
}

/// What to do with the batch that is starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    pub batch_idx: u64,
    /// Zero the gradients before backward (first batch of an accumulation window). Always
    /// false with manual optimization.
    pub zero_grad: bool,
    /// Step the optimizer after backward (end of a window, or the epoch's last batch). Always
    /// false with manual optimization.
    pub step_optimizer: bool,
    pub is_last: bool,
}

/// What to do after the batch's training step and `on_train_batch_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Send step-level metrics to the loggers, at `log_step`.
    pub log: bool,
    pub log_step: u64,
    /// Run the validation loop now.
    pub validate: bool,
    /// The epoch ends after this batch.
    pub epoch_done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    InEpoch,
    InBatch(BatchPlan),
    EpochProcessed,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    cfg: ScheduleConfig,
    /// The running batch's automatic optimizer step was already reported.
    step_counted: bool,
    progress: Progress,
    /// The train loader's length (`trainer.num_training_batches`); `None`: unknown.
    num_training_batches: Option<u64>,
    /// The running (or just ended) batch is the epoch's last: from the data side, the length,
    /// or an aborted batch (Lightning's `batch_progress.is_last_batch`).
    is_last_batch: bool,
    should_stop: bool,
    /// A stop requested from outside the loop (a preemption signal): the fit ends at the first
    /// batch boundary with `global_step` at least this and no accumulation window open,
    /// whatever the minimums say. Not loop progress: never saved in a checkpoint.
    stop_at_step: Option<u64>,
    phase: Phase,
}

impl Schedule {
    pub fn new(cfg: ScheduleConfig) -> Result<Self, ScheduleError> {
        if cfg.accumulate_grad_batches == 0 {
            return Err(ScheduleError::InvalidSetting(
                "accumulate_grad_batches",
                "0".into(),
                "an int >= 1",
            ));
        }
        if !cfg.automatic_optimization && cfg.accumulate_grad_batches != 1 {
            return Err(ScheduleError::InvalidSetting(
                "accumulate_grad_batches",
                cfg.accumulate_grad_batches.to_string(),
                "1 with manual optimization (automatic gradient accumulation is not supported)",
            ));
        }
        if cfg.check_val_every_n_epoch == Some(0) {
            return Err(ScheduleError::InvalidSetting(
                "check_val_every_n_epoch",
                "0".into(),
                "an int >= 1 or None",
            ));
        }
        if cfg.val_check_batch == Some(0) {
            return Err(ScheduleError::InvalidSetting(
                "val_check_interval",
                "0".into(),
                "a positive number of batches",
            ));
        }
        Ok(Self {
            cfg,
            progress: Progress::default(),
            num_training_batches: None,
            is_last_batch: false,
            should_stop: false,
            stop_at_step: None,
            step_counted: false,
            phase: Phase::Idle,
        })
    }

    #[inline]
    pub fn config(&self) -> &ScheduleConfig {
        &self.cfg
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Restore counters from a checkpoint. The next `begin_epoch` resumes at
    /// `progress.batches_in_epoch` inside `progress.epoch`, or, for a checkpoint saved in
    /// `on_train_epoch_end` (`epochs_processed > epoch`), at the start of the next epoch
    /// (Lightning's `_FitLoop.on_run_start`: `current.completed = current.processed`).
    pub fn restore(&mut self, progress: Progress) {
        let mut progress = progress;
        if progress.epochs_processed > progress.epoch {
            progress.epoch = progress.epochs_processed;
            progress.batches_in_epoch = 0;
        }
        self.progress = progress;
        self.is_last_batch = false;
        self.phase = Phase::Idle;
    }

    /// True after `restore` from a checkpoint taken inside an epoch, until that epoch's
    /// `begin_epoch`: the epoch continues (Lightning does not run `on_train_epoch_start` again).
    pub fn resuming_mid_epoch(&self) -> bool {
        matches!(self.phase, Phase::Idle) && self.progress.batches_in_epoch > 0
    }

    pub fn should_stop(&self) -> bool {
        self.should_stop
    }

    pub fn set_should_stop(&mut self, value: bool) {
        self.should_stop = value;
    }

    pub fn stop_at_step(&self) -> Option<u64> {
        self.stop_at_step
    }

    /// Request the stop of `stop_at_step` (None withdraws it).
    pub fn set_stop_at_step(&mut self, step: Option<u64>) {
        self.stop_at_step = step;
    }

    /// The requested stop is due: its step is reached and, between batches, no gradient
    /// accumulation window is open (stopping there would lose the accumulated gradients).
    pub fn stop_step_reached(&self) -> bool {
        let due = matches!(self.stop_at_step, Some(s) if self.progress.global_step >= s);
        let window_open = matches!(self.phase, Phase::InEpoch) && self.should_accumulate();
        due && !window_open
    }

    /// Change when validation runs, once the train loader's length is known.
    pub fn set_val_check_batch(&mut self, val_check_batch: Option<u64>, has_validation: bool) {
        self.cfg.val_check_batch = val_check_batch;
        self.cfg.has_validation = has_validation;
    }

    /// Change the gradient accumulation factor (`trainer.accumulate_grad_batches = n`, as
    /// `GradientAccumulationScheduler` does at an epoch's start). Windows are counted from the
    /// epoch's first batch, so the new factor applies from the next batch on.
    pub fn set_accumulate_grad_batches(&mut self, n: u64) -> Result<(), ScheduleError> {
        if n == 0 {
            return Err(ScheduleError::InvalidSetting(
                "accumulate_grad_batches",
                "0".into(),
                "an int >= 1",
            ));
        }
        if !self.cfg.automatic_optimization && n != 1 {
            return Err(ScheduleError::InvalidSetting(
                "accumulate_grad_batches",
                n.to_string(),
                "1 with manual optimization (automatic gradient accumulation is not supported)",
            ));
        }
        self.cfg.accumulate_grad_batches = n;
        Ok(())
    }

    #[inline]
    pub fn max_steps_reached(&self) -> bool {
        matches!(self.cfg.max_steps, Some(m) if self.progress.global_step >= m)
    }

    /// Lightning's `_can_stop_early`: `should_stop` only ends the fit once the minimums are met.
    #[inline]
    pub fn can_stop_early(&self) -> bool {
        self.progress.epochs_processed >= self.cfg.min_epochs
            && self.progress.global_step >= self.cfg.min_steps
    }

    /// The train loader's length, known once it is set up (Lightning's `_FitLoop.setup_data`
    /// sets `max_batches`); `begin_epoch` records it too. With 0 batches the fit is done.
    pub fn set_num_training_batches(&mut self, batches: Option<u64>) -> Result<(), ScheduleError> {
        if !matches!(self.phase, Phase::Idle) {
            return Err(ScheduleError::OutOfOrder(
                "set_num_training_batches while an epoch is running",
            ));
        }
        self.num_training_batches = batches;
        Ok(())
    }

    /// Checked before each epoch (Lightning's `_FitLoop.done`; before the first epoch it is
    /// `_FitLoop.skip`).
    pub fn fit_done(&self) -> bool {
        // A restored epoch is finished first, whatever the limits say (the uninterrupted fit
        // would finish it too).
        if self.resuming_mid_epoch() {
            return false;
        }
        if self.num_training_batches == Some(0) {
            return true;
        }
        if self.max_steps_reached() || self.stop_step_reached() {
            return true;
        }
        if matches!(self.cfg.max_epochs, Some(m) if self.progress.epochs_processed >= m) {
            return true;
        }
        self.should_stop && self.can_stop_early()
    }

    /// Start an epoch whose loader yields `epoch_len` batches (`None`: unknown length). When
    /// resuming inside an epoch, pass the epoch's full length: counting continues at
    /// `batches_in_epoch`.
    pub fn begin_epoch(&mut self, epoch_len: Option<u64>) -> Result<(), ScheduleError> {
        if !matches!(self.phase, Phase::Idle) {
            return Err(ScheduleError::OutOfOrder("begin_epoch while an epoch is running"));
        }
        self.num_training_batches = epoch_len;
        self.is_last_batch = false;
        self.phase = Phase::InEpoch;
        Ok(())
    }

    /// Checked before each batch (Lightning's `_TrainingEpochLoop.done`).
    #[inline]
    pub fn epoch_done(&self) -> bool {
        if self.max_steps_reached() || self.num_ready_batches_reached() || self.stop_step_reached() {
            return true;
        }
        self.should_stop && self.can_stop_early()
    }

    /// Lightning's `_num_ready_batches_reached`: the epoch's batches are all started.
    fn num_ready_batches_reached(&self) -> bool {
        matches!(self.num_training_batches, Some(n) if self.progress.batches_in_epoch >= n)
            || self.is_last_batch
    }

    /// Lightning's `_should_accumulate`, once the batch has started: the window is still open
    /// and this is not the epoch's last batch.
    fn should_accumulate(&self) -> bool {
        self.progress.batches_in_epoch % self.cfg.accumulate_grad_batches != 0
            && !self.num_ready_batches_reached()
    }

    /// Change the epoch limit of a running fit (Lightning's `fit_loop.max_epochs = n`, as
    /// StochasticWeightAveraging does for its extra BatchNorm epoch); read again at each
    /// `fit_done`.
    pub fn set_max_epochs(&mut self, max_epochs: Option<u64>) {
        self.cfg.max_epochs = max_epochs;
    }

    /// Whether the current (or just finished) training batch is the epoch's last.
    pub fn is_last_batch(&self) -> bool {
        self.is_last_batch
    }

    /// A batch starts. `is_last` comes from the data side (length or look-ahead); the loader's
    /// length, when known, also marks the last batch.
    #[inline]
    pub fn begin_batch(&mut self, is_last: bool) -> Result<BatchPlan, ScheduleError> {
        if !matches!(self.phase, Phase::InEpoch) {
            return Err(ScheduleError::OutOfOrder("begin_batch outside an epoch"));
        }
        let batch_idx = self.progress.batches_in_epoch;
        self.progress.batches_in_epoch += 1;
        self.progress.total_batches += 1;
        self.is_last_batch = is_last
            || matches!(self.num_training_batches, Some(n) if self.progress.batches_in_epoch >= n);
        // With manual optimization the user's `training_step` zeroes and steps.
        let automatic = self.cfg.automatic_optimization;
        let plan = BatchPlan {
            batch_idx,
            zero_grad: automatic && batch_idx % self.cfg.accumulate_grad_batches == 0,
            step_optimizer: automatic && !self.should_accumulate(),
            is_last: self.is_last_batch,
        };
        self.phase = Phase::InBatch(plan);
        Ok(plan)
    }

    /// The batch ends before its step (`on_train_batch_start` returned -1): it counts as
    /// started, nothing stepped, and the epoch ends.
    pub fn abort_batch(&mut self) -> Result<(), ScheduleError> {
        if !matches!(self.phase, Phase::InBatch(_)) {
            return Err(ScheduleError::OutOfOrder("abort_batch without begin_batch"));
        }
        self.phase = Phase::InEpoch;
        // Lightning: `batch_progress.increment_by(0, is_last_batch=True)`.
        self.is_last_batch = true;
        Ok(())
    }

    /// The progress to store in a checkpoint. Inside a batch (a checkpoint saved from
    /// `on_train_batch_end`) it is the progress as that batch will end, so a resumed run goes on
    /// with the next batch; anything else is the plain progress.
    pub fn checkpoint_progress(&self) -> Progress {
        let mut p = self.progress;
        if let Phase::InBatch(plan) = self.phase {
            if self.cfg.automatic_optimization && plan.step_optimizer && !self.step_counted {
                p.global_step += 1;
            }
            if !self.should_accumulate() {
                p.batches_that_stepped += 1;
            }
        }
        p
    }

    /// One `optimizer.step()` happened. Manual optimization counts every call. Automatic
    /// optimization reports its batch's step as soon as it ran, so hooks after it
    /// (`on_train_batch_end`) see the new `global_step` as in Lightning; `end_batch` counts the
    /// step itself only if nobody reported it.
    pub fn count_optimizer_step(&mut self) {
        if self.cfg.automatic_optimization {
            match self.phase {
                Phase::InBatch(plan) if plan.step_optimizer && !self.step_counted => {
                    self.step_counted = true;
                }
                _ => return,
            }
        }
        self.progress.global_step += 1;
    }

    /// The batch's step and `on_train_batch_end` are done; say what follows.
    #[inline]
    pub fn end_batch(&mut self) -> Result<BatchOutcome, ScheduleError> {
        let Phase::InBatch(plan) = self.phase else {
            return Err(ScheduleError::OutOfOrder("end_batch without begin_batch"));
        };
        if plan.step_optimizer && !std::mem::take(&mut self.step_counted) {
            self.progress.global_step += 1;
        }
        let accumulating = self.should_accumulate();
        // `update_train_step_metrics`: nothing while automatic optimization accumulates.
        let log = !(accumulating && self.cfg.automatic_optimization) && self.should_update_logs();
        let log_step = self.progress.batches_that_stepped;
        let validate = self.should_validate(&plan);
        // `on_advance_end`: counted after logging and validation.
        if !accumulating {
            self.progress.batches_that_stepped += 1;
        }
        self.phase = Phase::InEpoch;
        Ok(BatchOutcome { log, log_step, validate, epoch_done: self.epoch_done() })
    }

    /// Lightning's `should_update_logs`: at the batch that makes the n-th stepping batch (`+ 1`
    /// because the counter is increased after logging), or whenever a stop was requested.
    fn should_update_logs(&self) -> bool {
        let every = self.cfg.log_every_n_steps;
        every != 0 && ((self.progress.batches_that_stepped + 1) % every == 0 || self.should_stop)
    }

    /// Lightning's `_should_check_val_fx`.
    fn should_validate(&self, plan: &BatchPlan) -> bool {
        if !self.cfg.has_validation {
            return false;
        }
        if let Some(n) = self.cfg.check_val_every_n_epoch {
            if (self.progress.epoch + 1) % n != 0 {
                return false;
            }
        }
        let Some(every) = self.cfg.val_check_batch else {
            return plan.is_last || (self.should_stop && self.can_stop_early());
        };
        if self.should_stop && self.can_stop_early() {
            return true;
        }
        let current = if self.cfg.check_val_every_n_epoch.is_none() {
            self.progress.total_batches - 1
        } else {
            plan.batch_idx
        };
        (current + 1) % every == 0
    }

    /// All batches of the epoch ran: counted before `on_train_epoch_end`, as in Lightning.
    pub fn end_epoch(&mut self) -> Result<(), ScheduleError> {
        if !matches!(self.phase, Phase::InEpoch) {
            return Err(ScheduleError::OutOfOrder("end_epoch outside an epoch"));
        }
        self.progress.epochs_processed += 1;
        self.phase = Phase::EpochProcessed;
        Ok(())
    }

    /// After `on_train_epoch_end`: the epoch counter moves on and the in-epoch position resets.
    pub fn complete_epoch(&mut self) -> Result<(), ScheduleError> {
        if !matches!(self.phase, Phase::EpochProcessed) {
            return Err(ScheduleError::OutOfOrder("complete_epoch before end_epoch"));
        }
        self.progress.epoch = self.progress.epochs_processed;
        self.progress.batches_in_epoch = 0;
        self.is_last_batch = false;
        self.phase = Phase::Idle;
        Ok(())
    }

    /// `trainer.estimated_stepping_batches` for a loader of `batches_per_epoch` batches
    /// (`None`: infinite, Lightning's `float("inf")`).
    pub fn estimated_stepping_batches(&self, batches_per_epoch: Option<u64>) -> Option<u64> {
        // No epoch limit, or an iterable: `max_steps` (inf when unset).
        let (Some(max_epochs), Some(per_epoch)) = (self.cfg.max_epochs, batches_per_epoch) else {
            return self.cfg.max_steps;
        };
        // `max(self.max_epochs, 1)`: Lightning estimates one epoch for `max_epochs=0`.
        let estimate =
            per_epoch.div_ceil(self.cfg.accumulate_grad_batches).saturating_mul(max_epochs.max(1));
        Some(self.cfg.max_steps.map_or(estimate, |m| estimate.min(m)))
    }
}

#[cfg(test)]
#[path = "schedule/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "schedule/reference.rs"]
mod reference;

#[cfg(test)]
#[path = "schedule/proptests.rs"]
mod proptests;
