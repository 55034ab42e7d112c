"""Lightning's tuner: `Tuner(trainer).lr_find(model, ...)` and `.scale_batch_size(model, ...)`.
Loaded on first use, so `import ferrotrain` does not pay for it."""

from __future__ import annotations

from typing import Any

__all__ = ["Tuner"]


def __getattr__(name: str) -> Any:
    if name == "Tuner":
        from ferrotrain.tuner.tuning import Tuner

        globals()["Tuner"] = Tuner
        return Tuner
    raise AttributeError(f"module 'ferrotrain.tuner' has no attribute {name!r}")
