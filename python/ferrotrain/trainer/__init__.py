"""Lightning's `lightning.pytorch.trainer` names at `ferrotrain.trainer`. Loaded on first use:
the trainer's own submodules import each other, and an eager import here would cycle."""

from __future__ import annotations

from ferrotrain._lazy import lazy_getattr

_LAZY = {"Trainer": "ferrotrain.trainer.trainer", "seed_everything": "ferrotrain.utilities.seed"}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("ferrotrain.trainer", _LAZY, globals())
