"""Utilities users import as in Lightning (`from ferrotrain.utilities import grad_norm`). Loaded on
first use, so importing a submodule (the seed helpers, at `import ferrotrain`) stays cheap."""

from __future__ import annotations

from typing import Any

__all__ = ["grad_norm"]


def __getattr__(name: str) -> Any:
    if name == "grad_norm":
        from ferrotrain.utilities.clip import grad_norm

        return grad_norm
    raise AttributeError(f"module 'ferrotrain.utilities' has no attribute {name!r}")
