"""`Trainer(detect_anomaly=True)`: stop at the first non-finite loss, and find where NaNs start.

Owns two things, both off (and free) unless `detect_anomaly=True`:

- the training loop runs inside `torch.autograd.set_detect_anomaly(True)`, as in Lightning, so a
  backward that produces NaN raises torch's error naming the operation;
- `training_step` is wrapped once, at plan time, by a check of the returned loss (before the
  optimizer step, so the weights are never touched by it). A NaN loss is backpropagated at once
  under anomaly mode, so torch raises what Lightning users see (`RuntimeError: Function
  '...Backward0' returned nan values in its 0th output.`, after its "Error detected in"
  warning); a non-finite loss whose backward torch does not flag (infinite, or NaN with finite
  gradients) raises `NonFiniteLossError` naming the global step, epoch and batch, where
  Lightning would train on. The check reads the loss on the host: one sync per step, paid only
  when the option is on.

When the option is off nothing here runs: the step calls the user's `training_step` directly.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, Mapping

import torch

from ferrotrain.errors import NonFiniteLossError


def autograd_context(enabled: bool) -> ContextManager[Any]:
    """torch's anomaly mode around the training loop when `enabled`."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autograd.set_detect_anomaly(True, check_nan=True)


def checked_training_step(training_step: Callable[..., Any], trainer: Any) -> Callable[..., Any]:
    """`training_step`, raising `NonFiniteLossError` when the loss it returns is not finite."""

    def checked(batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        out = training_step(batch, batch_idx, *args, **kwargs)
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.dtype.is_floating_point:
            value = float(loss.detach())  # sync point: only with detect_anomaly=True
            if math.isnan(value) and loss.requires_grad:
                loss.backward()  # torch's anomaly mode raises here, naming the operation
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"`training_step` returned a non-finite loss ({value}) at global step "
                    f"{trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx}); "
                    "stopped because `Trainer(detect_anomaly=True)`. The weights were not updated "
                    "with it."
                )
        return out

    return checked
