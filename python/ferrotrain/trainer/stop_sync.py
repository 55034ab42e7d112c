"""Agreeing on `trainer.should_stop` across the processes of a run, so that a rank that sets it
alone stops every rank instead of leaving the others waiting in the next gradient all-reduce.

Any rank's True stops every rank. Where the loop acts on the flag rarely (before the first epoch,
after `on_train_epoch_start`, after each validation run, at each epoch's end) the agreement is
immediate: a blocking all-reduce. After each training batch it is one batch late, so the per-step
path pays no extra round trip: the batch's flag is all-reduced in the background and read at the
end of the next batch, and a request stays hidden (`should_stop` reads False) until then. So with
several processes a stop set in `training_step` or `on_train_batch_end` takes effect one batch
later, on every rank at the same batch. (A blocking all-reduce per batch cost about one extra
millisecond per step on a loaded 2-core machine: the other process must be scheduled for each
round trip.) EarlyStopping and ModelCheckpoint decide at validation or epoch ends, and are exact.

The flags are CPU tensors on a gloo group (the default group when it is gloo, else one made once
per process): with NCCL, reading a flag on the GPU would synchronise the device every step.
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
        self._device = torch.device("cpu")
        self._agreed = False  # every rank knows that the run stops
        self._requested = False  # this rank asked to stop, not agreed yet
        self._work: Any = None
        # Two buffers, alternating: one in flight while the next batch's request is written.
        self._bufs = [torch.zeros(1, dtype=torch.int32, device=self._device) for _ in range(2)]
        self._buf = self._bufs[0]

    def _collect(self) -> bool:
        """The result of the background all-reduce in flight: did any rank ask to stop?"""
        work, self._work = self._work, None
        if work is None:
            return False
        work.wait()
        return bool(self._buf.item() > 0)  # type: ignore[union-attr]

    def _agree(self) -> None:
        self._agreed = True
        self._requested = False
        self._schedule.should_stop = True

    def after_batch(self) -> None:
        """End of a training batch: the previous batch's agreement applies; this batch's
        request is sent in the background."""
        if self._agreed:
            return
        schedule = self._schedule
        if schedule.should_stop:
            self._requested = True
        if self._collect():
            self._agree()
            return
        schedule.should_stop = False  # not agreed yet: every rank goes on to the next batch
        buf = self._bufs[1] if self._buf is self._bufs[0] else self._bufs[0]
        buf.fill_(int(self._requested))
        self._buf = buf
        self._work = dist.all_reduce(buf, dist.ReduceOp.SUM, group=self._group, async_op=True)

    def now(self) -> None:
        """A blocking agreement (the rare points): any request so far, on any rank, stops all."""
        if self._agreed:
            return
        local = self._schedule.should_stop or self._requested
        earlier = self._collect()  # every rank collects it here too: the same collectives in order
        flag = torch.tensor([int(local or earlier)], dtype=torch.int32, device=self._device)
        dist.all_reduce(flag, dist.ReduceOp.SUM, group=self._group)
        if flag.item() > 0:
            self._agree()
