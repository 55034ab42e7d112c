"""The fit loop: epochs, and the Python side of each training batch.

The batch loop itself runs in the native core (`_core.run_train_epoch`): it fetches each batch,
asks the schedule what to do, and calls back here for the batch's work (`train_batch`) and, only
when there is some, logging and validation (`after_batch`). Epoch boundaries are here:

    on_train_start
    per epoch: on_train_epoch_start, [native batch loop], on_train_epoch_end
               (plain callbacks, module, monitoring callbacks), plateau schedulers, epoch metrics
    on_train_end

With several processes, `trainer.should_stop` is agreed on across ranks (`stop_sync`) where the
loop acts on it between batches: before the first epoch, after `on_train_epoch_start`, after
validation and at each epoch's end. After a training batch it is read as set, with no round trip
per step: a stop requested inside a batch must be requested on every rank, as in Lightning.

A preemption signal (SIGTERM, SLURM's requeue signal; see `preemption`) stops the fit after the
optimizer step under way: the native loop ends the epoch at that boundary, and the fit writes its
checkpoint there and raises `SIGTERMException` instead of running the epoch's end. A signal during
an epoch's last batch or its end stops the fit once that epoch's end has run, as in Lightning.
"""

from __future__ import annotations

from typing import Any, Optional

from ferrotrain import _core
from ferrotrain.trainer.checkpointing import rng_states, set_rng_states
from ferrotrain.trainer.data import INF, set_sampler_epoch
from ferrotrain.trainer.optimization import step_schedulers
from ferrotrain.trainer.states import RunningStage
from ferrotrain.loops.train_batch import AutomaticStep, ManualStep, SkipBackwardStep
from ferrotrain.trainer.views import _as_tensors
from ferrotrain.utilities.rank_zero import rank_zero_info, rank_zero_warn
from ferrotrain.utilities.warnings import PossibleUserWarning

STEP = _core.FLAG_STEP
LAST = _core.FLAG_LAST



def _warn_if_modules_in_eval_mode(module: Any) -> None:
    """Lightning's warning when training starts with submodules in eval mode (the fit keeps each
    submodule's mode as the user left it, so dropout or batch norm may be off by mistake)."""
    in_eval = sum(1 for _, m in module.named_modules() if not m.training)
    if in_eval:
        rank_zero_warn(
            f"Found {in_eval} module(s) in eval mode at the start of training. This may lead to unexpected behavior "
            "during training. If this is intentional, you can ignore this warning.",
            category=PossibleUserWarning,
        )

class FitLoop:
    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        # Set while the first epoch keeps what `on_train_start` logged.
        self._keep_start_logs = False
        module = trainer.lightning_module
        if module.automatic_optimization:
            self.step = trainer.strategy.automatic_step(trainer) or AutomaticStep(trainer)
        else:
            self.step = ManualStep(trainer)
        # Manual optimization steps its schedulers itself (`self.lr_schedulers()`), as in Lightning.
        self.step_scheds: list = []
        self.epoch_scheds: list = []
        self.plateau_step_scheds: list = []
        self.plateau_epoch_scheds: list = []
        self._sched_key: Any = None
        self._refresh_schedulers()
        self._last_batch_reached = False
        self._preempt: Any = None  # the fit's Preemption, set by `run`
        # What train_batch and _after_batch call, looked up once (the loop profiler wraps them).
        self._transfer = trainer._transfer_batch
        self._step_schedulers = step_schedulers
        self._log_step_metrics = trainer._log_step_metrics
        self._validate = trainer._run_validation_in_fit
        self._make_fetcher = trainer._make_train_fetcher
        self._close_fetcher = _close_fetcher
        profiler = trainer._loop_profiler
        self._timer = None if profiler is None else profiler.timer
        if profiler is not None:
            self._time_with(profiler.wrap)
        # None with one process: nothing to agree on, nothing on the per-step path.
        self._stop: Any = None
        if trainer.world_size > 1:
            from ferrotrain.trainer.stop_sync import StopSync

            self._stop = StopSync(trainer)
        self.train_batch = self._build_train_batch()

    def _time_with(self, wrap: Any) -> None:
        """Time this loop's parts and its step's as profiler phases (`wrap(name, fn)`), named as
        Lightning's profiler names them."""
        self._transfer = wrap("[Strategy]batch_to_device", self._transfer)
        self._step_schedulers = wrap("[Strategy]lr_scheduler_step", self._step_schedulers)
        self._log_step_metrics = wrap("[Trainer]log_to_loggers", self._log_step_metrics)
        self._validate = wrap("[Trainer]validation_loop", self._validate)
        self._make_fetcher = wrap("[loop] start data fetcher", self._make_fetcher)
        self._close_fetcher = wrap("[loop] close data fetcher", self._close_fetcher)
        self.step.time_with(wrap)

    def _refresh_schedulers(self) -> None:
        """Sort `trainer.lr_scheduler_configs` by interval. Callbacks may swap schedulers in
        `on_train_epoch_start` (StochasticWeightAveraging installs SWALR), so this runs again after
        that hook; the lists are updated in place because the batch function holds them."""
        trainer = self.trainer
        configs = trainer.lr_scheduler_configs if trainer.lightning_module.automatic_optimization else []
        key = [id(c) for c in configs]
        if key == self._sched_key:
            return
        self._sched_key = key
        self.step_scheds[:] = [c for c in configs if c.interval == "step" and not c.reduce_on_plateau]
        self.epoch_scheds[:] = [c for c in configs if c.interval == "epoch" and not c.reduce_on_plateau]
        self.plateau_step_scheds[:] = [c for c in configs if c.interval == "step" and c.reduce_on_plateau]
        self.plateau_epoch_scheds[:] = [c for c in configs if c.interval == "epoch" and c.reduce_on_plateau]

    # ------------------------------------------------------------------ epochs
    def run(self) -> None:
        trainer = self.trainer
        schedule = trainer._schedule
        # Lightning's `_FitLoop.skip`: nothing to train (no batches, or the limits are already
        # reached) runs no training hooks at all.
        stop = self._stop
        if stop is not None:
            stop.now()  # set in setup / on_fit_start by one rank
        preempt = trainer._preemption  # None in a tuner's trial fit
        self._preempt = preempt
        if trainer.num_training_batches == 0 or schedule.fit_done():
            if preempt is not None and preempt.agreed():
                preempt.stop()
            self._report_limit()
            return
        _warn_if_modules_in_eval_mode(trainer.lightning_module)
        # `on_train_start` logs into the training results; they reach the loggers with the
        # first epoch's values (Lightning), so that epoch does not reset them.
        results = trainer._train_results
        results.reset()
        trainer._active_results = results
        trainer.lightning_module._results = results
        self._keep_start_logs = True
        trainer._call_hooks("on_train_start")
        if stop is not None:
            stop.now()
        min_limits_noted = False
        while not schedule.fit_done():
            self._run_epoch()
            if preempt is not None and preempt.agreed():
                preempt.stop()
            if schedule.should_stop and not min_limits_noted and not schedule.fit_done():
                # Asked to stop, but `min_epochs`/`min_steps` keep it going: said once (Lightning).
                min_limits_noted = True
                rank_zero_info(
                    f"Trainer was signaled to stop but the required `min_epochs={trainer.min_epochs!r}` or "
                    f"`min_steps={trainer.min_steps!r}` has not been met. Training will continue..."
                )
        self._report_limit()
        trainer._call_hooks("on_train_end")

    def _report_limit(self) -> None:
        """Say which limit ended the fit, in Lightning's words (`_FitLoop.done`)."""
        trainer = self.trainer
        schedule = trainer._schedule
        if trainer.num_training_batches == 0:
            return  # said when the loader was counted
        if schedule.max_steps_reached():
            rank_zero_info(f"`Trainer.fit` stopped: `max_steps={int(trainer.max_steps)!r}` reached.")
        elif trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs:
            rank_zero_info(f"`Trainer.fit` stopped: `max_epochs={int(trainer.max_epochs)!r}` reached.")

    def _run_epoch(self) -> None:
        trainer = self.trainer
        schedule = trainer._schedule
        results = trainer._train_results
        # After a restore: (RNG at the start of the checkpoint's epoch, RNG when it was saved).
        resume = trainer._resume_rng
        trainer._resume_rng = None
        skip = schedule.batches_in_epoch  # batches of this epoch already trained on
        loader = trainer._train_dataloader_for_epoch()
        n = trainer.num_training_batches
        set_sampler_epoch(loader, trainer.current_epoch)
        schedule.begin_epoch(None if n == INF else int(n))
        if not self._keep_start_logs:
            results.reset()
        self._keep_start_logs = False
        trainer._active_results = results
        trainer.lightning_module._results = results
        trainer.state.stage = RunningStage.TRAINING
        self._last_batch_reached = False
        if not skip:
            if resume is not None and resume[1] is not None:
                set_rng_states(resume[1])  # saved between epochs: go on from there
            trainer._call_hooks("on_train_epoch_start")
            self._refresh_schedulers()
            if self._stop is not None:
                self._stop.now()
        elif resume is not None and resume[0] is not None:
            set_rng_states(resume[0])  # saved mid-epoch: replay this epoch's shuffle first
        # The RNG state the loader's shuffle starts from, so a mid-epoch checkpoint can replay it.
        trainer._epoch_start_rng = rng_states()
        fetcher = self._make_fetcher(loader, n)
        try:
            if skip:
                for _ in range(skip):
                    if fetcher.fetch() is None:
                        break
                if resume is not None and resume[1] is not None:
                    set_rng_states(resume[1])
            preempt = self._preempt
            while True:
                if preempt is not None:
                    preempt.enter_loop()
                _core.run_train_epoch(
                    schedule, fetcher, self.train_batch, self._after_batch, bool(self.plateau_step_scheds), self._timer
                )
                # With several processes a signal ends the native loop early so the ranks agree
                # on the stop step; the epoch then goes on up to it.
                if preempt is None or not preempt.continue_epoch():
                    break
        finally:
            self._close_fetcher(fetcher)
        if self._preempt is not None and self._preempt.stops_mid_epoch():
            self._preempt.stop()
        self._end_epoch()

    def _end_epoch(self) -> None:
        trainer = self.trainer
        schedule = trainer._schedule
        results = trainer._train_results
        _keep_step_views(trainer, results)
        results.epoch_end_reached = True
        schedule.end_epoch()
        hooks = trainer._hooks
        module = trainer.lightning_module
        module.__dict__["_current_fx_name"] = "on_train_epoch_end"
        for f in hooks.cb_train_epoch_end_first:
            f(trainer, module)
        if hooks.mod["on_train_epoch_end"] is not None:
            hooks.mod["on_train_epoch_end"]()
        for f in hooks.cb_train_epoch_end_last:
            f(trainer, module)
        if self._last_batch_reached and self.plateau_epoch_scheds:
            step_schedulers(trainer, self.plateau_epoch_scheds, "epoch", True, trainer.current_epoch)
        # Lightning logs epoch metrics at the step of the epoch's last stepping batch.
        trainer._log_epoch_metrics(results, max(schedule.batches_that_stepped - 1, 0))
        results.reset_metrics()
        if self._stop is not None:
            self._stop.now()
        schedule.complete_epoch()

    # ------------------------------------------------------------------ batches
    def _build_train_batch(self, skip_backward: bool = False) -> Any:
        """The per-batch function the native loop calls. `skip_backward` builds one whose batches
        run `training_step` with no zero_grad or backward (Lightning's `fit_loop._skip_backward`,
        set by StochasticWeightAveraging for its BatchNorm epoch); the fit loop swaps it in for an
        epoch, so the ordinary path never checks a flag."""
        trainer = self.trainer
        module = trainer.lightning_module
        hooks = trainer._hooks
        fx = module.__dict__
        results = trainer._train_results
        cb_start, m_start = hooks.cb["on_train_batch_start"], hooks.mod["on_train_batch_start"]
        cb_end, m_end = hooks.cb["on_train_batch_end"], hooks.mod["on_train_batch_end"]
        has_start = bool(cb_start) or m_start is not None
        has_end = bool(cb_end) or m_end is not None
        # Batches copied ahead to the device (CUDA copy-ahead) arrive already transferred.
        needs_transfer = trainer._needs_transfer() and not trainer._train_feeds_ahead()
        transfer = self._transfer
        step_schedulers = self._step_schedulers
        run_step = SkipBackwardStep(trainer).run if skip_backward else self.step.run
        step_scheds, epoch_scheds = self.step_scheds, self.epoch_scheds

        def train_batch(batch: Any, batch_idx: int, flags: int) -> Optional[bool]:
            if needs_transfer:
                batch = transfer(batch, 0)
            results.batch = batch
            results._batch_size = None
            if has_start:
                fx["_current_fx_name"] = "on_train_batch_start"
                for f in cb_start:
                    f(trainer, module, batch, batch_idx)
                if m_start is not None and m_start(batch, batch_idx) == -1:
                    # Lightning: the batch counts, epoch schedulers step, and the epoch ends.
                    self._last_batch_reached = True
                    if epoch_scheds:
                        step_schedulers(trainer, epoch_scheds, "epoch", False, trainer.current_epoch)
                    return False
            out = run_step(batch, batch_idx, flags)
            if step_scheds and flags & STEP:
                step_schedulers(trainer, step_scheds, "step", False, batch_idx)
            if flags & LAST:
                self._last_batch_reached = True
                if epoch_scheds:
                    step_schedulers(trainer, epoch_scheds, "epoch", False, trainer.current_epoch)
            if has_end:
                fx["_current_fx_name"] = "on_train_batch_end"
                for f in cb_end:
                    f(trainer, module, out, batch, batch_idx)
                if m_end is not None:
                    m_end(out, batch, batch_idx)
            return None

        return train_batch

    def _after_batch(self, log: bool, log_step: int, validate: bool, stepped: bool) -> None:
        trainer = self.trainer
        if log:
            self._log_step_metrics(trainer._train_results, log_step)
        if validate:
            _keep_step_views(trainer, trainer._train_results)
            self._validate(log_step, stepped)
            if self._stop is not None:
                self._stop.now()
        if self.plateau_step_scheds and stepped:
            step_schedulers(trainer, self.plateau_step_scheds, "step", True, trainer._schedule.batches_in_epoch - 1)


def _close_fetcher(fetcher: Any) -> None:
    fetcher.close()


def _keep_step_views(trainer: Any, results: Any) -> None:
    """The latest training step values stay in the Trainer's views when validation or the epoch's
    end takes over (Lightning updates its views after every batch; here it is done only when the
    loop switches, off the per-step path)."""
    log, bar, cb = results.step_metrics()
    trainer._callback_metrics.update(_as_tensors(cb))
    trainer._progress_bar_metrics.update(bar)
    trainer._logged_metrics.update(_as_tensors(log))
