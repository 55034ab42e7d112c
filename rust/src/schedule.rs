//! The loop schedule: for each training batch, decide whether the optimizer steps, whether the
//! gradients are zeroed, whether metrics go to the loggers, whether validation runs, and when an
//! epoch and the whole fit end. It follows Lightning 2.x's rules (`training_epoch_loop.py`,
//! `fit_loop.py`) and holds the loop progress counters, so a checkpoint can store and restore
//! them exactly.
//!
//! It owns no I/O and calls nothing: the batch runner asks it, batch by batch, what to do.

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
    /// 0: never send step-level metrics to the loggers.
    pub log_every_n_steps: u64,
    /// `None`: validation is counted in batches across epochs (`check_val_every_n_epoch=None`).
    pub check_val_every_n_epoch: Option<u64>,
    /// Validate every this many batches; `None` only at the last batch of an epoch
    /// (Lightning's `val_check_batch = inf`).
    pub val_check_batch: Option<u64>,
    /// False when there is no validation data or no `validation_step`.
    pub has_validation: bool,
    /// False for manual optimization: every batch counts as a stepping batch for logging, and
    /// the optimizer steps are counted by `count_optimizer_step`.
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
    /// Zero the gradients before backward (first batch of an accumulation window).
    pub zero_grad: bool,
    /// Step the optimizer after backward (end of a window, or the epoch's last batch).
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
    progress: Progress,
    /// Batches in the current epoch when the loader has a length.
    epoch_len: Option<u64>,
    should_stop: bool,
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
            epoch_len: None,
            should_stop: false,
            phase: Phase::Idle,
        })
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.cfg
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Restore counters from a checkpoint. The next `begin_epoch` resumes at
    /// `progress.batches_in_epoch` inside `progress.epoch`.
    pub fn restore(&mut self, progress: Progress) {
        self.progress = progress;
        self.phase = Phase::Idle;
    }

    pub fn should_stop(&self) -> bool {
        self.should_stop
    }

    pub fn set_should_stop(&mut self, value: bool) {
        self.should_stop = value;
    }

    /// Change when validation runs, once the train loader's length is known.
    pub fn set_val_check_batch(&mut self, val_check_batch: Option<u64>, has_validation: bool) {
        self.cfg.val_check_batch = val_check_batch;
        self.cfg.has_validation = has_validation;
    }

    pub fn max_steps_reached(&self) -> bool {
        matches!(self.cfg.max_steps, Some(m) if self.progress.global_step >= m)
    }

    /// Lightning's `_can_stop_early`: `should_stop` only ends the fit once the minimums are met.
    pub fn can_stop_early(&self) -> bool {
        self.progress.epochs_processed >= self.cfg.min_epochs
            && self.progress.global_step >= self.cfg.min_steps
    }

    /// Checked before each epoch (Lightning's `FitLoop.done`).
    pub fn fit_done(&self) -> bool {
        if self.max_steps_reached() {
            return true;
        }
        if matches!(self.cfg.max_epochs, Some(m) if self.progress.epochs_processed >= m) {
            return true;
        }
        self.should_stop && self.can_stop_early()
    }

    /// Start an epoch whose loader yields `epoch_len` batches (`None`: unknown length).
    pub fn begin_epoch(&mut self, epoch_len: Option<u64>) -> Result<(), ScheduleError> {
        if !matches!(self.phase, Phase::Idle) {
            return Err(ScheduleError::OutOfOrder("begin_epoch while an epoch is running"));
        }
        self.epoch_len = epoch_len;
        self.phase = Phase::InEpoch;
        Ok(())
    }

    /// Checked before each batch (Lightning's `_TrainingEpochLoop.done`).
    pub fn epoch_done(&self) -> bool {
        if self.max_steps_reached() {
            return true;
        }
        if matches!(self.epoch_len, Some(n) if self.progress.batches_in_epoch >= n) {
            return true;
        }
        self.should_stop && self.can_stop_early()
    }

    /// A batch starts. `is_last` comes from the data side (length or look-ahead); the loader's
    /// length, when known, also marks the last batch.
    pub fn begin_batch(&mut self, is_last: bool) -> Result<BatchPlan, ScheduleError> {
        if !matches!(self.phase, Phase::InEpoch) {
            return Err(ScheduleError::OutOfOrder("begin_batch outside an epoch"));
        }
        let batch_idx = self.progress.batches_in_epoch;
        let is_last = is_last || matches!(self.epoch_len, Some(n) if batch_idx + 1 >= n);
        let acc = self.cfg.accumulate_grad_batches;
        let plan = BatchPlan {
            batch_idx,
            zero_grad: batch_idx % acc == 0,
            step_optimizer: !self.cfg.automatic_optimization || (batch_idx + 1) % acc == 0 || is_last,
            is_last,
        };
        self.progress.batches_in_epoch += 1;
        self.progress.total_batches += 1;
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
        self.epoch_len = Some(self.progress.batches_in_epoch);
        Ok(())
    }

    /// Manual optimization: one `optimizer.step()` happened.
    pub fn count_optimizer_step(&mut self) {
        self.progress.global_step += 1;
    }

    /// The batch's step and `on_train_batch_end` are done; say what follows.
    pub fn end_batch(&mut self) -> Result<BatchOutcome, ScheduleError> {
        let Phase::InBatch(plan) = self.phase else {
            return Err(ScheduleError::OutOfOrder("end_batch without begin_batch"));
        };
        if self.cfg.automatic_optimization && plan.step_optimizer {
            self.progress.global_step += 1;
        }
        // Lightning logs at the batch that makes the n-th stepping batch (`+ 1` because the
        // counter is increased after logging), or whenever a stop was requested.
        let stepped = plan.step_optimizer;
        // `log_every_n_steps=0` turns step-level logging off entirely.
        let every = self.cfg.log_every_n_steps;
        let log = stepped
            && every > 0
            && ((self.progress.batches_that_stepped + 1) % every == 0 || self.should_stop);
        let log_step = self.progress.batches_that_stepped;
        let validate = self.should_validate(&plan);
        if stepped {
            self.progress.batches_that_stepped += 1;
        }
        self.phase = Phase::InEpoch;
        Ok(BatchOutcome { log, log_step, validate, epoch_done: plan.is_last || self.epoch_done() })
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
        self.phase = Phase::Idle;
        Ok(())
    }

    /// `trainer.estimated_stepping_batches` for a loader of `batches_per_epoch` batches.
    pub fn estimated_stepping_batches(&self, batches_per_epoch: Option<u64>) -> Option<u64> {
        let per_epoch = batches_per_epoch?;
        let acc = self.cfg.accumulate_grad_batches;
        let steps_per_epoch = per_epoch.div_ceil(acc);
        let by_epochs = self.cfg.max_epochs.map(|e| e.saturating_mul(steps_per_epoch));
        match (by_epochs, self.cfg.max_steps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
#[path = "schedule/tests.rs"]
mod tests;
