"""Imports a tracker's client library only when the tracker is constructed, so that
`import ferrotrain` never needs mlflow, wandb or comet_ml, and a missing one names its extra."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_client(module: str, package: str, extra: str, logger: str) -> ModuleType:
    """Import `module`; if it is not installed, raise an ImportError naming `package` and the
    `ferrotrain[extra]` install that brings it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] != module.split(".")[0]:
            raise  # the client is installed but one of its own dependencies is broken
        raise ImportError(
            f"{logger} needs the `{package}` package, which is not installed. "
            f"Install it with `pip install '{package}'` or `pip install 'ferrotrain[{extra}]'`."
        ) from err
