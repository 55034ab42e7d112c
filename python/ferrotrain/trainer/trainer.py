"""`Trainer`: the public API (constructor, fit/validate/test/predict; the attributes user code
reads come from `views`). It checks arguments, wires the run together, and delegates: argument
checking to `config`, the hook table to `hooks`, the training loop to `fit_loop` (whose batch loop
is native), evaluation to `evaluation_loop`, optimizers to `optimization`, metrics to `results`,
and checkpoint contents to `checkpointing`."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ferrotrain import _core
from ferrotrain.callbacks.callback import Callback, is_overridden
from ferrotrain.core.datamodule import LightningDataModule
from ferrotrain.core.module import LightningModule
from ferrotrain.errors import ConfigTypeError, MisconfigurationException, NoModelAttachedError, _TunerExitException
from ferrotrain.trainer import config as cfg
from ferrotrain.trainer import val_reload
from ferrotrain.trainer.barebones import resolve_opt_outs
from ferrotrain.trainer.data import (INF, Fetcher, _check_iterable, as_loader_list, limited_batches,
                                     reported_batch_counts, resolve_loaders, sequential_for_overfit)
from ferrotrain.trainer.env_defaults import defaults_from_env
from ferrotrain.trainer.hooks import HookTable
from ferrotrain.trainer.optimization import LRSchedulerConfig, LightningOptimizer, parse_configure_optimizers
from ferrotrain.trainer.plugin_args import apply_plugins, cluster_environment_plugin, precision_plugin_given
from ferrotrain.trainer.precision import Precision, resolve_for_accelerator
from ferrotrain.trainer.results import Results
from ferrotrain.trainer.signals import ignoring_sigint
from ferrotrain.trainer.states import RunningStage, TrainerFn, TrainerState, TrainerStatus
from ferrotrain.trainer.views import TrainerViews, _as_tensors
from ferrotrain.utilities.apply_func import move_data_to_device
from ferrotrain.utilities.rank_zero import rank_zero_info, rank_zero_warn
from ferrotrain.utilities.seed import isolate_rng

DEFAULT_PREFETCH_BATCHES = 2


class Trainer(TrainerViews):
    @defaults_from_env
    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: Any = "auto",
        devices: Union[int, str, List[int]] = "auto",
        num_nodes: int = 1,
        precision: Union[int, str] = 32,
        logger: Any = None,
        callbacks: Any = None,
        fast_dev_run: Union[int, bool] = False,
        max_epochs: Optional[int] = cfg.DEFAULT_MAX_EPOCHS,
        min_epochs: Optional[int] = cfg.DEFAULT_MIN_EPOCHS,
        max_steps: int = -1,
        min_steps: Optional[int] = None,
        max_time: Any = None,
        limit_train_batches: Union[int, float, None] = None,
        limit_val_batches: Union[int, float, None] = None,
        limit_test_batches: Union[int, float, None] = None,
        limit_predict_batches: Union[int, float, None] = None,
        overfit_batches: Union[int, float] = 0.0,
        val_check_interval: Union[int, float, None] = cfg.DEFAULT_VAL_CHECK_INTERVAL,
        check_val_every_n_epoch: Optional[int] = 1,
        num_sanity_val_steps: Optional[int] = None,
        log_every_n_steps: Optional[int] = None,
        enable_checkpointing: Optional[bool] = None,
        enable_progress_bar: Optional[bool] = None,
        enable_model_summary: Optional[bool] = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: str = "norm",
        deterministic: Union[bool, str, None] = None,
        benchmark: Optional[bool] = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: Optional[Union[str, os.PathLike]] = None,
        enable_autolog_hparams: bool = True,
        model_registry: Optional[str] = None,
    ) -> None:
        args = dict(locals())
        resolve_opt_outs(args)  # None until resolved, so `barebones=True` alone works
        checkpoint_io = apply_plugins(args)
        # A SLURMEnvironment plugin: its signal settings (`auto_requeue`, `requeue_signal`).
        self._slurm_environment = args.pop("_slurm_environment", None)
        logger = args["logger"]
        self._config = cfg.resolve(args)
        # False until a fit resolves `max_epochs`/`min_epochs` (the views report the defaults before).
        self._epoch_limits_resolved = False
        from ferrotrain.profilers.profiler import resolve as _resolve_profiler

        self.profiler = _resolve_profiler(cfg.check_profiler(profiler))
        self._sync_batchnorm = cfg.check_bool("sync_batchnorm", args["sync_batchnorm"])
        self.enable_autolog_hparams = cfg.check_bool("enable_autolog_hparams", enable_autolog_hparams)
        # Lightning uploads checkpoints to its model hub (the `litmodels` package); not here.
        cfg.reject_unsupported("model_registry", model_registry, None)
        check_bool = cfg.check_bool
        check_bool("use_distributed_sampler", use_distributed_sampler)
        c = self._config
        user_callbacks = cfg.check_callbacks(callbacks)
        logger_setting = cfg.check_logger(logger)
        from ferrotrain.strategies.connector import resolve as resolve_strategy

        # The layout over devices and processes is decided once, here (see `ferrotrain.strategies`).
        self.accelerator_name, self._strategy = resolve_strategy(
            c.accelerator, c.devices, c.strategy, c.num_nodes, cluster_environment_plugin(plugins))
        self._strategy._attach(self)
        self._strategy.checkpoint_io = checkpoint_io
        as_given = precision_plugin_given(plugins) or self._strategy.runs_own_precision
        precision = resolve_for_accelerator(c.precision, self.accelerator_name, as_given)
        if precision != c.precision:
            self._config = c = dataclasses.replace(c, precision=precision)
        self._strategy.check_precision(c.precision)
        self._device = self._strategy.root_device
        self._check_sync_batchnorm()
        self._use_distributed_sampler = use_distributed_sampler
        self._precision = Precision(c.precision, self._device)
        self.state = TrainerState()
        self.callbacks: List[Callback] = self._build_callbacks(user_callbacks)
        self._loggers: Optional[List[Any]] = None if logger_setting is True else list(logger_setting)
        if c.fast_dev_run and self._loggers != []:
            from ferrotrain.loggers.logger import DummyLogger

            self._loggers = [DummyLogger()]  # a debugging run leaves no logs, as in Lightning
        # None leaves torch's flags alone; an explicit False switches deterministic mode off.
        self._deterministic_arg = deterministic
        self._apply_determinism()

        self.lightning_module: Optional[LightningModule] = None
        self.datamodule: Optional[LightningDataModule] = None
        self.optimizers: List[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: List[LRSchedulerConfig] = []
        self._schedule: Any = None
        self._train_results = Results(training=True)
        self._val_results = Results(training=False)
        self._active_results: Optional[Results] = None
        self._callback_metrics: Dict[str, Any] = {}
        self._logged_metrics: Dict[str, Any] = {}
        self._progress_bar_metrics: Dict[str, Any] = {}
        self._eval_step_base: Dict[Any, int] = {}
        self._train_loader: Any = None
        self._val_loaders: List[Any] = []
        self.num_training_batches: Union[int, float] = INF
        self.num_val_batches: List[Union[int, float]] = []
        self.num_test_batches: List[Union[int, float]] = []
        self.num_predict_batches: List[Union[int, float]] = []
        self.num_sanity_val_batches: List[Union[int, float]] = []
        self._eval_fetchers: List[Fetcher] = []
        self._ckpt_path: Optional[str] = None
        self._resume_rng: Any = None
        self._epoch_start_rng: Any = None
        self._val_check_batch: Union[int, float] = INF
        self._val_source_defined = False
        # The loaders of the last `test`/`predict` call, by stage (`test_dataloaders`, ...).
        self._eval_loaders: Dict[str, List[Any]] = {}
        self._predict_loop: Any = None
        # The running call's `weights_only` (how a torch-pickled `ckpt_path` may be read).
        self._ckpt_weights_only: Optional[bool] = None
        self._prefetch_batches = DEFAULT_PREFETCH_BATCHES
        # Set by each fit: the loaders it was given (the tuner and `estimated_stepping_batches`
        # set the training data up from them), whether it validates, the step validation logs at.
        self._fit_sources: Tuple[Any, Any] = (None, None)
        self._has_validation = False
        self._eval_log_step = 0
        # The validation loaders' reload state (`val_reload`).
        self._val_given: Any = None
        self._val_requested = False
        self._last_val_reload_epoch = float("-inf")
        # The learning rate finder's first-epoch iterator, taken by the fit's first epoch.
        self._first_epoch_iterator: Any = None
        # Checkpoint state: the restore pending after setup, ModelCheckpoint's one-call async flag,
        # the optimizer hooks that snapshot before a step.
        self._resume_ckpt: Any = None
        self._checkpoint_async = False
        self._snapshot_hooks: List[Any] = []
        self._reset_transient()
        self._new_schedule(has_validation=False, automatic=True)

    def _reset_transient(self) -> None:
        """What lives only while a run is going (`_TRANSIENT`), in its idle state."""
        self._fit_loop: Any = None
        self._hooks: Optional[HookTable] = None
        self._checkpoint_writer: Any = None  # the background writer session (checkpointing)
        self._checkpoint_removals: List[Any] = []  # folders and files waiting for the writer
        self._lightning_optimizers: List[LightningOptimizer] = []
        self._preemption: Any = None  # the fit's signal handling, None outside a fit

    # ------------------------------------------------------------------ pickling (ddp_spawn)
    # What lives only while a run is going (native loop state, closures, writer threads) stays
    # behind; the loop progress travels as numbers and the rest is rebuilt on arrival.
    _TRANSIENT = ("_fit_loop", "_hooks", "_checkpoint_writer", "_lightning_optimizers", "_checkpoint_removals",
                  "_preemption")

    def __getstate__(self) -> Dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}
        schedule = state.pop("_schedule")
        state["_schedule_state"] = ({k: int(v) for k, v in dict(schedule.state_dict()).items()}, schedule.should_stop)
        for k in ("_train_results", "_val_results", "_active_results"):
            state[k] = None
        state["_eval_fetchers"] = []
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        progress, should_stop = state.pop("_schedule_state")
        self.__dict__.update(state)
        self._reset_transient()
        self._train_results = Results(training=True)
        self._val_results = Results(training=False)
        self._schedule = None
        self._new_schedule(has_validation=False, automatic=True)
        self._schedule.load_state_dict(**progress)
        self._schedule.should_stop = should_stop

    # ------------------------------------------------------------------ construction helpers
    def _check_sync_batchnorm(self) -> None:
        # torch's SyncBatchNorm synchronises only accelerator tensors: with several CPU processes
        # every forward would fail, so say so now rather than after the sanity check.
        from ferrotrain.strategies.parallel import ParallelStrategy

        if (self._sync_batchnorm and isinstance(self._strategy, ParallelStrategy) and self._device.type == "cpu"
                and self._strategy.world_size > 1):
            raise MisconfigurationException(
                "`Trainer(sync_batchnorm=True)` needs accelerator devices when several processes train: torch's "
                "SyncBatchNorm cannot synchronise CPU tensors. Use sync_batchnorm=False on the CPU"
            )

    def _convert_sync_batchnorm(self, model: LightningModule) -> None:
        """`sync_batchnorm=True` with a data-parallel strategy: BatchNorm layers become torch's
        SyncBatchNorm before the model is wrapped (Lightning's TorchSyncBatchNorm); a no-op with one process."""
        from ferrotrain.strategies.parallel import ParallelStrategy

        if isinstance(self._strategy, ParallelStrategy):
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def _build_callbacks(self, user: List[Callback]) -> List[Callback]:
        from ferrotrain.callbacks import ModelCheckpoint, ModelSummary, ProgressBar, TQDMProgressBar

        c = self._config
        callbacks = list(user)
        bars = [cb for cb in callbacks if isinstance(cb, ProgressBar)]
        if len(bars) > 1:
            raise MisconfigurationException("You added multiple progress bar callbacks; only one is allowed")
        if not c.enable_progress_bar and bars:
            raise MisconfigurationException(
                f"Trainer was configured with `enable_progress_bar=False` but found `{type(bars[0]).__name__}` in callbacks"
            )
        if c.enable_progress_bar and not bars:
            callbacks.append(TQDMProgressBar())
        checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
        if not c.enable_checkpointing and checkpoints:
            raise MisconfigurationException(
                "Trainer was configured with `enable_checkpointing=False` but found `ModelCheckpoint` in callbacks"
            )
        if c.enable_checkpointing and not checkpoints:
            callbacks.append(ModelCheckpoint())
        if c.enable_model_summary and not any(isinstance(cb, ModelSummary) for cb in callbacks):
            callbacks.append(ModelSummary())
        if c.max_time is not None:
            from ferrotrain.callbacks import Timer

            # Lightning implements `max_time` with a Timer callback checked every step.
            callbacks.append(Timer(duration=c.max_time, interval="step", verbose=False))
        return _checkpoints_last(callbacks)

    def _apply_determinism(self) -> None:
        from ferrotrain.trainer.reproducibility import set_torch_flags

        set_torch_flags(self.__dict__.get("_deterministic_arg", self._config.deterministic), self._config.benchmark)

    def _new_schedule(self, has_validation: bool, automatic: bool) -> None:
        c = self._config
        old = self._schedule
        self._schedule = _core.Schedule(
            max_epochs=c.max_epochs,
            max_steps=c.max_steps,
            min_epochs=c.min_epochs,
            min_steps=c.min_steps,
            accumulate_grad_batches=self.accumulate_grad_batches if hasattr(self, "_accumulate") else c.accumulate_grad_batches,
            log_every_n_steps=c.log_every_n_steps,
            check_val_every_n_epoch=c.check_val_every_n_epoch,
            val_check_batch=None,
            has_validation=has_validation,
            automatic_optimization=automatic,
        )
        if old is not None:
            self._schedule.load_state_dict(**dict(old.state_dict()))
            self._schedule.should_stop = old.should_stop

    def _set_max_epochs(self, value: int) -> None:
        """Change the fit's epoch limit after `fit` started (Lightning's `fit_loop.max_epochs += 1`,
        which StochasticWeightAveraging uses for its BatchNorm epoch)."""
        import dataclasses

        self._config = dataclasses.replace(self._config, max_epochs=value)
        self._schedule.max_epochs = -1 if value is None else int(value)

    # ------------------------------------------------------------------ entry points
    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Optional[LightningDataModule] = None, ckpt_path: Optional[str] = None,
            weights_only: Optional[bool] = None) -> None:
        self._check_model(model, "fit")
        if not is_overridden(model, LightningModule, "training_step"):
            raise MisconfigurationException(
                "No `training_step()` method defined: `Trainer.fit` expects the LightningModule to define at least "
                "`training_step()` and `configure_optimizers()`, and a training dataloader"
            )
        if train_dataloaders is not None and isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        self._check_datamodule(datamodule, train_dataloaders, val_dataloaders, "train_dataloaders")
        self.state.fn = TrainerFn.FITTING
        self.state.stage = RunningStage.TRAINING  # seen by `setup`, as in Lightning
        self._ckpt_weights_only = weights_only
        self._run_guarded(lambda: self._fit_impl(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path), model,
                          ("fit", (model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)))

    def validate(self, model: Optional[LightningModule] = None, dataloaders: Any = None, ckpt_path: Optional[str] = None,
                 verbose: bool = True, datamodule: Optional[LightningDataModule] = None,
                 weights_only: Optional[bool] = None) -> List[Dict[str, float]]:
        return self._evaluate_entry("validate", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model: Optional[LightningModule] = None, dataloaders: Any = None, ckpt_path: Optional[str] = None,
             verbose: bool = True, datamodule: Optional[LightningDataModule] = None,
             weights_only: Optional[bool] = None) -> List[Dict[str, float]]:
        return self._evaluate_entry("test", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(self, model: Optional[LightningModule] = None, dataloaders: Any = None,
                datamodule: Optional[LightningDataModule] = None, return_predictions: Optional[bool] = None,
                ckpt_path: Optional[str] = None, weights_only: Optional[bool] = None) -> Optional[List[Any]]:
        ckpt_path = self._default_ckpt_path("predict", model, ckpt_path)
        model = self._model_for_eval(model, "predict")
        if dataloaders is not None and isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self._check_datamodule(datamodule, dataloaders, None, "dataloaders")
        self.state.fn = TrainerFn.PREDICTING
        self.state.stage = RunningStage.PREDICTING  # seen by `setup`, as in Lightning
        keep = True if return_predictions is None else cfg.check_bool("return_predictions", return_predictions)
        self._ckpt_weights_only = weights_only
        return self._run_guarded(lambda: self._predict_impl(model, dataloaders, datamodule, keep, ckpt_path), model,
                                 ("predict", (model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)))

    def _evaluate_entry(self, stage_fn: str, model: Optional[LightningModule], dataloaders: Any,
                        ckpt_path: Optional[str], verbose: bool, datamodule: Optional[LightningDataModule],
                        weights_only: Optional[bool] = None) -> List[Dict[str, float]]:
        ckpt_path = self._default_ckpt_path(stage_fn, model, ckpt_path)
        model = self._model_for_eval(model, stage_fn)
        if dataloaders is not None and isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self._check_datamodule(datamodule, dataloaders, None, "dataloaders")
        self.state.fn = TrainerFn.VALIDATING if stage_fn == "validate" else TrainerFn.TESTING
        # Seen by `setup`, as in Lightning.
        self.state.stage = RunningStage.VALIDATING if stage_fn == "validate" else RunningStage.TESTING
        self._ckpt_weights_only = weights_only
        return self._run_guarded(
            lambda: self._evaluate_impl(stage_fn, model, dataloaders, datamodule, ckpt_path, verbose), model,
            (stage_fn, (model, dataloaders, ckpt_path, verbose, datamodule, weights_only)),
        )

    # ------------------------------------------------------------------ argument checks
    def _check_model(self, model: Any, fn: str) -> None:
        if not isinstance(model, LightningModule):
            raise ConfigTypeError(
                f"`model` must be a `LightningModule`, got "
                f"`{type(model).__qualname__}` (`Trainer.{fn}()` was given {model!r})"
            )

    def _default_ckpt_path(self, fn: str, model: Optional[LightningModule], ckpt_path: Optional[str]) -> Optional[str]:
        """Lightning's rule: `validate/test/predict()` without a model after a `fit` evaluates the
        best checkpoint of that fit (with a warning), not the weights the fit ended with."""
        if model is not None or ckpt_path is not None or self.lightning_module is None:
            return ckpt_path
        warnings.warn(
            f"`.{fn}(ckpt_path=None)` was called without a model. The best model of the previous `fit` call "
            f"will be used. You can pass `.{fn}(ckpt_path='best')` to use the best model or "
            f"`.{fn}(ckpt_path='last')` to use the last model. If you pass a value, this warning will be silenced.",
            UserWarning,
            stacklevel=3,
        )
        return "best"

    def _model_for_eval(self, model: Optional[LightningModule], fn: str) -> LightningModule:
        if model is None:
            if self.lightning_module is None:
                raise ConfigTypeError(
                    f"`Trainer.{fn}()` requires a `LightningModule` when it hasn't been passed in a previous run"
                )
            return self.lightning_module
        self._check_model(model, fn)
        return model

    def _check_datamodule(self, datamodule: Any, loaders: Any, val_loaders: Any, name: str) -> None:
        if datamodule is None:
            return
        if not isinstance(datamodule, LightningDataModule):
            raise ConfigTypeError(
                f"`datamodule` must be a `LightningDataModule`, got {datamodule!r} ({type(datamodule).__name__})"
            )
        if loaders is not None or val_loaders is not None:
            raise MisconfigurationException(
                f"You cannot pass `{name}` or `val_dataloaders` together with `datamodule`: pass one or the other"
            )

    # ------------------------------------------------------------------ run scaffolding
    def _run_guarded(self, fn: Any, model: LightningModule, call: Any = None) -> Any:
        """Lightning's `_call_and_handle_interrupt`: on an exception, `on_exception` hooks run,
        loggers are finalized, and the exception reaches the user unchanged; a KeyboardInterrupt
        (Ctrl-C) shuts down the same way and then ends the program with exit status 1. `call` is the public
        call (name, arguments) that a spawning launcher (`ddp_spawn`) runs in its workers instead."""
        self.state.status = TrainerStatus.RUNNING
        try:
            launcher = self._strategy.launcher
            if call is not None and getattr(launcher, "runs_in_workers", False):
                result = launcher.run(self, *call)
            else:
                self._strategy.launch()
                result = fn()
        except _TunerExitException:
            # A tuner run from `Tuner` finished inside this call: end it as Lightning does, with
            # the teardown hooks and loggers finalized, and no error.
            self._end_tuner_run()
            self._teardown()
            self.state.status = TrainerStatus.FINISHED
            self.state.stage = None
            return None
        except KeyboardInterrupt as exc:
            rank_zero_info("\nDetected KeyboardInterrupt, attempting graceful shutdown ...")
            # Further Ctrl-C presses must not break the shutdown itself (Lightning ignores them).
            with ignoring_sigint():
                self._interrupt(exc)
                # Lightning lets the strategy react (a launcher stops its worker processes).
                self._strategy.on_exception(exc)
                self._teardown()
            # Lightning ends the program here: exit status 1, raised as `SystemExit`.
            sys.exit(1)
        except BaseException as exc:
            self._interrupt(exc)
            self._teardown()
            self.state.stage = None
            # With several processes, another rank's failure is the error to show.
            shown = self._strategy.on_exception(exc)
            if shown is not exc:
                raise shown from exc
            raise
        self.state.status = TrainerStatus.FINISHED
        self._teardown()
        self.state.stage = None
        return result

    def _end_tuner_run(self) -> None:
        """Lightning's `_call_teardown_hook` after a `_TunerExitException`."""
        self._finish_run(self.state.fn.value)
        module = self.lightning_module
        if module is not None:
            module.__dict__["_current_fx_name"] = None
        for lg in self.loggers:
            lg.finalize("success")
        self.profiler.describe()

    def _interrupt(self, exc: BaseException) -> None:
        self.state.status = TrainerStatus.INTERRUPTED
        module = self.lightning_module
        for cb in self.callbacks:
            if is_overridden(cb, Callback, "on_exception"):
                cb.on_exception(self, module, exc)
        if self.datamodule is not None and hasattr(self.datamodule, "on_exception"):
            self.datamodule.on_exception(exc)
        for lg in self._loggers or []:
            try:
                lg.finalize("failed")
            except Exception:  # a logger failing to close must not hide the original error
                pass

    def _teardown(self) -> None:
        preemption, self._preemption = self._preemption, None
        if preemption is not None:
            preemption.close()
        for f in list(self._eval_fetchers):
            f.close()
        self._eval_fetchers.clear()
        from ferrotrain.trainer import checkpointing

        checkpointing.close_writer(self)
        bar = self.progress_bar_callback
        if bar is not None and hasattr(bar, "_close_all"):
            bar._close_all()
        self._strategy.teardown()
        self.profiler.teardown(self.state.fn.value if self.state.fn is not None else None)

    def _attach(self, model: LightningModule, datamodule: Optional[LightningDataModule]) -> None:
        self.lightning_module = model
        model.trainer = self
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self

    def _setup_run(self, model: LightningModule, datamodule: Optional[LightningDataModule], stage: str) -> None:
        """configure_callbacks, prepare_data, setup (callbacks, then module), configure_model, hook table."""
        # Each run starts with empty metric views (Lightning's `reset_metrics`).
        self._callback_metrics.clear()
        self._logged_metrics.clear()
        self._progress_bar_metrics.clear()
        self._active_results = None
        self._eval_step_base = {}
        self._strategy.setup_environment()
        self._attach(model, datamodule)
        self._merge_model_callbacks(model)
        # Callbacks log through the module, as Lightning's `_attach_model_logging_functions`.
        for cb in self.callbacks:
            cb.log = model.log
            cb.log_dict = model.log_dict
        self._hooks = HookTable(model, self.callbacks, datamodule)
        if self._loop_profiler is not None:
            self._loop_profiler.instrument_hooks(self._hooks)
        if datamodule is not None:
            datamodule.prepare_data()
        if is_overridden(model, LightningModule, "prepare_data"):
            model.prepare_data()
        fn = TrainerFn(stage)  # a str enum: equal to "fit", "validate", ... as in Lightning
        if datamodule is not None:
            datamodule.setup(stage=fn)
        for cb in self.callbacks:
            if is_overridden(cb, Callback, "setup"):
                cb.setup(self, model, stage=fn)
        if is_overridden(model, LightningModule, "setup"):
            model.__dict__["_current_fx_name"] = "setup"
            model.setup(stage=fn)
        if is_overridden(model, LightningModule, "configure_model"):
            model.configure_model()
        model.to(self._device)
        self._precision.convert_module(model)

    def _merge_model_callbacks(self, model: LightningModule) -> None:
        if not is_overridden(model, LightningModule, "configure_callbacks"):
            return
        extra = model.configure_callbacks()
        if isinstance(extra, Callback):
            extra = [extra]
        extra = cfg.check_callbacks(list(extra) if extra else [])
        types = {type(cb) for cb in extra}
        # Callbacks from the model replace the trainer's callbacks of the same type (Lightning).
        self.callbacks = _checkpoints_last([cb for cb in self.callbacks if type(cb) not in types] + extra)

    def _finish_run(self, stage: str) -> None:
        """teardown(stage): datamodule, callbacks, then module (Lightning's `_call_teardown_hook`)."""
        fn = TrainerFn(stage)
        model = self.lightning_module
        if self.datamodule is not None:
            self.datamodule.teardown(stage=fn)
        for cb in self.callbacks:
            if is_overridden(cb, Callback, "teardown"):
                cb.teardown(self, model, stage=fn)
        if model is not None and is_overridden(model, LightningModule, "teardown"):
            model.teardown(stage=fn)
        if model is not None:
            # Metrics made in `setup` differ from run to run: find them again next time (Lightning).
            model._metric_attributes = None

    @staticmethod
    def _zero_grad_at_stage_start(model: LightningModule) -> None:
        # Lightning clears gradients left from earlier work before every stage runs.
        model.zero_grad()

    def _call_hooks(self, name: str, *args: Any) -> None:
        hooks = self._hooks
        if hooks is not None and hooks.has(name):
            self.lightning_module.__dict__["_current_fx_name"] = name
            hooks.callbacks_then_module(name, self, *args)

    # ------------------------------------------------------------------ fit
    def _warn_if_max_epochs_defaulted(self) -> None:
        """Lightning's warning, at each fit, when no limit bounds it but the default 1000 epochs."""
        from ferrotrain.callbacks.timer import Timer
        from ferrotrain.utilities.warnings import PossibleUserWarning

        c = self._config
        if c.max_epochs_unset and not c.fast_dev_run and c.max_epochs == 1000 and c.max_steps == -1 \
                and not any(isinstance(cb, Timer) for cb in self.callbacks):
            rank_zero_warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, "
                           "set `max_epochs=-1`.", category=PossibleUserWarning)

    def _fit_impl(self, model: LightningModule, train_dataloaders: Any, val_dataloaders: Any,
                  datamodule: Optional[LightningDataModule], ckpt_path: Optional[str]) -> None:
        from ferrotrain.loops.fit import FitLoop
        from ferrotrain.trainer import checkpointing

        self._fit_sources = (train_dataloaders, val_dataloaders)
        self._warn_if_max_epochs_defaulted()
        self._epoch_limits_resolved = True  # `max_epochs`/`min_epochs` now report the fit's values
        self._train_loader = None
        self._first_epoch_iterator = None
        # Known before the `setup` hooks, as in Lightning, whose data is attached before them.
        self._note_val_source(val_dataloaders, datamodule, model)
        self._setup_run(model, datamodule, "fit")
        if self._sync_batchnorm:
            self._convert_sync_batchnorm(model)
        self._resume_ckpt = None
        ckpt_path = checkpointing.fit_ckpt_path(self, ckpt_path)
        restore_early = ckpt_path is not None and not self._strategy.restore_checkpoint_after_setup
        if restore_early:
            # Module and callback state first: Lightning restores them before configure_optimizers.
            checkpointing.restore_modules_for_fit(self, ckpt_path, self._ckpt_weights_only)
        self._strategy.wrap_model(model)
        self._configure_optimizers(model)
        self._strategy.setup_optimizers(self, model)
        if ckpt_path is not None and not restore_early:
            checkpointing.restore_modules_for_fit(self, ckpt_path, self._ckpt_weights_only)
        # The validation loaders are requested when validation first runs (Lightning).
        val_reload.defer(self, model, val_dataloaders)
        _require_train_source(model, datamodule, train_dataloaders)
        self._new_schedule(has_validation=self._has_validation, automatic=model.automatic_optimization)
        if not model.automatic_optimization and self.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                "Automatic gradient accumulation is not supported for manual optimization: remove "
                f"`Trainer(accumulate_grad_batches={self.accumulate_grad_batches})` or accumulate in `training_step`"
            )
        self._train_results = Results(training=True)
        self._val_results = Results(training=False)
        self.profiler.setup("fit", 0, self.log_dir)
        self._fit_loop = FitLoop(self)
        self._call_hooks("on_fit_start")
        self._log_hyperparams()
        # Optimizer, scheduler and loop state after `on_fit_start`, where callbacks such as
        # BackboneFinetuning rebuild the param groups those states belong to (Lightning's order).
        checkpointing.restore_training_for_fit(self)
        from ferrotrain.trainer.preemption import Preemption

        # Signal handlers from here to the fit's end (Lightning registers them after the restore
        # too); the user's own come back in `_teardown`, however the fit ends.
        self._preemption = Preemption(self).install()
        self._zero_grad_at_stage_start(model)
        self._run_sanity_check()
        # The training loader is asked for after the sanity check, as in Lightning.
        if self._train_loader is None:  # else `estimated_stepping_batches` set it up already
            self._setup_train_data(model, datamodule, train_dataloaders)
        self._configure_val_check()
        self.state.stage = RunningStage.TRAINING
        from ferrotrain.trainer.anomaly import autograd_context

        with autograd_context(self._config.detect_anomaly):
            self._fit_loop.run()
        self._call_hooks("on_fit_end")
        self.profiler.describe()
        checkpointing.wait_for_writes(self)
        for lg in self.loggers:
            lg.finalize("success")
        self._finish_run("fit")

    def _configure_optimizers(self, model: LightningModule) -> None:
        model.__dict__["_current_fx_name"] = "configure_optimizers"
        out = model.configure_optimizers()
        steps_itself = is_overridden(model, LightningModule, "lr_scheduler_step")
        self.optimizers, self.lr_scheduler_configs = parse_configure_optimizers(
            out, model.automatic_optimization, steps_itself)
        if model.automatic_optimization and len(self.optimizers) > 1:
            raise RuntimeError(
                "Training with multiple optimizers is only supported with manual optimization. Set "
                "`self.automatic_optimization = False`, then access your optimizers in `training_step` with "
                "`opt1, opt2, ... = self.optimizers()`."
            )
        model.__dict__["_current_fx_name"] = None

    def strategy_optimizers(self, use_pl_optimizer: bool) -> List[Any]:
        if not use_pl_optimizer:
            return list(self.optimizers)
        if not self._lightning_optimizers or [o.optimizer for o in self._lightning_optimizers] != self.optimizers:
            self._lightning_optimizers = [LightningOptimizer(o, self) for o in self.optimizers]
        return list(self._lightning_optimizers)

    def _setup_train_data(self, model: LightningModule, datamodule: Optional[LightningDataModule], given: Any) -> None:
        loader = resolve_loaders("train", given, datamodule, model)
        if loader is None:
            raise MisconfigurationException(
                "No training data: pass `train_dataloaders` to `fit`, a `datamodule` with `train_dataloader()`, "
                "or implement `train_dataloader()` on the LightningModule"
            )
        if isinstance(loader, (list, tuple, dict)) and loader and not hasattr(loader, "dataset"):
            if isinstance(loader, dict) or all(hasattr(l, "__iter__") and not _is_batch_like(l) for l in loader):
                from ferrotrain.utilities.combined_loader import CombinedLoader

                loader = CombinedLoader(loader, "max_size_cycle")
        else:
            _check_iterable(loader, "train_dataloaders")
        if getattr(loader, "mode", None) == "sequential" and hasattr(loader, "flattened"):
            # One loader after the other is an evaluation mode: training steps see one batch of each.
            raise ValueError(
                '`FitLoop` does not support the `CombinedLoader(mode="sequential")` mode. The available modes are: '
                "['max_size_cycle', 'max_size', 'min_size']"
            )
        if self._config.overfit_batches > 0:
            (loader,) = sequential_for_overfit([loader], "train")
        self._train_loader = self._prepare_loader(loader, "train")
        self._count_train_batches()

    def _count_train_batches(self) -> None:
        c = self._config
        # `overfit_batches` decides the training and validation batches, even with fast_dev_run.
        limit = c.fast_dev_run if c.fast_dev_run and not c.overfit_batches else c.limit_train_batches
        self.num_training_batches = limited_batches(self._train_loader, limit, "limit_train_batches")
        if self.num_training_batches == 0:
            rank_zero_info("`Trainer.fit` stopped: No training batches.")
        n, every = self.num_training_batches, self.log_every_n_steps
        if self.loggers and n < every and not c.fast_dev_run:
            from ferrotrain.utilities.warnings import PossibleUserWarning

            # Lightning's note: no step of the epoch reaches the logging interval.
            rank_zero_warn(
                f"The number of training batches ({n}) is smaller than the logging interval "
                f"Trainer(log_every_n_steps={every}). Set a lower value for log_every_n_steps if you want to see "
                "logs for the training epoch.", category=PossibleUserWarning)

    def _prepare_loader(self, loader: Any, stage: str) -> Any:
        """The strategy's view of a loader (a DistributedSampler in front of it with DDP)."""
        if not self._use_distributed_sampler or self._strategy.world_size <= 1:
            return loader
        return self._strategy.process_dataloader(loader, stage)

    def _train_dataloader_for_epoch(self) -> Any:
        every = self._config.reload_dataloaders_every_n_epochs
        if every and self.current_epoch > 0 and self.current_epoch % every == 0:
            given = self._fit_sources[0]
            if given is None:
                self._setup_train_data(self.lightning_module, self.datamodule, None)
        return self._train_loader

    def _make_train_fetcher(self, loader: Any, n: Union[int, float]) -> Any:
        """Batches come from the main thread or the native prefetcher (see `fetching`). With
        `deterministic=True` they are always read in the main thread, so random draws inside a
        dataset interleave with the step's exactly as in a hand-written loop."""
        from ferrotrain.loops.fetch import TrainFetcher

        if self._first_epoch_iterator is not None:  # started by the learning rate finder
            from ferrotrain.tuner._trial import take_first_epoch_iterator

            loader = take_first_epoch_iterator(self, loader)
        depth = 0 if self._config.deterministic else self.prefetch_batches
        if self._device.type == "cuda":  # pinned memory, copies one batch ahead (`device_feed`)
            from ferrotrain.trainer import device_feed

            return device_feed.train_fetcher(self, loader, lambda l: TrainFetcher(l, n, depth), self._train_feeds_ahead())
        return TrainFetcher(loader, n, depth)

    def _train_feeds_ahead(self) -> bool:
        """Whether training batches reach the device through `device_feed`'s copy-ahead: on CUDA,
        when no transfer hook is overridden (those run in Lightning's order, before each step) and
        not `deterministic` (reading ahead would reorder random draws against the step's)."""
        t = self._hooks.transfer if self._hooks else {}
        return (self._device.type == "cuda" and not self._config.deterministic
                and all(v is None for v in t.values()))

    def _note_val_source(self, given: Any, datamodule: Optional[LightningDataModule], model: LightningModule) -> None:
        """Record whether the running call has validation data (Lightning's `_DataLoaderSource.is_defined`
        for the validation loop: loaders passed, or a `val_dataloader` hook)."""
        self._val_source_defined = given is not None or any(
            src is not None and is_overridden(src, base, "val_dataloader")
            for src, base in ((datamodule, LightningDataModule), (model, LightningModule))
        )

    def _setup_val_data(self, model: LightningModule, datamodule: Optional[LightningDataModule], given: Any,
                        for_fit: bool) -> None:
        self._note_val_source(given, datamodule, model)
        has_step = is_overridden(model, LightningModule, "validation_step")
        loaders = None
        if has_step and (self._config.limit_val_batches != 0):
            loaders = resolve_loaders("val", given, datamodule, model)
        if loaders is None:
            self._val_loaders, self.num_val_batches = [], []
        else:
            loaders = as_loader_list(loaders, "val_dataloaders")
            c = self._config
            if for_fit and c.overfit_batches > 0:
                loaders = sequential_for_overfit(loaders, "val")
            self._val_loaders = [self._prepare_loader(l, "val") for l in loaders]
            limit = c.fast_dev_run if c.fast_dev_run and not c.overfit_batches else c.limit_val_batches
            self.num_val_batches = [limited_batches(l, limit, "limit_val_batches") for l in self._val_loaders]
        self._has_validation = bool(self._val_loaders) and sum(self.num_val_batches) > 0

    def _configure_val_check(self) -> None:
        """Lightning's `val_check_batch`: validate every N batches, or at the epoch's end."""
        interval = self._config.val_check_interval
        n = self.num_training_batches
        if isinstance(interval, int):
            validation_off = self._config.limit_val_batches == 0  # nothing to check: no error (Lightning)
            if n != INF and interval > n and self._config.check_val_every_n_epoch is not None and not validation_off:
                raise MisconfigurationException(
                    f"`val_check_interval` ({interval}) must be less than or equal to the number of the training "
                    f"batches ({n}). If you want to disable validation set `limit_val_batches` to 0.0 instead. If you "
                    "want to validate based on the total training batches, set `check_val_every_n_epoch=None`."
                )
            every: Optional[int] = interval
        elif n == INF:
            if interval != 1.0:
                raise MisconfigurationException(
                    "When the training loader has no length, `Trainer(val_check_interval)` must be `1.0` or an int, "
                    f"got {interval!r}"
                )
            every = None
        else:
            every = max(1, int(n * interval))
        self._val_check_batch = INF if every is None else every
        self._schedule.set_val_check_batch(every, self._has_validation)

    def _run_sanity_check(self) -> None:
        steps = self._config.num_sanity_val_steps
        if self._config.fast_dev_run or steps == 0 or not self._has_validation:
            self.num_sanity_val_batches = []
            return
        from ferrotrain.loops.evaluation import run_evaluation

        # Lightning runs the sanity check inside `isolate_rng`: each evaluation loader's iterator
        # draws a seed from torch's global generator, which would shift training's shuffle.
        with isolate_rng():
            self.state.stage = RunningStage.SANITY_CHECKING
            self._call_hooks("on_sanity_check_start")
            if val_reload.due(self):
                val_reload.request(self, sanity=True)
            limit = INF if steps == -1 else steps
            self.num_sanity_val_batches = [min(limit, n) for n in self.num_val_batches]
            results = Results(training=False)
            run_evaluation(self, "validation", self._val_loaders, self.num_sanity_val_batches, results)
            self.state.stage = RunningStage.SANITY_CHECKING
            self._call_hooks("on_sanity_check_end")
        self._callback_metrics.clear()
        self._logged_metrics.clear()
        self._progress_bar_metrics.clear()

    def _run_validation_in_fit(self, log_step: int, stepped: bool) -> None:
        from ferrotrain.loops.evaluation import run_evaluation

        module = self.lightning_module
        if stepped:
            if self._hooks.overridden["on_validation_model_zero_grad"]:
                module.on_validation_model_zero_grad()
            else:
                module.zero_grad(set_to_none=True)
        self._eval_log_step = log_step
        self.state.stage = RunningStage.VALIDATING
        if val_reload.due(self):
            val_reload.request(self, sanity=False)
        run_evaluation(self, "validation", self._val_loaders, self.num_val_batches, self._val_results)
        self.state.stage = RunningStage.TRAINING
        self._active_results = self._train_results
        module._results = self._train_results

    # ------------------------------------------------------------------ validate / test / predict
    def _evaluate_impl(self, stage_fn: str, model: LightningModule, dataloaders: Any,
                       datamodule: Optional[LightningDataModule], ckpt_path: Optional[str],
                       verbose: bool) -> List[Dict[str, float]]:
        from ferrotrain.trainer import checkpointing
        from ferrotrain.loops.evaluation import run_evaluation

        stage = "validation" if stage_fn == "validate" else "test"
        prefix = "val" if stage_fn == "validate" else "test"
        step_name = f"{stage}_step"
        setup_stage = "validate" if stage_fn == "validate" else "test"
        self._setup_run(model, datamodule, setup_stage)
        self._strategy.prepare_for_evaluation(model)
        if ckpt_path is not None:
            checkpointing.restore_weights(self, ckpt_path, self._ckpt_weights_only)
        self._log_hyperparams()
        if not is_overridden(model, LightningModule, step_name):
            raise MisconfigurationException(f"No `{step_name}()` method defined to run `Trainer.{stage_fn}`")
        self._zero_grad_at_stage_start(model)
        self._note_val_source(dataloaders if prefix == "val" else None, datamodule, model)
        c = self._config
        limit = c.fast_dev_run if c.fast_dev_run else (c.limit_val_batches if prefix == "val" else c.limit_test_batches)
        if limit == 0:
            # Lightning neither requests the loader nor runs a hook of the loop when limited to 0.
            self._finish_run(setup_stage)
            return []
        loaders = resolve_loaders(prefix, dataloaders, datamodule, model)
        if loaders is None:
            raise MisconfigurationException(
                f"No {prefix} data: pass `dataloaders` to `{stage_fn}`, a `datamodule` with `{prefix}_dataloader()`, "
                f"or implement `{prefix}_dataloader()` on the LightningModule"
            )
        loaders = [self._prepare_loader(l, prefix) for l in as_loader_list(loaders, "dataloaders")]
        counts = [limited_batches(l, limit, f"limit_{prefix}_batches") for l in loaders]
        reported = reported_batch_counts(loaders, counts, limit, f"limit_{prefix}_batches")
        if prefix == "val":
            self.num_val_batches = reported
            self._val_loaders = loaders
        else:
            self.num_test_batches = reported
            self._eval_loaders["test"] = loaders
        results = Results(training=False)
        self.state.stage = RunningStage.VALIDATING if prefix == "val" else RunningStage.TESTING
        metrics = run_evaluation(self, stage, loaders, counts, results)
        for lg in self.loggers:
            lg.finalize("success")
        if verbose:
            _print_results(metrics, stage_fn)
        self._finish_run(setup_stage)
        return metrics

    def _predict_impl(self, model: LightningModule, dataloaders: Any, datamodule: Optional[LightningDataModule],
                      return_predictions: bool, ckpt_path: Optional[str]) -> Optional[List[Any]]:
        from ferrotrain.trainer import checkpointing
        from ferrotrain.loops.predict import run_predict

        self._setup_run(model, datamodule, "predict")
        self._strategy.prepare_for_evaluation(model)
        if ckpt_path is not None:
            checkpointing.restore_weights(self, ckpt_path, self._ckpt_weights_only)
        self._log_hyperparams()
        self._zero_grad_at_stage_start(model)
        loaders = resolve_loaders("predict", dataloaders, datamodule, model)
        if loaders is None:
            raise MisconfigurationException(
                "No predict data: pass `dataloaders` to `predict`, a `datamodule` with `predict_dataloader()`, "
                "or implement `predict_dataloader()` on the LightningModule"
            )
        # With several processes each predicts its own part of the data (rank-local results).
        loaders = [self._prepare_loader(l, "predict") for l in as_loader_list(loaders, "dataloaders")]
        from ferrotrain.callbacks.prediction_writer import BasePredictionWriter

        if any(isinstance(cb, BasePredictionWriter) for cb in self.callbacks):
            # A prediction writer reads each batch's sample indices: record them (Lightning).
            from ferrotrain.loops.predict import with_index_tracking

            loaders = [with_index_tracking(l) for l in loaders]
        self._eval_loaders["predict"] = loaders
        self._note_val_source(None, datamodule, model)
        c = self._config
        limit = c.fast_dev_run if c.fast_dev_run else c.limit_predict_batches
        self.num_predict_batches = [limited_batches(l, limit, "limit_predict_batches") for l in loaders]
        self.state.stage = RunningStage.PREDICTING
        out = run_predict(self, loaders, self.num_predict_batches, return_predictions)
        self._finish_run("predict")
        return out

    # ------------------------------------------------------------------ batches and devices
    def _needs_transfer(self) -> bool:
        t = self._hooks.transfer if self._hooks else {}
        return (any(v is not None for v in t.values()) or self._device.type != "cpu"
                or self._precision.convert_input is not None)

    def _transfer_batch(self, batch: Any, dataloader_idx: int) -> Any:
        t = self._hooks.transfer
        module = self.lightning_module
        convert = self._precision.convert_input
        if convert is not None:  # "64-true", "16-true", "bf16-true": Lightning casts first
            batch = convert(batch)
        f = t["on_before_batch_transfer"]
        if f is not None:
            module.__dict__["_current_fx_name"] = "on_before_batch_transfer"
            batch = f(batch, dataloader_idx)
        f = t["transfer_batch_to_device"]
        if f is not None:
            module.__dict__["_current_fx_name"] = "transfer_batch_to_device"
            batch = f(batch, self._device, dataloader_idx)
        elif self._device.type != "cpu":
            batch = move_data_to_device(batch, self._device)
        f = t["on_after_batch_transfer"]
        if f is not None:
            module.__dict__["_current_fx_name"] = "on_after_batch_transfer"
            batch = f(batch, dataloader_idx)
        return batch

    # ------------------------------------------------------------------ manual optimization support
    def _step_optimizer(self, optimizer: Any, closure: Any, kwargs: Dict[str, Any]) -> Any:
        fit_loop = self._fit_loop
        step = getattr(fit_loop, "step", None)
        after = getattr(step, "after_closure", None)
        if after is None:
            after = lambda: self._before_optimizer_step_hooks(optimizer)  # noqa: E731
        if closure is None:
            closure = _do_nothing
        automatic = self.lightning_module.automatic_optimization
        return self._precision.optimizer_step(optimizer, closure, after, automatic, **kwargs)

    def _before_optimizer_step_hooks(self, optimizer: Any) -> None:
        hooks = self._hooks
        module = self.lightning_module
        if hooks is None:
            return
        module.__dict__["_current_fx_name"] = "on_before_optimizer_step"
        for f in hooks.cb["on_before_optimizer_step"]:
            f(self, module, optimizer)
        m = hooks.mod["on_before_optimizer_step"]
        if m is not None:
            m(optimizer)

    def _count_manual_step(self) -> None:
        module = self.lightning_module
        if module is not None and not module.automatic_optimization:
            self._schedule.count_optimizer_step()

    def _run_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """What `Strategy.backward` runs: hooks around the (scaled) backward."""
        hooks = self._hooks
        module = self.lightning_module
        module.__dict__["_current_fx_name"] = "on_before_backward"
        for f in hooks.cb["on_before_backward"]:
            f(self, module, loss)
        if hooks.mod["on_before_backward"] is not None:
            hooks.mod["on_before_backward"](loss)
        scaled = self._precision.backward_loss(loss)
        if hooks.overridden["backward"]:
            module.backward(scaled, *args, **kwargs)
        else:
            scaled.backward(*args, **kwargs)
        module.__dict__["_current_fx_name"] = "on_after_backward"
        for f in hooks.cb["on_after_backward"]:
            f(self, module)
        if hooks.mod["on_after_backward"] is not None:
            hooks.mod["on_after_backward"]()
        module.__dict__["_current_fx_name"] = "training_step"

    def _all_gather(self, data: Any, group: Any, sync_grads: bool) -> Any:
        return self._strategy.all_gather(data, group, sync_grads)

    # ------------------------------------------------------------------ metrics to loggers
    # The loops hand their metrics here; the views that read them (`callback_metrics`, ...) are in `views`.
    def _log_to_loggers(self, metrics: Dict[str, float], step: int) -> None:
        if not metrics:
            return
        self._logged_metrics.update(_as_tensors(metrics))
        loggers = self.loggers
        if not loggers:
            return
        metrics = dict(metrics)
        metrics.setdefault("epoch", self.current_epoch)
        for lg in loggers:
            lg.log_metrics(metrics=metrics, step=step)
            lg.save()

    def _log_step_metrics(self, results: Results, step: int) -> None:
        log, bar, cb = results.step_metrics()
        self._log_to_loggers(log, step)

    def _log_epoch_metrics(self, results: Results, step: int) -> None:
        # The latest step values stay visible after the epoch, as in Lightning.
        s_log, s_bar, s_cb = results.step_metrics()
        self._callback_metrics.update(_as_tensors(s_cb))
        self._progress_bar_metrics.update(s_bar)
        self._logged_metrics.update(_as_tensors(s_log))
        log, bar, cb = results.epoch_metrics()
        self._callback_metrics.update(_as_tensors(cb))
        self._progress_bar_metrics.update(bar)
        self._log_to_loggers(log, step)

    def _on_eval_epoch_end(self, stage: str, results: Results) -> None:
        if self.sanity_checking:
            return
        log, bar, cb = results.epoch_metrics()
        self._callback_metrics.update(_as_tensors(cb))
        self._progress_bar_metrics.update(bar)
        step = self._eval_log_step if self.state.fn == TrainerFn.FITTING else self._schedule.batches_that_stepped
        self._log_to_loggers(log, step)

    # ------------------------------------------------------------------ hyperparameters and checkpoints
    def _log_hyperparams(self) -> None:
        """Lightning's `_log_hyperparams`, at the start of every run: the module's and the
        datamodule's initial hyperparameters (a key both save with different values is an error),
        the graph, then `save()`; off with `enable_autolog_hparams=False`."""
        if not self.enable_autolog_hparams or not self.loggers:
            return
        model = self.lightning_module
        dm = self.datamodule
        from_model = model is not None and model._log_hyperparams
        from_dm = dm is not None and getattr(dm, "_log_hyperparams", False)
        hp: Optional[Dict[str, Any]] = None
        if from_model and from_dm:
            mine, theirs = model.hparams_initial, dm.hparams_initial
            clash = [k for k in mine.keys() & theirs.keys() if k != "_class_path" and (
                type(mine[k]) is not type(theirs[k])
                or (isinstance(mine[k], torch.Tensor) and mine[k] is not theirs[k])
                or (not isinstance(mine[k], torch.Tensor) and mine[k] != theirs[k]))]
            if clash:
                raise RuntimeError(
                    f"Error while merging hparams: the keys {clash} are present in both the LightningModule's "
                    "and LightningDataModule's hparams but have different values."
                )
            hp = {**mine, **theirs}
        elif from_model:
            hp = dict(model.hparams_initial)
        elif from_dm:
            hp = dict(dm.hparams_initial)
        if hp is not None:
            hp.pop("_class_path", None)
        for lg in self.loggers:
            if hp is not None:
                lg.log_hyperparams(hp)
            lg.log_graph(model)
            lg.save()

    def save_checkpoint(self, filepath: Union[str, os.PathLike], weights_only: bool = False,
                        storage_options: Optional[Any] = None) -> None:
        from ferrotrain.trainer import checkpointing

        if self.lightning_module is None:
            raise NoModelAttachedError(
                "Saving a checkpoint is only possible if a model is attached to the Trainer. `Trainer.save_checkpoint()` "
                "needs a model: call `fit`, `validate`, `test` or `predict` first"
            )
        # ModelCheckpoint's saves (flagged by it for this one call) go to the background writer;
        # any other call returns once the file is durable.
        # (ModelCheckpoint clears its flag by deleting it, hence the default.)
        sync = not self.__dict__.get("_checkpoint_async", False)
        self._checkpoint_async = False
        checkpointing.save(self, os.fspath(filepath), weights_only, sync=sync)


# ---------------------------------------------------------------------- helpers
def _require_train_source(model: LightningModule, datamodule: Optional[LightningDataModule], given: Any) -> None:
    """Fail before anything runs when no training data can come from anywhere."""
    if given is not None:
        return
    if datamodule is not None and is_overridden(datamodule, LightningDataModule, "train_dataloader"):
        return
    if is_overridden(model, LightningModule, "train_dataloader"):
        return
    raise MisconfigurationException(
        "No training data: pass `train_dataloaders` to `fit`, a `datamodule` with `train_dataloader()`, "
        "or implement `train_dataloader()` on the LightningModule"
    )


def _do_nothing() -> None:
    return None


def _is_batch_like(obj: Any) -> bool:
    """A batch rather than a loader: a tensor, or a tuple/list/dict whose items are batches.
    A list of such batches is one training source; a list of loaders is several."""
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return bool(obj) and all(_is_batch_like(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return bool(obj) and all(_is_batch_like(v) for v in obj)
    return False


def _checkpoints_last(callbacks: List[Callback]) -> List[Callback]:
    from ferrotrain.callbacks.checkpoint import Checkpoint

    return [c for c in callbacks if not isinstance(c, Checkpoint)] + [c for c in callbacks if isinstance(c, Checkpoint)]


def _print_results(metrics: List[Dict[str, float]], stage_fn: str) -> None:
    if not metrics or not any(metrics):
        return
    title = "Validate metric" if stage_fn == "validate" else "Test metric"
    names = sorted({k for d in metrics for k in d})
    cols = [f"DataLoader {i}" for i in range(len(metrics))]
    w0 = max(len(title), *(len(n) for n in names)) + 2
    wc = 20
    line = "─" * (w0 + wc * len(cols))
    out = [line, title.center(w0) + "".join(c.center(wc) for c in cols), line]
    for n in names:
        out.append(n.center(w0) + "".join((f"{d[n]:.6g}" if n in d else "").center(wc) for d in metrics))
    out.append(line)
    print("\n".join(out))
