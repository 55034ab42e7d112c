"""Reproducibility settings the Trainer applies: torch's determinism flags for
`Trainer(deterministic=..., benchmark=...)`, and the `worker_init_fn` that
`seed_everything(seed, workers=True)` asks for (both as Lightning 2.x does).

It owns no seeding arithmetic: `ferrotrain.utilities.seed` derives the worker seeds.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Optional, Union

import torch


def set_torch_flags(deterministic: Union[bool, str, None], benchmark: Optional[bool]) -> None:
    """Lightning's `_set_torch_flags`. `deterministic=True` turns on torch's deterministic
    algorithms (an error for an op that has none), "warn" the same with warnings instead;
    both make cuDNN deterministic, turn its benchmark off unless `benchmark` is given, and set
    the cuBLAS workspace variable CUDA needs for deterministic matrix products. False switches
    torch's deterministic algorithms off; None (the default) leaves torch's flags as they are."""
    if deterministic:
        if benchmark is None:
            benchmark = False
        elif benchmark:
            warnings.warn(
                "You passed `deterministic=True` and `benchmark=True`. Note that PyTorch ignores "
                "torch.backends.cudnn.deterministic=True when torch.backends.cudnn.benchmark=True.",
                UserWarning,
            )
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic is False:
        torch.use_deterministic_algorithms(False)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=(deterministic == "warn"))
        torch.backends.cudnn.deterministic = True
        # https://docs.nvidia.com/cuda/cublas/index.html#cublasApi_reproducibility
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def auto_add_worker_init_fn(loaders: Any, rank: int = 0) -> None:
    """After `seed_everything(..., workers=True)` (PL_SEED_WORKERS=1), give every DataLoader in
    `loaders` (one, or a list/tuple/dict of them) that has no `worker_init_fn` Lightning's
    `pl_worker_init_function`, so each worker derives its seeds from the global seed, its id
    and the rank. A user's own `worker_init_fn` is kept."""
    if os.environ.get("PL_SEED_WORKERS", "0") != "1":
        return
    from ferrotrain.utilities.seed import pl_worker_init_function

    items = loaders.values() if isinstance(loaders, dict) else loaders if isinstance(loaders, (list, tuple)) else [loaders]
    for loader in items:
        if isinstance(loader, (list, tuple, dict)):
            auto_add_worker_init_fn(loader, rank)
        elif hasattr(loader, "worker_init_fn") and loader.worker_init_fn is None:
            loader.worker_init_fn = functools.partial(pl_worker_init_function, rank=rank)
