"""`str(datamodule)`: one line per loader method with its dataset size, as Lightning prints it
(`{Train dataloader: size=64}`; `None` where the method fails or is not set up yet)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sized
from typing import Any

_METHODS = (
    ("Train dataloader", "train_dataloader"),
    ("Validation dataloader", "val_dataloader"),
    ("Test dataloader", "test_dataloader"),
    ("Predict dataloader", "predict_dataloader"),
)


def _size(loader: Any) -> str:
    dataset = getattr(loader, "dataset", None)
    return str(len(dataset)) if isinstance(dataset, Sized) else "NA"


def _describe(loaders: Any) -> str:
    from torch.utils.data import DataLoader

    if isinstance(loaders, DataLoader):
        return f"size={_size(loaders)}"
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return " ; ".join(
            f"{i}. size={_size(loader)}" if isinstance(loader, DataLoader) else "None"
            for i, loader in enumerate(loaders, start=1)
        )
    return "None"


def describe_datamodule(dm: Any) -> str:
    lines = []
    for label, method in _METHODS:
        try:
            text = _describe(getattr(dm, method)())
        except Exception:  # not set up yet, or not defined: Lightning shows None
            text = "None"
        lines.append(f"{{{label}: {text}}}")
    return os.linesep.join(lines)
