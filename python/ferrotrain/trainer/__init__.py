"""Lightning's `lightning.pytorch.trainer` names at `ferrotrain.trainer`. Loaded on first use:
the trainer's own submodules import each other, and an eager import here would cycle."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"Trainer": "ferrotrain.trainer.trainer", "seed_everything": "ferrotrain.utilities.seed"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ferrotrain.trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
