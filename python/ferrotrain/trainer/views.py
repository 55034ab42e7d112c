"""`TrainerViews`: the attributes user code reads on a Trainer (`trainer.global_step`,
`trainer.loggers`, `trainer.callback_metrics`, ...), the few it may set, and Lightning's small
helpers `print` and `init_module`. Each is a view onto state the Trainer holds: its resolved
config, strategy, schedule, run state, callbacks and metric caches.

A mixin with no state of its own (nothing here to pickle; see `Trainer.__getstate__`) that starts
nothing: the run, and the metric logging that fills the caches, are in `trainer`. A few views
create what they show on first read: the default logger, the predict loop's state, and the
training loader `estimated_stepping_batches` needs."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

from ferrotrain.callbacks.callback import is_overridden
from ferrotrain.core.module import LightningModule
from ferrotrain.trainer import config as cfg
from ferrotrain.trainer.data import INF
from ferrotrain.trainer.precision import Precision
from ferrotrain.trainer.states import RunningStage, TrainerFn, TrainerStatus


class TrainerViews:
    """Lightning's views on the Trainer, reading what `Trainer.__init__` and the run set; `Trainer` inherits them."""

    # ------------------------------------------------------------------ simple attributes
    @property
    def max_epochs(self) -> Optional[int]:
        """None while left to its default and no fit has resolved it (1000, or -1 when
        `max_steps`/`max_time` bound the fit), as Lightning reports it."""
        c = self._config
        if c.max_epochs_unset and not self._epoch_limits_resolved:
            return None
        return c.max_epochs

    @property
    def min_epochs(self) -> Optional[int]:
        """None while left to its default and no fit has resolved it (0, or 1 with `min_steps`)."""
        c = self._config
        if c.min_epochs_unset and not self._epoch_limits_resolved:
            return None
        return c.min_epochs

    @property
    def max_steps(self) -> int:
        return self._config.max_steps

    @property
    def min_steps(self) -> Optional[int]:
        """None when not set (Lightning's default); the fit then has no step minimum."""
        c = self._config
        return None if c.min_steps_unset else c.min_steps

    @property
    def accumulate_grad_batches(self) -> int:
        return getattr(self, "_accumulate", self._config.accumulate_grad_batches)

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        self._accumulate = cfg.check_int("accumulate_grad_batches", value, 1)
        # The native schedule decides when to step and the step divides the loss: both follow
        # (GradientAccumulationScheduler sets this at each epoch's start).
        if self._schedule is not None:
            self._schedule.accumulate_grad_batches = self._accumulate
        step = getattr(self._fit_loop, "step", None)
        if hasattr(step, "accumulate"):
            step.accumulate = self._accumulate

    @property
    def prefetch_batches(self) -> int:
        """How many training batches the background prefetcher keeps ready (default 2; 0 reads
        every batch in the main thread). A ferrotrain extension, set as an attribute so that the
        constructor keeps Lightning's signature; a change applies from the next epoch."""
        return self._prefetch_batches

    @prefetch_batches.setter
    def prefetch_batches(self, value: int) -> None:
        from ferrotrain.loops.fetch import check_depth

        self._prefetch_batches = check_depth(value)

    @property
    def gradient_clip_val(self) -> Optional[float]:
        return self._config.gradient_clip_val

    @property
    def gradient_clip_algorithm(self) -> str:
        return self._config.gradient_clip_algorithm

    @property
    def val_check_interval(self) -> Union[int, float]:
        return self._config.val_check_interval

    @property
    def check_val_every_n_epoch(self) -> Optional[int]:
        return self._config.check_val_every_n_epoch

    @property
    def num_sanity_val_steps(self) -> Union[int, float]:
        steps = self._config.num_sanity_val_steps
        return INF if steps == -1 else steps

    @property
    def log_every_n_steps(self) -> int:
        return self._config.log_every_n_steps

    @property
    def precision(self) -> str:
        return self._config.precision

    @property
    def precision_plugin(self) -> Precision:
        """Lightning's `trainer.precision_plugin`: `.scaler` is the GradScaler under "16-mixed"."""
        return self._precision

    @property
    def default_root_dir(self) -> str:
        return self._config.default_root_dir

    @property
    def fast_dev_run(self) -> Union[int, bool]:
        n = self._config.fast_dev_run
        return True if n == 1 else (False if n == 0 else n)  # Lightning reports 1 as True

    @property
    def limit_train_batches(self) -> Union[int, float]:
        return self._config.limit_train_batches

    @property
    def limit_val_batches(self) -> Union[int, float]:
        return self._config.limit_val_batches

    @property
    def limit_test_batches(self) -> Union[int, float]:
        return self._config.limit_test_batches

    @property
    def limit_predict_batches(self) -> Union[int, float]:
        return self._config.limit_predict_batches

    @property
    def device_ids(self) -> List[int]:
        return [d.index or 0 for d in self._strategy.parallel_devices] or [self._device.index or 0]

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def num_nodes(self) -> int:
        return self._strategy.num_nodes

    @property
    def strategy(self) -> Any:
        return self._strategy

    @property
    def accelerator(self) -> str:
        return self.accelerator_name

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    @property
    def model(self) -> Optional[torch.nn.Module]:
        """The module being run: the DDP wrapper while fitting with DDP, else the LightningModule."""
        return self._strategy.model

    @property
    def global_step(self) -> int:
        return self._schedule.global_step

    @property
    def current_epoch(self) -> int:
        return self._schedule.current_epoch

    @property
    def should_stop(self) -> bool:
        return self._schedule.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._schedule.should_stop = bool(value)

    @property
    def _loop_profiler(self) -> Any:
        """The profiler that times the loop's phases, or None (profiling off: nothing is wrapped)."""
        return self.profiler if self.profiler._times_loop else None

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    @property
    def training(self) -> bool:
        return self.state.stage == RunningStage.TRAINING

    @training.setter
    def training(self, value: bool) -> None:
        if value:
            self.state.stage = RunningStage.TRAINING

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == RunningStage.SANITY_CHECKING

    @property
    def validating(self) -> bool:
        return self.state.stage == RunningStage.VALIDATING

    @property
    def testing(self) -> bool:
        return self.state.stage == RunningStage.TESTING

    @property
    def predicting(self) -> bool:
        return self.state.stage == RunningStage.PREDICTING

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def estimated_stepping_batches(self) -> Union[int, float]:
        """Optimizer steps the fit will take, as Lightning estimates it."""
        if (self._train_loader is None and self.lightning_module is not None and self.state.fn == TrainerFn.FITTING
                and self.max_epochs != -1):
            # Read in `configure_optimizers`, before the loaders: set up the train loader now (Lightning).
            self._setup_train_data(self.lightning_module, self.datamodule, self._fit_sources[0])
        n = self.num_training_batches
        est = self._schedule.estimated_stepping_batches(None if n == INF else int(n))
        return INF if est is None else est

    # ------------------------------------------------------------------ loggers
    @property
    def loggers(self) -> List[Any]:
        if self._loggers is None:
            self._loggers = [_default_logger(self.default_root_dir)]
        return self._loggers

    @loggers.setter
    def loggers(self, loggers: Optional[List[Any]]) -> None:
        self._loggers = list(loggers) if loggers else []

    @property
    def logger(self) -> Any:
        loggers = self.loggers
        return loggers[0] if loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self._loggers = [] if logger is None else [logger]

    @property
    def log_dir(self) -> str:
        lg = self.logger
        if lg is not None:
            d = getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None)
            if d is not None:
                return str(d)
        return self.default_root_dir

    # ------------------------------------------------------------------ callbacks
    @property
    def progress_bar_callback(self) -> Any:
        from ferrotrain.callbacks import ProgressBar

        for cb in self.callbacks:
            if isinstance(cb, ProgressBar):
                return cb
        return None

    @property
    def checkpoint_callback(self) -> Any:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def checkpoint_callbacks(self) -> List[Any]:
        from ferrotrain.callbacks import ModelCheckpoint

        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def early_stopping_callback(self) -> Any:
        from ferrotrain.callbacks import EarlyStopping

        for cb in self.callbacks:
            if isinstance(cb, EarlyStopping):
                return cb
        return None

    @property
    def predict_loop(self) -> Any:
        """The predict loop's state (Lightning's `trainer.predict_loop`): `predictions`,
        `epoch_batch_indices`, `current_batch_indices`, `return_predictions`."""
        if self._predict_loop is None:
            from ferrotrain.loops.predict import PredictLoop

            self._predict_loop = PredictLoop()
        return self._predict_loop

    @property
    def train_dataloader(self) -> Any:
        """The training loader in use (with DDP, the one with the DistributedSampler)."""
        return self._train_loader

    @property
    def val_dataloaders(self) -> Any:
        loaders = self._val_loaders
        return loaders[0] if len(loaders) == 1 else (loaders or None)

    @property
    def ckpt_path(self) -> Optional[str]:
        return self._ckpt_path

    # ------------------------------------------------------------------ more of Lightning's views
    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch being run is the epoch's last (known only for sized loaders
        until the loader runs out, as Lightning's)."""
        return bool(self._schedule.is_last_batch)

    @property
    def early_stopping_callbacks(self) -> List[Any]:
        from ferrotrain.callbacks import EarlyStopping

        return [cb for cb in self.callbacks if isinstance(cb, EarlyStopping)]

    @property
    def overfit_batches(self) -> Union[int, float]:
        return self._config.overfit_batches

    @property
    def reload_dataloaders_every_n_epochs(self) -> int:
        return self._config.reload_dataloaders_every_n_epochs

    @property
    def barebones(self) -> bool:
        return self._config.barebones

    @property
    def enable_validation(self) -> bool:
        """Lightning's rule: validation data was given to (or is defined for) the last call, the
        module has a `validation_step`, and `limit_val_batches` is not 0."""
        module = self.lightning_module
        return (self._val_source_defined and module is not None
                and is_overridden(module, LightningModule, "validation_step")
                and self._config.limit_val_batches != 0)

    @property
    def val_check_batch(self) -> Union[int, float]:
        """Every how many training batches validation runs within an epoch (set when a fit starts)."""
        return self._val_check_batch

    @property
    def received_sigterm(self) -> bool:
        return False

    @property
    def scaler(self) -> Any:
        """The GradScaler of "16-mixed" precision, else None."""
        return getattr(self._precision, "scaler", None)

    @property
    def distributed_sampler_kwargs(self) -> Optional[Dict[str, Any]]:
        kwargs = getattr(self._strategy, "distributed_sampler_kwargs", None)
        return kwargs() if callable(kwargs) else kwargs

    @property
    def test_dataloaders(self) -> Any:
        loaders = self._eval_loaders.get("test", [])
        return loaders[0] if len(loaders) == 1 else (loaders or None)

    @property
    def predict_dataloaders(self) -> Any:
        loaders = self._eval_loaders.get("predict", [])
        return loaders[0] if len(loaders) == 1 else (loaders or None)

    @contextmanager
    def init_module(self, empty_init: Optional[bool] = None) -> Iterator[None]:
        """Create the model's tensors where and as the run needs them: on the strategy's device,
        in the "*-true" precision's dtype (Lightning's `Trainer.init_module`). `empty_init` is
        accepted for compatibility; the weights are always initialised."""
        with self._strategy.root_device, self._precision.init_context():
            yield

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print` from global rank zero only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    # ------------------------------------------------------------------ metrics views
    @property
    def callback_metrics(self) -> Dict[str, Any]:
        r = self._active_results
        if r is not None:
            self._callback_metrics.update(_as_tensors(r.callback_view()))
        return self._callback_metrics

    @property
    def logged_metrics(self) -> Dict[str, Any]:
        r = self._active_results
        if r is not None:
            self._logged_metrics.update(_as_tensors(r.log_view()))
        return self._logged_metrics

    @property
    def progress_bar_metrics(self) -> Dict[str, float]:
        r = self._active_results
        if r is not None:
            self._progress_bar_metrics.update(r.progress_bar_view())
        return self._progress_bar_metrics


def _as_tensors(metrics: Dict[str, float]) -> Dict[str, torch.Tensor]:
    # Lightning exposes callback/logged metrics as tensors.
    return {k: torch.tensor(v) for k, v in metrics.items()}


def _default_logger(root: str) -> Any:
    if importlib.util.find_spec("tensorboard") is not None:
        from ferrotrain.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=root)
    from ferrotrain.loggers import CSVLogger

    return CSVLogger(save_dir=root)
