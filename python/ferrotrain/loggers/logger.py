"""The `Logger` base class that every logger, ours or a user's, subclasses (Lightning 2.x API),
and `rank_zero_experiment`. Loggers receive already-reduced Python floats: the Trainer turns
logged tensors into numbers only when it flushes them to loggers."""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from argparse import Namespace
from typing import Any, Callable, Dict, Mapping, Optional, Union

from ferrotrain.utilities.rank_zero import rank_zero_only


class Logger(ABC):
    @property
    @abstractmethod
    def name(self) -> Optional[str]:
        """Experiment name."""

    @property
    @abstractmethod
    def version(self) -> Optional[Union[int, str]]:
        """Experiment version."""

    @property
    def root_dir(self) -> Optional[str]:
        return None

    @property
    def log_dir(self) -> Optional[str]:
        return None

    @property
    def save_dir(self) -> Optional[str]:
        return None

    @property
    def group_separator(self) -> str:
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        """Record metrics at `step`."""

    @abstractmethod
    def log_hyperparams(self, params: Union[Dict[str, Any], Namespace], *args: Any, **kwargs: Any) -> None:
        """Record hyperparameters."""

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        pass


def rank_zero_experiment(fn: Callable) -> Callable:
    """Return a dummy object on non-zero ranks so logger experiments are only created on rank 0."""

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if rank_zero_only.rank > 0:
            return _DummyExperiment()
        return fn(self)

    return experiment


class _DummyExperiment:
    def nop(self, *args: Any, **kw: Any) -> None:
        pass

    def __getattr__(self, _: Any) -> Callable:
        return self.nop

    def __getitem__(self, idx: int) -> "_DummyExperiment":
        return self


class DummyLogger(Logger):
    """The logger `fast_dev_run` puts in place of the configured ones: every call does nothing,
    so a debugging run leaves no logs while code that expects `trainer.logger` still runs."""

    def __init__(self) -> None:
        super().__init__()
        self._experiment = _DummyExperiment()

    @property
    def experiment(self) -> _DummyExperiment:
        return self._experiment

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def __getitem__(self, idx: int) -> "DummyLogger":
        return self  # `trainer.logger[0]` keeps working, as with Lightning's

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("__"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> None:
            return None

        return method


class VersionedLogger(Logger):
    """A logger that writes under `save_dir/name/version_N` (or a string version), the layout
    Lightning's file loggers share; the next free `version_N` is chosen on first use."""

    def __init__(self, save_dir: Union[str, "os.PathLike[str]"], name: Optional[str], version: Optional[Union[int, str]]) -> None:
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> Union[int, str]:
        if self._version is None:
            from ferrotrain.loggers.utilities import _next_version

            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """`save_dir/name`: the folder that holds the `version_N` folders. Read through the
        properties, so a subclass that overrides `name` (or `save_dir`) moves the folder too."""
        return os.path.join(self.save_dir, self.name or "")
