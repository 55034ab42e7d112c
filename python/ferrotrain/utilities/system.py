"""What this machine and the processes on it can share: CPU cores for loader workers, and
whether the ranks see one filesystem."""

from __future__ import annotations

import os
import uuid
from typing import Any, Optional


def _cpus_available() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for a DataLoader's `num_workers`: this process's share of the usable cores,
    less one for the process itself, and at least 1."""
    if not isinstance(local_world_size, int) or local_world_size < 1:
        raise ValueError(f"`local_world_size` should be an int >= 1, got {local_world_size!r}.")
    return max(1, _cpus_available() // local_world_size - 1)


def is_shared_filesystem(strategy: Any, path: Optional[str] = None, timeout: int = 3) -> bool:
    """Whether every rank sees the files rank 0 writes under `path` (default: the working dir).
    One process always does; otherwise rank 0 writes a marker file and the ranks agree on
    whether each of them found it (`timeout` is accepted for Lightning's signature)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    folder = os.path.abspath(path or os.getcwd())
    name = strategy.broadcast(f".shared-fs-check-{uuid.uuid4().hex}", src=0)
    marker = os.path.join(folder, name)
    if dist.get_rank() == 0:
        with open(marker, "w"):
            pass
    strategy.barrier()
    found = torch.tensor([1.0 if os.path.exists(marker) else 0.0])
    dist.all_reduce(found, op=dist.ReduceOp.MIN)
    strategy.barrier()
    if dist.get_rank() == 0:
        os.remove(marker)
    return bool(found.item() == 1.0)
