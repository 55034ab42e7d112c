"""`seed_everything`: one seed for Python's `random`, numpy (when installed) and torch; and
`pl_worker_init_function`, the DataLoader `worker_init_fn` that derives each worker's seeds from
it (Lightning's, bit for bit: the same mixing, so the same draws in every worker)."""

from __future__ import annotations

import os
import random
from typing import List, Optional

import torch

from ferrotrain.utilities.rank_zero import rank_zero_info

_MAX = 2**32 - 1
_MASK64 = (1 << 64) - 1


def seed_everything(seed: Optional[int] = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed `random`, numpy and torch; set PL_GLOBAL_SEED, and PL_SEED_WORKERS (1 when
    `workers`: the Trainer then gives loaders without a `worker_init_fn` the
    `pl_worker_init_function`)."""
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        seed = int(env) if env is not None else 0
    if not isinstance(seed, int) or isinstance(seed, bool):
        try:
            seed = int(seed)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"`seed` must be an int, got {seed!r}") from exc
    if not (0 <= seed <= _MAX):
        raise ValueError(f"`seed` must be in [0, {_MAX}], got {seed}")
    if verbose:
        rank_zero_info(f"Seed set to {seed}")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)
    return seed


def pl_worker_init_function(worker_id: int, rank: Optional[int] = None) -> None:
    """Seed torch, `random` and numpy in a DataLoader worker from the seed torch gave the
    worker (base seed + worker id), the worker id and the rank, as Lightning does."""
    global_rank = rank if rank is not None else 0
    base_seed = torch.initial_seed() - worker_id
    seeds = _generate_seed_sequence(base_seed, worker_id, global_rank, count=4)
    torch.manual_seed(seeds[0])
    random.seed((seeds[1] << 32) | seeds[2])
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(np.random.SeedSequence([base_seed, worker_id, global_rank]).generate_state(4))


def _generate_seed_sequence(base_seed: int, worker_id: int, global_rank: int, count: int) -> List[int]:
    """MurmurHash3's finalizer over (base seed, worker id, rank), then Knuth's 64-bit LCG."""
    x = (base_seed << 32) | (worker_id << 16) | global_rank
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    x ^= x >> 33
    seeds = []
    for _ in range(count):
        x = (x * 6364136223846793005 + 1) & _MASK64
        seeds.append(x)
    return seeds
