"""Counting the floating-point operations of a forward (and backward) pass, with torch's own
`FlopCounterMode`; a model built on the meta device costs no memory or compute to count."""

from __future__ import annotations

from typing import Callable, Optional

import torch


def measure_flops(model: torch.nn.Module, forward_fn: Callable[[], torch.Tensor],
                  loss_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> int:
    """FLOPs of `forward_fn()`, plus the backward pass of `loss_fn(output)` when given."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = forward_fn()
        if loss_fn is not None:
            loss_fn(out).backward()
    return int(counter.get_total_flops())
