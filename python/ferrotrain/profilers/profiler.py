"""The `Profiler` base class (Lightning's API: `start`, `stop`, `profile`, `summary`, `describe`)
and `PassThroughProfiler`, what `trainer.profiler` is when profiling is off.

A profiler that times the loop itself (`SimpleProfiler`, `PyTorchProfiler`) sets `_times_loop`;
the Trainer then instruments the run once, at plan time (see `ferrotrain.profilers.simple`).
With profiling off nothing is wrapped and the loop has no profiler code on its path.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Union

from ferrotrain.utilities.rank_zero import rank_zero_info


class Profiler:
    """Base class for profilers. Subclasses implement `start`, `stop` and `summary`.

    Args:
        dirpath: folder for the report file; defaults to `trainer.log_dir` when `filename` is set.
        filename: write the report to `{dirpath}/{stage}-{filename}.txt` instead of printing it.
    """

    _times_loop = False

    def __init__(self, dirpath: Optional[Union[str, os.PathLike]] = None, filename: Optional[str] = None) -> None:
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.filename = filename
        self._stage: Optional[str] = None
        self._log_dir: Optional[str] = None

    def start(self, action_name: str) -> None:
        """Start timing `action_name`."""
        raise NotImplementedError

    def stop(self, action_name: str) -> None:
        """Stop timing `action_name`."""
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """Time the `with` block as `action_name`."""
        self.start(action_name)
        try:
            yield action_name
        finally:
            self.stop(action_name)

    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        self._stage = stage
        self._log_dir = log_dir

    def teardown(self, stage: Optional[str]) -> None:
        pass

    def _report_dir(self) -> str:
        return self.dirpath or self._log_dir or os.getcwd()

    def _report_path(self, suffix: str = ".txt") -> Optional[str]:
        if not self.filename:
            return None
        return os.path.join(self._report_dir(), f"{self._stage or 'fit'}-{self.filename}{suffix}")

    def describe(self) -> None:
        """Print the summary, or write it to the report file when `filename` is set."""
        text = self.summary()
        if not text:
            return
        path = self._report_path()
        if path is None:
            rank_zero_info(text)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")


class PassThroughProfiler(Profiler):
    """Profiles nothing: `trainer.profiler` when `Trainer(profiler=None)`."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def summary(self) -> str:
        return ""


def resolve(value: Any) -> Profiler:
    """`Trainer(profiler=...)` -> a profiler object (the value was checked by `config`)."""
    if value is None:
        return PassThroughProfiler()
    if isinstance(value, Profiler):
        return value
    if value == "simple":
        from ferrotrain.profilers.simple import SimpleProfiler

        return SimpleProfiler()
    from ferrotrain.profilers.pytorch import PyTorchProfiler

    return PyTorchProfiler()

