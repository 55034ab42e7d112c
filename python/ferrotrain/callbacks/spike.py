"""`SpikeDetection`: stop training with `TrainingSpikeException` when the training loss jumps
above its running mean (or is not finite), after writing the indices of the offending batch and
the one before to `skip_batches.json` (in `default_root_dir` unless `exclude_batches_path`).

The running mean over the last `window` losses is a plain deque here; Lightning uses
torchmetrics' `Running(MeanMetric)`, which gives the same numbers on one process.
"""

from __future__ import annotations

import collections
import json
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from ferrotrain.callbacks.callback import Callback


class TrainingSpikeException(RuntimeError):
    """Raised when a loss spike is detected."""

    def __init__(self, batch_idx: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args, **kwargs)


class SpikeDetection(Callback):
    def __init__(self, mode: str = "min", window: int = 10, warmup: int = 1, atol: Optional[float] = None,
                 rtol: Optional[float] = 2.0, exclude_batches_path: Optional[Union[str, os.PathLike]] = None,
                 finite_only: bool = True) -> None:
        self.last_val: Union[torch.Tensor, float] = 0.0
        self._window: collections.deque = collections.deque(maxlen=window)
        self.mode = mode
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.bad_batches: List[int] = []
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only

    # The loss is checked after every batch: this callback's only per-step work.
    @torch.no_grad()
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(outputs, torch.Tensor):
            loss = outputs.detach()
        elif isinstance(outputs, Mapping):
            loss = outputs["loss"].detach()
        else:
            raise TypeError(f"outputs have to be of type torch.Tensor or Mapping, got {type(outputs).__qualname__}")
        if self.exclude_batches_path is None:
            self.exclude_batches_path = os.path.join(trainer.default_root_dir, "skip_batches.json")
        if not str(self.exclude_batches_path).endswith(".json"):
            self.exclude_batches_path = os.path.join(self.exclude_batches_path, "skip_batches.json")
        is_spike = bool(batch_idx >= self.warmup and self._is_spike(loss))
        strategy = trainer.strategy
        is_spike_global = strategy.reduce_boolean_decision(is_spike, all=False) if hasattr(
            strategy, "reduce_boolean_decision") else is_spike
        if is_spike_global:
            self._handle_spike(trainer, batch_idx)
        elif self.finite_only or bool(torch.isfinite(loss).all()):
            self._update_stats(loss)

    def _running_mean(self) -> torch.Tensor:
        if not self._window:
            return torch.tensor(float("nan"))
        return torch.stack([v.float().mean() for v in self._window]).mean()

    def _is_spike(self, loss: torch.Tensor) -> bool:
        running_val = self._running_mean()
        curr_diff = loss - self.last_val
        if self.finite_only and not torch.isfinite(loss):
            return True
        if self._is_better(curr_diff):
            return False
        return self._check_atol(loss, running_val) and self._check_rtol(loss, running_val)

    def _handle_spike(self, trainer: Any, batch_idx: int) -> None:
        # The batch before may have moved the weights into the spike: both are skipped.
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        if trainer.global_rank == 0:
            path = str(self.exclude_batches_path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as f:
                json.dump(self.bad_batches, f, indent=4)
        raise TrainingSpikeException(batch_idx=batch_idx)

    def _check_atol(self, val_a: Any, val_b: Any) -> bool:
        return (self.atol is None) or bool(abs(val_a - val_b) >= abs(self.atol))

    def _check_rtol(self, val_a: Any, val_b: Any) -> bool:
        return (self.rtol is None) or bool(abs(val_a - val_b) >= abs(self.rtol * val_b))

    def _is_better(self, diff_val: torch.Tensor) -> bool:
        if self.mode == "min":
            return bool((diff_val <= 0.0).all())
        if self.mode == "max":
            return bool((diff_val >= 0).all())
        raise ValueError(f"Invalid mode. Has to be min or max, found {self.mode}")

    def _update_stats(self, val: torch.Tensor) -> None:
        self._window.append(val.detach().clone())
        self.last_val = val

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_val": self.last_val.item() if isinstance(self.last_val, torch.Tensor) else self.last_val,
            "mode": self.mode, "warmup": self.warmup, "atol": self.atol, "rtol": self.rtol,
            "bad_batches": self.bad_batches, "bad_batches_path": self.exclude_batches_path,
            "window": [float(v.float().mean()) for v in self._window],
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.last_val = state_dict["last_val"]
        self.mode = state_dict["mode"]
        self.warmup = state_dict["warmup"]
        self.atol = state_dict["atol"]
        self.rtol = state_dict["rtol"]
        self.bad_batches = state_dict["bad_batches"]
        self.exclude_batches_path = state_dict["bad_batches_path"]
        self._window.clear()
        self._window.extend(torch.tensor(v) for v in state_dict.get("window", []))
