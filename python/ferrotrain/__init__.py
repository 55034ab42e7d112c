"""ferrotrain: Lightning's Trainer API with a native loop core.

    import ferrotrain as L
    trainer = L.Trainer(max_epochs=3)
    trainer.fit(model, train_loader, val_loader)

The module classes are imported eagerly (user code subclasses them at import time); the Trainer
and its loops load on first use, so `import ferrotrain` costs little on top of `import torch`.
"""

from __future__ import annotations

import logging
from typing import Any

from ferrotrain._core import __version__
from ferrotrain.callbacks.callback import Callback
from ferrotrain.core.datamodule import LightningDataModule
from ferrotrain.core.module import LightningModule
from ferrotrain.utilities.seed import seed_everything

# Info messages (seed, model summary, why a fit stopped) go to the "ferrotrain" logger, shown on
# stderr at INFO unless the application configured logging itself: Lightning's own setup, so
# `logging.getLogger("ferrotrain").setLevel(logging.WARNING)` silences them as users expect.
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False

# Lightning's subpackages, reachable as attributes of the package (`pl.loggers.CSVLogger` after a
# bare `import lightning.pytorch as pl`, which libraries written for Lightning rely on), imported on
# first use so `import ferrotrain` stays cheap.
_SUBPACKAGES = frozenset({
    "accelerators", "callbacks", "cli", "core", "data", "demos", "errors", "loggers", "plugins", "profilers",
    "serve", "strategies", "trainer", "tuner", "utilities",
})

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "seed_everything", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from ferrotrain.trainer.trainer import Trainer

        globals()["Trainer"] = Trainer
        return Trainer
    if name in _SUBPACKAGES:
        import importlib

        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ferrotrain' has no attribute {name!r}")
