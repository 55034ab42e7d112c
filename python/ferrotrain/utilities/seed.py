"""`seed_everything`: one seed for Python's `random`, numpy (when installed) and torch; and
`pl_worker_init_function`, the DataLoader `worker_init_fn` that derives each worker's seeds from
it (Lightning's, bit for bit: the same mixing, so the same draws in every worker); and
`isolate_rng`, which puts every global random state back as it was on leaving a block."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Dict, Iterator, List, Optional

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


def _global_rng_states(include_cuda: bool) -> Dict[str, Any]:
    states: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:
        pass
    # Only a CUDA that is already in use: reading its state must not initialise it.
    if include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


@contextlib.contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """On leaving the block, put the global random states of torch, numpy, Python's `random`
    (and CUDA, when in use) back as they were on entering (Lightning's `isolate_rng`). The
    Trainer runs the sanity check inside one, so validating first leaves training's random
    draws (the shuffle order, dropout) exactly as without it."""
    states = _global_rng_states(include_cuda)
    try:
        yield
    finally:
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        if "numpy" in states:
            import numpy as np

            np.random.set_state(states["numpy"])
        if "cuda" in states:
            torch.cuda.set_rng_state_all(states["cuda"])
