"""Lightning's `lightning.pytorch.core` names at `ferrotrain.core`. Loaded on first use so that
importing a submodule (hparams, saving helpers) does not pull in the whole module class."""

from __future__ import annotations

from ferrotrain._lazy import lazy_getattr

_LAZY = {"LightningModule": "module", "LightningDataModule": "datamodule"}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("ferrotrain.core", _LAZY, globals())
