"""Lightning's `lightning.pytorch.core` names at `ferrotrain.core`. Loaded on first use so that
importing a submodule (hparams, saving helpers) does not pull in the whole module class."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"LightningModule": "module", "LightningDataModule": "datamodule"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ferrotrain.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ferrotrain.core.{module}"), name)
    globals()[name] = value
    return value
