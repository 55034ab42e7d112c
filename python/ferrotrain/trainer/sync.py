"""`self.log(..., sync_dist=True)` across processes.

Only entries logged with `sync_dist=True` while a torch.distributed process group of several
processes is up come here; everything else stays on the plain path of `results`. As in Lightning:
a step value is reduced across ranks when it is logged (every rank logs it, so the collective
lines up), with the entry's `reduce_fx` ('mean' averages); the epoch value is reduced at the
epoch's end from each rank's local accumulation ('mean' is the batch-size-weighted mean over all
ranks' batches), once, then cached until the entry changes.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch


def _world() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _device() -> torch.device:
    """Where collectives run: NCCL needs the GPU, gloo the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class EntrySync:
    __slots__ = ("reduce", "step", "weight", "cached")

    def __init__(self, reduce: str) -> None:
        self.reduce = reduce
        self.step: Optional[float] = None  # the latest step value, reduced across ranks
        self.weight = 0.0  # this rank's total weight for the epoch mean
        self.cached: Optional[float] = None

    def reset(self) -> None:
        self.step = None
        self.weight = 0.0
        self.cached = None

    def epoch_value(self, local: Optional[float]) -> Optional[float]:
        """The epoch value over all ranks (a collective: every rank reads it at the same point)."""
        if self.cached is not None:
            return self.cached
        import torch.distributed as dist

        value = math.nan if local is None else local
        if self.reduce == "mean":
            t = torch.tensor([value * self.weight if self.weight else 0.0, self.weight], dtype=torch.float64,
                             device=_device())
            dist.all_reduce(t, dist.ReduceOp.SUM)
            out = float(t[0] / t[1]) if float(t[1]) else None
        else:
            t = torch.tensor([value], dtype=torch.float64, device=_device())
            op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[self.reduce]
            dist.all_reduce(t, op)
            out = float(t[0])
        self.cached = out
        return out


def log_synced(results: Any, entry: Any, value: Any, weight: float) -> bool:
    """Record a `sync_dist=True` value; False when there is nothing to sync (one process)."""
    if _world() <= 1:
        return False
    import torch.distributed as dist

    sync = entry.sync
    if sync is None:
        sync = entry.sync = EntrySync(entry.reduce)
    if entry.on_step:
        dev = _device()
        if isinstance(value, torch.Tensor):
            t = value.detach().to(dev, torch.float64).reshape(1)
        else:
            t = torch.tensor([float(value)], dtype=torch.float64, device=dev)
        if entry.reduce in ("mean", "sum"):
            dist.all_reduce(t, dist.ReduceOp.SUM)
            sync.step = float(t[0]) / (_world() if entry.reduce == "mean" else 1)
        else:
            dist.all_reduce(t, dist.ReduceOp.MAX if entry.reduce == "max" else dist.ReduceOp.MIN)
            sync.step = float(t[0])
    sync.weight += weight
    sync.cached = None
    results._update(entry, value, weight)
    return True
