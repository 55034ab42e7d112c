"""`EarlyStopping`: stop `fit` when a monitored metric stops improving, reaches a threshold, diverges
or becomes non-finite (Lightning 2.x semantics). It reads `trainer.callback_metrics` once per check
(once per validation run or epoch), never per step, and only sets `trainer.should_stop`.
"""

from __future__ import annotations

import logging
import math
import operator
from enum import Enum
from typing import Any, Callable, Dict, Optional, Tuple

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.rank_zero import rank_zero_warn

log = logging.getLogger(__name__)


class EarlyStoppingReason(Enum):
    """Why training was stopped."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


def _as_float(value: Any) -> float:
    # A one-element tensor or numpy value, or a plain number.
    return float(value.item()) if hasattr(value, "item") else float(value)


class EarlyStopping(Callback):
    """Monitor a metric and stop training when it stops improving.

    Args:
        monitor: the metric name in `trainer.callback_metrics`.
        min_delta: an improvement of `min_delta` or less counts as no improvement.
        patience: number of checks without improvement before stopping (a check is each validation
            run, or each training epoch with `check_on_train_epoch_end`).
        verbose: log each decision.
        mode: `"min"` (stop when it stops decreasing) or `"max"`.
        strict: raise when the metric is missing (otherwise skip the check).
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_on_train_epoch_end: check at the end of each training epoch instead of after each
            validation run. By default: at epoch end when validation runs once per epoch (its metrics
            are then already there) or when there is no validation at all; after validation otherwise.
        log_rank_zero_only: log the decisions on global rank 0 only.

    Attributes:
        wait_count, stopped_epoch, best_score, stopping_reason, stopping_reason_message.
    """

    mode_dict: Dict[str, Callable[[float, float], bool]] = {"min": operator.lt, "max": operator.gt}
    order_dict = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: Optional[float] = None,
        divergence_threshold: Optional[float] = None,
        check_on_train_epoch_end: Optional[bool] = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__()
        if mode not in self.mode_dict:
            raise MisconfigurationException(
                f"`mode` can be {', '.join(self.mode_dict)}, got {mode} (`EarlyStopping(mode=...)` must be one of "
                f"{', '.join(repr(m) for m in self.mode_dict)}, got {mode!r})"
            )
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: Optional[str] = None
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self._user_check_on_train_epoch_end = check_on_train_epoch_end
        # Stored signed, as Lightning: improvement means monitor_op(current - min_delta, best).
        self.min_delta = min_delta * (1 if mode == "max" else -1)
        self._best = math.inf if mode == "min" else -math.inf

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Callable[[float, float], bool]:
        return self.mode_dict[self.mode]

    @property
    def best_score(self) -> Any:
        """The best value seen, as a 0-d float64 tensor (Lightning keeps a tensor here)."""
        import torch

        return torch.tensor(self._best, dtype=torch.float64)

    @best_score.setter
    def best_score(self, value: Any) -> None:
        self._best = _as_float(value)

    # -- state --

    def state_dict(self) -> Dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(
            state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value)
        )
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    # -- hooks --

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._user_check_on_train_epoch_end is None:
            self._check_on_train_epoch_end = (
                getattr(trainer, "val_check_interval", 1.0) == 1.0
                and getattr(trainer, "check_val_every_n_epoch", 1) == 1
            )

    def _should_skip_check(self, trainer: Any) -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._should_skip_check(trainer):
            return
        if self._check_on_train_epoch_end or (
            self._user_check_on_train_epoch_end is None and not _has_validation(trainer)
        ):
            self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    # -- the decision --

    def _validate_condition_metric(self, logs: Dict[str, Any]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        available = ", ".join(f"`{k}`" for k in logs) or "(none: nothing was logged)"
        message = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available."
            f" Pass in or modify your `EarlyStopping` callback to use any of the following: {available}"
        )
        if self.strict:
            raise RuntimeError(message)
        if self.verbose:
            rank_zero_warn(message, category=RuntimeWarning)
        return False

    def _run_early_stopping_check(self, trainer: Any) -> None:
        """Read the monitored metric and set `trainer.should_stop` if training should stop."""
        logs = trainer.callback_metrics
        if getattr(trainer, "fast_dev_run", False) or not self._validate_condition_metric(logs):
            return
        current = _as_float(logs[self.monitor])
        should_stop, reason = self._evaluate_stopping_criteria(current)
        strategy = getattr(trainer, "strategy", None)
        reduce = getattr(strategy, "reduce_boolean_decision", None)
        if reduce is not None:
            should_stop = bool(reduce(should_stop, all=False))
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason)

    def _evaluate_stopping_criteria(self, current: float) -> Tuple[bool, Optional[str]]:
        should_stop = False
        reason: Optional[str] = None
        op = self.monitor_op
        if self.check_finite and not math.isfinite(current):
            should_stop = True
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            reason = (
                f"Monitored metric {self.monitor} = {current} is not finite."
                f" Previous best value was {self._best:.3f}. Signaling Trainer to stop."
            )
        elif self.stopping_threshold is not None and op(current, self.stopping_threshold):
            should_stop = True
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            reason = (
                f"Stopping threshold reached: {self.monitor} = {current} {self.order_dict[self.mode]}"
                f" {self.stopping_threshold}. Signaling Trainer to stop."
            )
        elif self.divergence_threshold is not None and op(-current, -self.divergence_threshold):
            should_stop = True
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            reason = (
                f"Divergence threshold reached: {self.monitor} = {current} {self.order_dict[self.mode]}"
                f" {self.divergence_threshold}. Signaling Trainer to stop."
            )
        elif op(current - self.min_delta, self._best):
            reason = self._improvement_message(current)
            self._best = current
            self.wait_count = 0
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                should_stop = True
                self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
                reason = (
                    f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records."
                    f" Best score: {self._best:.3f}. Signaling Trainer to stop."
                )
        return should_stop, reason

    def _improvement_message(self, current: float) -> str:
        if math.isfinite(self._best):
            return (
                f"Metric {self.monitor} improved by {abs(self._best - current):.3f} >="
                f" min_delta = {abs(self.min_delta)}. New best score: {current:.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current:.3f}"

    def _log_info(self, trainer: Any, message: str) -> None:
        world_size = getattr(trainer, "world_size", 1)
        rank = getattr(trainer, "global_rank", 0) if world_size > 1 else None
        if rank is not None:
            message = f"[rank: {rank}] {message}"
        if rank is None or not self.log_rank_zero_only or rank == 0:
            log.info(message)


def _has_validation(trainer: Any) -> bool:
    batches = getattr(trainer, "num_val_batches", None)
    if isinstance(batches, (list, tuple)):
        return sum(batches) > 0
    return bool(batches)
