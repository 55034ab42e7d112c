//! Test-only reference model of Lightning 2.x's training loops, written as a literal
//! transcription of `lightning/pytorch/loops/fit_loop.py` (`_FitLoop`),
//! `loops/training_epoch_loop.py` (`_TrainingEpochLoop`), the automatic / manual optimization
//! loops, the data fetcher (`loops/fetchers.py`) and the logger connector
//! (`trainer/connectors/logger_connector/logger_connector.py`).
//!
//! It shares no code with the schedule: it keeps Lightning's own counters (`epoch_progress`,
//! `batch_progress`, `_batches_that_stepped`, the optimizer step count) and Lightning's own
//! representation of "no limit" (`-1`, `float("inf")`), and it records what a Trainer would do
//! batch by batch. The only input it shares with the schedule is the plain `ScheduleConfig` data.
//!
//! Scope: single device (`strategy.handles_gradient_accumulation` is False), no time-based
//! validation, no `dataloader_iter` training step, `limit_train_batches = 1.0`, no restarts
//! (resume is tested schedule-against-schedule), `fast_dev_run` off.

use std::collections::BTreeSet;

use crate::schedule::ScheduleConfig;

/// A configuration plus everything the user's code does during a fit.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub cfg: ScheduleConfig,
    /// Batches the train loader yields per epoch.
    pub epoch_len: u64,
    /// The loader has a `len()`; otherwise it is an iterable whose end the fetcher finds by
    /// prefetching one batch.
    pub len_known: bool,
    /// `trainer.should_stop = True` before the fit loop runs (e.g. in `on_fit_start`).
    pub stop_at_start: bool,
    /// Batches (by `total_batch_idx`) whose `on_train_batch_end` sets `trainer.should_stop`.
    pub stop_on_batch_end: BTreeSet<u64>,
    /// Batches (by `total_batch_idx`) after which validation's `on_validation_end` sets
    /// `trainer.should_stop` (as `EarlyStopping` does), if validation runs there.
    pub stop_on_val_end: BTreeSet<u64>,
    /// Epochs (by `trainer.current_epoch`) whose `on_train_epoch_end` sets `trainer.should_stop`.
    pub stop_on_epoch_end: BTreeSet<u64>,
    /// Batches (by `total_batch_idx`) whose `on_train_batch_start` returns -1.
    pub abort_at: BTreeSet<u64>,
    /// Manual optimization: how many times `training_step` calls `optimizer.step()`, by
    /// `total_batch_idx` (cycled).
    pub manual_steps: Vec<u8>,
    /// The test harness stops before starting an epoch once `current_epoch` reaches this, so
    /// that fits with no limit (`max_epochs=-1`, an empty iterable) end.
    pub epoch_cap: u64,
}

impl Scenario {
    pub fn manual_steps_at(&self, total_batch_idx: u64) -> u8 {
        let n = self.manual_steps.len() as u64;
        if n == 0 {
            return 1;
        }
        self.manual_steps[(total_batch_idx % n) as usize]
    }
}

/// What a Trainer does during a fit, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Batch(BatchRecord),
    /// `on_train_epoch_end` ran, with this `trainer.current_epoch`.
    EpochEnd {
        epoch: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// `trainer.current_epoch` while the batch runs.
    pub epoch: u64,
    pub batch_idx: u64,
    /// `on_train_batch_start` returned -1: nothing else happened for this batch.
    pub aborted: bool,
    /// The loop zeroed the gradients before backward.
    pub zero_grad: bool,
    /// The loop stepped the optimizer (automatic optimization).
    pub step: bool,
    /// Step metrics were sent to the loggers, at this step value.
    pub log: Option<u64>,
    pub validate: bool,
}

/// The whole fit: events, then `trainer.global_step` and `trainer.current_epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub events: Vec<Event>,
    pub global_step: u64,
    pub current_epoch: u64,
}

/// Lightning raised during `setup_data` instead of training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupError(pub &'static str);

/// `lightning.pytorch.loops.utilities._is_max_limit_reached`.
fn is_max_limit_reached(current: u64, maximum: i64) -> bool {
    maximum != -1 && current as i64 >= maximum
}

fn to_limit(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| v as i64)
}

/// `loops/progress.py` `_ReadyCompletedTracker` & co., the fields we need.
#[derive(Clone, Copy, Debug, Default)]
struct Tracker {
    ready: u64,
    started: u64,
    processed: u64,
    completed: u64,
}

/// `_DataFetcher` with `_PrefetchDataFetcher`'s `done` semantics (`loops/fetchers.py`).
#[derive(Clone, Copy, Debug, Default)]
struct DataFetcher {
    fetched: u64,
    done: bool,
}

struct StopIteration;

struct Trainer<'a> {
    sc: &'a Scenario,
    // Trainer arguments, resolved the way `Trainer.__init__` / `_parse_loop_limits` do.
    max_epochs: i64,
    min_epochs: u64,
    max_steps: i64,
    min_steps: u64,
    accumulate_grad_batches: u64,
    log_every_n_steps: u64,
    check_val_every_n_epoch: Option<u64>,
    automatic_optimization: bool,
    enable_validation: bool,
    should_stop: bool,
    // Set by `_FitLoop.setup_data`.
    max_batches: f64,
    val_check_batch: f64,
    // `_FitLoop.epoch_progress.current`.
    epoch_progress: Tracker,
    // `_TrainingEpochLoop.batch_progress`: `current.ready`, `total.ready`, `is_last_batch`.
    batch_current_ready: u64,
    batch_total_ready: u64,
    is_last_batch: bool,
    // `optim_progress.optimizer_steps` (automatic) / `optim_step_progress.total.completed`
    // (manual): `trainer.global_step`.
    optimizer_steps: u64,
    batches_that_stepped: u64,
    data_fetcher: DataFetcher,
    // What the Trainer did, and the batch being recorded.
    events: Vec<Event>,
    batch: Option<BatchRecord>,
}

/// Run `trainer.fit` for the scenario.
pub fn run(sc: &Scenario) -> Result<Trace, SetupError> {
    let cfg = &sc.cfg;
    let mut t = Trainer {
        sc,
        max_epochs: to_limit(cfg.max_epochs),
        min_epochs: cfg.min_epochs,
        max_steps: to_limit(cfg.max_steps),
        min_steps: cfg.min_steps,
        accumulate_grad_batches: cfg.accumulate_grad_batches,
        log_every_n_steps: cfg.log_every_n_steps,
        check_val_every_n_epoch: cfg.check_val_every_n_epoch,
        automatic_optimization: cfg.automatic_optimization,
        enable_validation: cfg.has_validation,
        should_stop: sc.stop_at_start,
        max_batches: f64::INFINITY,
        val_check_batch: f64::INFINITY,
        epoch_progress: Tracker::default(),
        batch_current_ready: 0,
        batch_total_ready: 0,
        is_last_batch: false,
        optimizer_steps: 0,
        batches_that_stepped: 0,
        data_fetcher: DataFetcher::default(),
        events: Vec::new(),
        batch: None,
    };
    t.fit_loop_run()?;
    let (global_step, current_epoch) = (t.global_step(), t.epoch_progress.completed);
    Ok(Trace { events: t.events, global_step, current_epoch })
}

impl Trainer<'_> {
    /// `_TrainingEpochLoop.global_step`.
    fn global_step(&self) -> u64 {
        self.optimizer_steps
    }

    // ---------------------------------------------------------------- _FitLoop

    /// `_FitLoop.run`.
    fn fit_loop_run(&mut self) -> Result<(), SetupError> {
        self.setup_data()?;
        if self.fit_loop_skip() {
            return Ok(());
        }
        // `reset` (not restarting: nothing) and `on_run_start`: `current.completed =
        // current.processed` (equal on a fresh run), then `on_train_start` hooks.
        self.epoch_progress.completed = self.epoch_progress.processed;
        // `while not self.done` (plus the harness's epoch cap).
        while !self.fit_loop_done() && self.epoch_progress.completed < self.sc.epoch_cap {
            self.fit_loop_on_advance_start();
            self.fit_loop_advance();
            self.fit_loop_on_advance_end();
        }
        Ok(())
    }

    /// `_FitLoop.setup_data`: `max_batches` and `val_check_batch`.
    fn setup_data(&mut self) -> Result<(), SetupError> {
        // `length = len(dl) if has_len_all_ranks(...) else float("inf")`, limit 1.0.
        self.max_batches = if self.sc.len_known { self.sc.epoch_len as f64 } else { f64::INFINITY };
        if self.max_batches == 0.0 {
            return Ok(());
        }
        // The configuration carries the resolved `val_check_batch`: an int `val_check_interval`,
        // or `int(max_batches * val_check_interval)`, or `inf` for an iterable with 1.0.
        match self.sc.cfg.val_check_batch {
            Some(v) => {
                self.val_check_batch = v as f64;
                // The int `val_check_interval` check (limit_val_batches > 0 assumed).
                if self.val_check_batch > self.max_batches && self.check_val_every_n_epoch.is_some()
                {
                    return Err(SetupError("`val_check_interval` must be <= the training batches"));
                }
            }
            None => self.val_check_batch = f64::INFINITY,
        }
        Ok(())
    }

    /// `_FitLoop.skip`.
    fn fit_loop_skip(&self) -> bool {
        // `self.done or self.trainer.limit_train_batches == 0` (the limit is 1.0 here).
        self.fit_loop_done()
    }

    /// `_FitLoop._can_stop_early`.
    fn can_stop_early(&self) -> bool {
        // `min_epochs` / `min_steps` of 0 (or None) are falsy: met.
        let met_min_epochs = if self.min_epochs != 0 {
            self.epoch_progress.processed >= self.min_epochs
        } else {
            true
        };
        let met_min_steps =
            if self.min_steps != 0 { self.global_step() >= self.min_steps } else { true };
        met_min_epochs && met_min_steps
    }

    /// `_FitLoop.done`.
    fn fit_loop_done(&self) -> bool {
        if self.max_batches == 0.0 {
            return true;
        }
        if is_max_limit_reached(self.global_step(), self.max_steps) {
            return true;
        }
        // (It also sets `current.completed = current.processed`, equal outside restarts.)
        if is_max_limit_reached(self.epoch_progress.processed, self.max_epochs) {
            return true;
        }
        self.should_stop && self.can_stop_early()
    }

    /// `_FitLoop.on_advance_start`.
    fn fit_loop_on_advance_start(&mut self) {
        self.epoch_progress.ready += 1;
        // `on_train_epoch_start` hooks.
        self.epoch_progress.started += 1;
    }

    /// `_FitLoop.advance`: one epoch.
    fn fit_loop_advance(&mut self) {
        self.epoch_loop_run();
    }

    /// `_FitLoop.on_advance_end`.
    fn fit_loop_on_advance_end(&mut self) {
        self.epoch_progress.processed += 1;
        // `on_train_epoch_end` hooks (callbacks, module, monitoring callbacks).
        let epoch = self.epoch_progress.completed;
        self.events.push(Event::EpochEnd { epoch });
        if self.sc.stop_on_epoch_end.contains(&epoch) {
            self.should_stop = true;
        }
        self.epoch_progress.completed += 1;
    }

    // ------------------------------------------------------ _TrainingEpochLoop

    /// `_TrainingEpochLoop.run`.
    fn epoch_loop_run(&mut self) {
        self.epoch_loop_reset();
        // `on_run_start`: `iter(data_fetcher)` for every epoch after the first.
        self.data_fetcher_iter();
        while !self.epoch_loop_done() {
            if self.epoch_loop_advance().is_err() {
                break;
            }
            self.epoch_loop_on_advance_end();
        }
    }

    /// `_TrainingEpochLoop.reset` (not restarting): `batch_progress.reset_on_run()`.
    fn epoch_loop_reset(&mut self) {
        self.batch_current_ready = 0;
        self.is_last_batch = false;
    }

    /// `_DataFetcher.__iter__` / `reset` (and `_PrefetchDataFetcher`'s prefetch).
    fn data_fetcher_iter(&mut self) {
        self.data_fetcher = DataFetcher::default();
        if self.sc.len_known {
            self.data_fetcher.done = self.sc.epoch_len == 0;
        }
    }

    /// `_PrefetchDataFetcher.__next__`: `done` turns True with the last batch, for a sized
    /// loader from its length, for an iterable because refilling the prefetch buffer fails.
    fn data_fetcher_next(&mut self) -> Result<(), StopIteration> {
        if self.data_fetcher.fetched >= self.sc.epoch_len {
            self.data_fetcher.done = true;
            return Err(StopIteration);
        }
        self.data_fetcher.fetched += 1;
        self.data_fetcher.done = self.data_fetcher.fetched >= self.sc.epoch_len;
        Ok(())
    }

    /// `_TrainingEpochLoop.batch_idx`.
    fn batch_idx(&self) -> i64 {
        self.batch_current_ready as i64 - 1
    }

    /// `_TrainingEpochLoop.total_batch_idx`.
    fn total_batch_idx(&self) -> i64 {
        self.batch_total_ready as i64 - 1
    }

    /// `_TrainingEpochLoop._is_training_done`.
    fn is_training_done(&self) -> bool {
        is_max_limit_reached(self.global_step(), self.max_steps) || self.num_ready_batches_reached()
    }

    /// `_TrainingEpochLoop.done`.
    fn epoch_loop_done(&self) -> bool {
        // `_is_validation_done` is True when not restarting.
        if self.is_training_done() {
            return true;
        }
        if self.should_stop {
            return self.can_stop_early();
        }
        false
    }

    /// `_TrainingEpochLoop._num_ready_batches_reached`.
    fn num_ready_batches_reached(&self) -> bool {
        let epoch_finished_on_ready = self.batch_current_ready as f64 == self.max_batches;
        epoch_finished_on_ready || self.is_last_batch
    }

    /// `_TrainingEpochLoop._accumulated_batches_reached`.
    fn accumulated_batches_reached(&self) -> bool {
        self.batch_current_ready % self.accumulate_grad_batches == 0
    }

    /// `_TrainingEpochLoop._should_accumulate`.
    fn should_accumulate(&self) -> bool {
        let accumulation_done = self.accumulated_batches_reached();
        let is_final_batch = self.num_ready_batches_reached();
        // `strategy.handles_gradient_accumulation` is False on a single device.
        let strategy_accumulates_on_final_batch = !is_final_batch;
        !accumulation_done && strategy_accumulates_on_final_batch
    }

    /// `_TrainingEpochLoop.advance`.
    fn epoch_loop_advance(&mut self) -> Result<(), StopIteration> {
        // `batch, _, __ = next(data_fetcher)`; `batch_idx = self.batch_idx + 1`.
        self.data_fetcher_next()?;
        let batch_idx = (self.batch_idx() + 1) as u64;
        self.is_last_batch = self.data_fetcher.done;
        // `batch_progress.increment_ready()` (current and total).
        self.batch_current_ready += 1;
        self.batch_total_ready += 1;
        let total = self.total_batch_idx() as u64;
        let mut rec = BatchRecord {
            epoch: self.epoch_progress.completed,
            batch_idx,
            aborted: false,
            zero_grad: false,
            step: false,
            log: None,
            validate: false,
        };
        // `on_train_batch_start` hooks; `should_skip_rest_of_epoch = response == -1`.
        let should_skip_rest_of_epoch = self.sc.abort_at.contains(&total);
        if should_skip_rest_of_epoch {
            // `batch_progress.increment_by(0, is_last_batch=True)`.
            self.is_last_batch = true;
        } else if self.automatic_optimization {
            // `_AutomaticOptimization.run`: the closure zeroes first in a window
            // (`_make_zero_grad_fn`), the optimizer steps unless `_should_accumulate()`.
            rec.zero_grad = batch_idx % self.accumulate_grad_batches == 0;
            if !self.should_accumulate() {
                rec.step = true;
                self.optimizer_steps += 1;
            }
        } else {
            // `_ManualOptimization.run`: `training_step` calls `optimizer.step()` itself.
            self.optimizer_steps += u64::from(self.sc.manual_steps_at(total));
        }
        if should_skip_rest_of_epoch {
            rec.aborted = true;
            self.events.push(Event::Batch(rec));
            return Err(StopIteration);
        }
        // `on_train_batch_end` hooks.
        if self.sc.stop_on_batch_end.contains(&total) {
            self.should_stop = true;
        }
        // `_logger_connector.update_train_step_metrics()`.
        if !(self.should_accumulate() && self.automatic_optimization) && self.should_update_logs() {
            // `log_metrics(metrics)` with `step=None`: `_batches_that_stepped`.
            rec.log = Some(self.batches_that_stepped);
        }
        self.batch = Some(rec);
        Ok(())
    }

    /// `_TrainingEpochLoop.on_advance_end`.
    fn epoch_loop_on_advance_end(&mut self) {
        let should_check_val = self.should_check_val_fx();
        let Some(mut rec) = self.batch.take() else { return };
        if should_check_val {
            rec.validate = true;
            // `val_loop.run()`; its `on_validation_end` hooks may set `should_stop`.
            if self.sc.stop_on_val_end.contains(&(self.total_batch_idx() as u64)) {
                self.should_stop = true;
            }
        }
        if !self.should_accumulate() {
            self.batches_that_stepped += 1;
        }
        self.events.push(Event::Batch(rec));
    }

    /// `_LoggerConnector.should_update_logs`, with the fit loop active.
    fn should_update_logs(&self) -> bool {
        if self.log_every_n_steps == 0 {
            return false;
        }
        let step = self.batches_that_stepped + 1;
        let should_log = step % self.log_every_n_steps == 0;
        should_log || self.should_stop
    }

    /// `_TrainingEpochLoop._should_check_val_epoch`.
    fn should_check_val_epoch(&self) -> bool {
        self.enable_validation
            && match self.check_val_every_n_epoch {
                None => true,
                Some(n) => (self.epoch_progress.completed + 1) % n == 0,
            }
    }

    /// `_TrainingEpochLoop._should_check_val_fx` (no time interval, not `dataloader_iter`,
    /// `limit_train_batches` a float).
    fn should_check_val_fx(&self) -> bool {
        if !self.should_check_val_epoch() {
            return false;
        }
        let is_infinite_dataset = self.val_check_batch == f64::INFINITY;
        let is_last_batch = self.is_last_batch;
        if is_last_batch && is_infinite_dataset {
            return true;
        }
        if self.should_stop && self.can_stop_early() {
            return true;
        }
        let mut is_val_check_batch = is_last_batch;
        if self.val_check_batch != f64::INFINITY {
            let current_iteration = if self.check_val_every_n_epoch.is_none() {
                self.total_batch_idx()
            } else {
                self.batch_idx()
            };
            is_val_check_batch = (current_iteration + 1) as f64 % self.val_check_batch == 0.0;
        }
        is_val_check_batch
    }
}
