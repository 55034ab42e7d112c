"""Agreeing on `trainer.should_stop` across the processes of a run, so that a rank that sets it
alone at an epoch or validation boundary stops every rank instead of leaving the others waiting
in the next gradient all-reduce.

Any rank's True stops every rank. The loop asks for an agreement (a blocking all-reduce of one
flag) only where it acts on the flag between batches: before the first epoch, after
`on_train_epoch_start`, after each validation run, at each epoch's end. EarlyStopping and
ModelCheckpoint decide there. After a training batch the flag is read as set, as Lightning reads
it: a per-batch agreement cost 15-25% of a small DDP step on a 2-core machine (each round trip
waits for the other process to be scheduled), more than the data-parallel loop's whole budget.
So a stop requested in `training_step` or `on_train_batch_end` must be requested on every rank
(compute it from values every rank has, or reduce it yourself), exactly as with Lightning.

The flags are CPU tensors on a gloo group (the default group when it is gloo, else one made once
per process): with NCCL, reading a flag on the GPU would synchronise the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


_GLOO_GROUP: Any = (None, None)  # (the default group it was made for, the gloo group)


def _cpu_group() -> Any:
    """A gloo group over every rank: the default group, or one created (collectively) once per
    default group."""
    global _GLOO_GROUP
    if dist.get_backend() == "gloo":
        return None  # the default group
    world = dist.group.WORLD
    if _GLOO_GROUP[0] is not world:
        _GLOO_GROUP = (world, dist.new_group(backend="gloo"))
    return _GLOO_GROUP[1]


class StopSync:
    def __init__(self, trainer: Any) -> None:
        self._schedule = trainer._schedule
        self._group = _cpu_group()
        self._agreed = False  # every rank knows that the run stops

    def now(self) -> None:
        """A blocking agreement: any rank's request stops all."""
        if self._agreed:
            return
        flag = torch.tensor([int(self._schedule.should_stop)], dtype=torch.int32)
        dist.all_reduce(flag, dist.ReduceOp.SUM, group=self._group)
        if flag.item() > 0:
            self._agreed = True
            self._schedule.should_stop = True
