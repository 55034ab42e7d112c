"""`seed_everything`: one seed for Python's `random`, numpy (when installed) and torch."""

from __future__ import annotations

import os
import random
from typing import Optional

import torch

_MAX = 2**32 - 1


def seed_everything(seed: Optional[int] = None, workers: bool = False, verbose: bool = True) -> int:
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
        print(f"Seed set to {seed}")
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
