"""The learning rate range test (Lightning's `lr_find`): train for `num_training` steps while a
scheduler raises the learning rate from `min_lr` to `max_lr`, record the smoothed loss at each
step, and suggest the rate where the loss falls fastest. `_LRFinder` holds the results and draws
them; `_lr_find` runs the test inside a fit and restores the model and Trainer afterwards."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Dict, List, Optional, Union

import torch
from torch.optim.lr_scheduler import LRScheduler

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.parsing import lightning_hasattr, lightning_setattr
from ferrotrain.utilities.rank_zero import rank_zero_warn

log = logging.getLogger(__name__)


def _determine_lr_attr_name(model: Any, attr_name: str = "") -> str:
    if attr_name:
        if not lightning_hasattr(model, attr_name):
            raise AttributeError(
                f"The attribute name for the learning rate was set to {attr_name}, but"
                " could not find this as a field in `model` or `model.hparams`."
            )
        return attr_name
    attr_options = ("lr", "learning_rate")
    for attr in attr_options:
        if lightning_hasattr(model, attr):
            return attr
    raise AttributeError(
        "When using the learning rate finder, either `model` or `model.hparams` should"
        f" have one of these fields: {attr_options}. If your model has a different name for the learning rate, set"
        " it with `.lr_find(attr_name=...)`."
    )


class _LRFinder:
    """The results of a learning rate range test: `results["lr"]` and `results["loss"]` (the
    smoothed loss after each step), with `suggestion()` and `plot()`."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        assert mode in ("linear", "exponential"), "mode should be either `linear` or `exponential`"
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: Dict[str, Any] = {}
        self._total_batch_idx = 0
        self._optimal_idx: Optional[int] = None

    def _exchange_scheduler(self, trainer: Any) -> None:
        """Start the user's optimizer at `lr_min`, driven by the range test's scheduler every step."""
        from ferrotrain.trainer.optimization import LRSchedulerConfig

        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise MisconfigurationException(
                f"`model.configure_optimizers()` returned {len(optimizers)}, but"
                " learning rate finder only works with single optimizer"
            )
        optimizer = optimizers[0]
        for group in optimizer.param_groups:
            group["lr"] = self.lr_min
            group["initial_lr"] = self.lr_min
        cls = _LinearLR if self.mode == "linear" else _ExponentialLR
        scheduler = cls(optimizer, self.lr_max, self.num_training)
        trainer.lr_scheduler_configs = [LRSchedulerConfig(scheduler, interval="step")]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """The loss against the learning rate (log scale in exponential mode); with `suggest`, the
        suggested point in red. Needs matplotlib."""
        if importlib.util.find_spec("matplotlib") is None:
            raise MisconfigurationException(
                "To use the `plot` method, you must have Matplotlib installed."
                " Install it by running `pip install -U matplotlib`."
            )
        import matplotlib.pyplot as plt

        lrs = self.results["lr"]
        losses = self.results["loss"]
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            self.suggestion()
            if self._optimal_idx:
                ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> Optional[float]:
        """The learning rate where the (finite) loss curve is steepest downwards, skipping
        `skip_begin` points at the start and `skip_end` at the end; None with fewer than 2 points."""
        losses = torch.tensor(self.results["loss"][skip_begin:-skip_end])
        lrs = torch.tensor(self.results["lr"][skip_begin:-skip_end])
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if len(losses) < 2:
            log.error(
                "Failed to compute suggestion for learning rate because there are not enough points. Increase the loop"
                " iteration limits or the size of your dataset/dataloader."
            )
            self._optimal_idx = None
            return None
        # Same computation as Lightning (torch.gradient over the lr spacing) for the same answer.
        gradients = torch.gradient(losses, spacing=[lrs])[0]
        steepest = torch.argmin(gradients).item()
        kept = torch.arange(len(self.results["loss"]))[skip_begin:-skip_end][finite]
        self._optimal_idx = int(kept[steepest].item())
        return self.results["lr"][self._optimal_idx]


def _lr_find(
    trainer: Any,
    model: Any,
    min_lr: float = 1e-8,
    max_lr: float = 1,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: Optional[float] = 4.0,
    update_attr: bool = False,
    attr_name: str = "",
) -> Optional[_LRFinder]:
    """Run the range test from inside a fit (`on_fit_start` or later) and put everything back."""
    from ferrotrain.tuner import _trial

    if trainer.fast_dev_run:
        rank_zero_warn("Skipping learning rate finder since `fast_dev_run` is enabled.")
        return None
    if update_attr:
        attr_name = _determine_lr_attr_name(model, attr_name)

    start_steps = trainer.global_step
    lr_finder = _LRFinder(mode, min_lr, max_lr, num_training)
    callback = _LRCallback(num_training, early_stop_threshold, progress_bar_refresh_rate=1)
    finished = False
    with _trial.restored_after(trainer, "lr_find"):
        _trial.begin_trials(trainer, [callback], max_steps=num_training + start_steps, limit_val_batches=num_training)
        lr_finder._exchange_scheduler(trainer)
        _trial.run_fit_loop(trainer, reload_data=False)
        if trainer.global_step != num_training + start_steps:
            log.info(f"LR finder stopped early after {trainer.global_step} steps due to diverging loss.")
        lr_finder.results.update({"lr": callback.lrs, "loss": callback.losses})
        lr_finder._total_batch_idx = dict(trainer._schedule.state_dict())["total_batches"] - 1
        lr_finder.results = trainer.strategy.broadcast(lr_finder.results)
        finished = True
    _trial.start_first_epoch_iterator(trainer)

    # Applied after the restore, so the suggestion survives it and the rest of the fit uses it.
    if update_attr and finished:
        lr = lr_finder.suggestion()
        if lr is not None:
            lightning_setattr(model, attr_name, lr)
            for opt in trainer.optimizers or []:
                for group in opt.param_groups:
                    group["lr"] = lr
            log.info(f"Learning rate set to {lr}")
    return lr_finder


class _LRCallback(Callback):
    """Records the learning rate before each optimizer step and the smoothed loss after it
    (exponential moving average with bias correction, `beta`), and stops the test once the loss
    exceeds `early_stop_threshold` times the best so far."""

    def __init__(self, num_training: int, early_stop_threshold: Optional[float] = 4.0,
                 progress_bar_refresh_rate: int = 0, beta: float = 0.98) -> None:
        self.num_training = num_training
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self.losses: List[float] = []
        self.lrs: List[float] = []
        self.avg_loss = 0.0
        self.best_loss = 0.0
        self.progress_bar_refresh_rate = progress_bar_refresh_rate
        self.progress_bar: Any = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        if self.progress_bar_refresh_rate and self.progress_bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # Lightning's bar needs tqdm, which ferrotrain does not require
                self.progress_bar = False
            else:
                self.progress_bar = tqdm(desc="Finding best initial lr", total=self.num_training)
        self.lrs.append(trainer.lr_scheduler_configs[0].scheduler.lr[0])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        if not outputs:
            # The step returned None: keep lrs and losses aligned; NaN is left out of the suggestion.
            self.losses.append(float("nan"))
            return
        if self.progress_bar:
            self.progress_bar.update()
        loss = outputs if isinstance(outputs, torch.Tensor) else outputs["loss"]
        current_loss = loss.item()
        current_step = trainer.global_step
        self.avg_loss = self.beta * self.avg_loss + (1 - self.beta) * current_loss
        smoothed = self.avg_loss / (1 - self.beta ** (current_step + 1))
        if (self.early_stop_threshold is not None and current_step > 1
                and smoothed > self.early_stop_threshold * self.best_loss):
            trainer.should_stop = True
            if self.progress_bar:
                self.progress_bar.close()
        trainer.should_stop = trainer.strategy.broadcast(trainer.should_stop)
        if smoothed < self.best_loss or current_step == 1:
            self.best_loss = smoothed
        self.losses.append(smoothed)


class _RangeLR(LRScheduler):
    """Raises the learning rate from the optimizer's to `end_lr` over `num_iter` steps; the
    subclasses say how (`_at`: the rate a fraction `r` of the way)."""

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, num_iter: int, last_epoch: int = -1) -> None:
        self.end_lr = end_lr
        self.num_iter = num_iter
        super().__init__(optimizer, last_epoch)

    def _at(self, base: float, r: float) -> float:
        raise NotImplementedError

    def get_lr(self) -> List[float]:
        r = (self.last_epoch + 1) / self.num_iter
        if self.last_epoch > 0:
            val = [self._at(base, r) for base in self.base_lrs]
        else:
            val = list(self.base_lrs)
        self._lr = val
        return val

    @property
    def lr(self) -> Union[float, List[float]]:
        return self._lr


class _LinearLR(_RangeLR):
    """Linearly, as Lightning's `_LinearLR`."""

    def _at(self, base: float, r: float) -> float:
        return base + r * (self.end_lr - base)


class _ExponentialLR(_RangeLR):
    """Geometrically, as Lightning's `_ExponentialLR`."""

    def _at(self, base: float, r: float) -> float:
        return base * (self.end_lr / base) ** r
