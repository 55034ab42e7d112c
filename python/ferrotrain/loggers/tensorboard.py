"""`TensorBoardLogger`: real TensorBoard event files in Lightning's layout
`save_dir/name/version_N[/sub_dir]` (`events.out.tfevents.<time>.<host>.<pid>.<n>`), plus
`hparams.yaml` and the `hp_metric` placeholder Lightning logs with the hyperparameters.

The event file is written by the native core (`_core.EventFileWriter`): scalars, what the
Trainer logs every `log_every_n_steps`, are encoded in Rust and appended by a Rust thread, so a
logging step costs microseconds and no Python writer thread competes with training for the GIL.
`experiment` is still a `torch.utils.tensorboard.SummaryWriter` (for `add_image`, `add_histogram`,
the hyperparameters and the graph...), whose events go, serialized by tensorboard's protobuf
classes, into the same file through the same thread. `SummaryWriter` options other than
`max_queue`, `flush_secs` and `filename_suffix` (e.g. `purge_step`) switch back to tensorboard's own
Python writer.

A remote `save_dir` (`memory://`, `s3://`, ... any fsspec URL) is written by tensorboard's own
writer too: the native file is a local file, while tensorboard opens its event files through its
`gfile` layer, which hands any protocol fsspec knows to fsspec (as Lightning's logger relies on).
The folders and `hparams.yaml` go through fsspec likewise.

`tensorboard` is an optional dependency: it is looked up (not imported) when the logger is created,
and imported only when `experiment` is first used, so `import ferrotrain` stays fast; logging
scalars alone never imports it.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import time
from argparse import Namespace
from typing import Any, Callable, Dict, Mapping, Optional, Union

from ferrotrain.loggers.logger import VersionedLogger, rank_zero_experiment
from ferrotrain.loggers.utilities import (
    _add_prefix,
    _convert_params,
    _flatten_dict,
    _sanitize_params,
    save_hparams_to_yaml,
)
from ferrotrain.utilities.cloud_io import get_filesystem, is_remote
from ferrotrain.utilities.rank_zero import rank_zero_only, rank_zero_warn

_MISSING_TENSORBOARD = (
    "TensorBoardLogger needs the `tensorboard` package, which is not installed."
    " Install it with `pip install tensorboard` (or `pip install ferrotrain[tensorboard]`),"
    " or use `CSVLogger` instead."
)


def _tensorboard_available() -> bool:
    if "tensorboard" in sys.modules:
        return sys.modules["tensorboard"] is not None  # None: imports of it are blocked
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger(VersionedLogger):
    """Log to TensorBoard event files in `save_dir/name/version_N` (Lightning's `TensorBoardLogger`).

    Args:
        save_dir: root folder of all experiments.
        name: experiment name; `None` or `""` puts the versions directly in `save_dir`.
        version: an int (folder `version_<int>`) or a string (used as the folder name); by default
            the next free `version_N`.
        log_graph: add the model graph (needs `model.example_input_array`).
        default_hp_metric: log `hp_metric = -1` with the hyperparameters when no metric is given,
            so the HPARAMS tab shows them.
        prefix: put in front of every metric name, joined with `-`.
        sub_dir: an extra folder under the version folder.
        **kwargs: passed to `SummaryWriter` (e.g. `max_queue`, `flush_secs`, `filename_suffix`). The
            native writer hands events to the OS as soon as they are logged, which satisfies any
            `flush_secs`, and never blocks, so `max_queue` has nothing to bound.

    Raises:
        ModuleNotFoundError: if `tensorboard` is not installed.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: Union[str, "os.PathLike[str]"],
        name: Optional[str] = "lightning_logs",
        version: Optional[Union[int, str]] = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        **kwargs: Any,
    ) -> None:
        if not _tensorboard_available():
            raise ModuleNotFoundError(_MISSING_TENSORBOARD, name="tensorboard")
        super().__init__(save_dir, name, version)
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._kwargs = kwargs
        self._experiment: Any = None
        # The native event file (`_core.EventFileWriter`), created on first use; None when the
        # options need tensorboard's own writer.
        self._events: Any = None
        self._remote = is_remote(self._save_dir)
        self._native = not self._remote and set(kwargs) <= _NATIVE_OPTIONS
        self.hparams: Dict[str, Any] = {}
        self._hparams_file_written = False

    @property
    def sub_dir(self) -> Optional[str]:
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        log_dir = os.path.join(self.root_dir, version)
        if isinstance(self._sub_dir, str):
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expanduser(os.path.expandvars(log_dir))

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The `SummaryWriter` (created on first use); its events go to this run's event file."""
        if self._experiment is not None:
            return self._experiment
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - the import check
        except ImportError as err:
            raise ModuleNotFoundError(_MISSING_TENSORBOARD, name="tensorboard") from err
        if self._remote:
            get_filesystem(self.root_dir).makedirs(self.root_dir, exist_ok=True)
        else:
            os.makedirs(self.root_dir, exist_ok=True)
        if self._native:
            self._experiment = _native_summary_writer_class()(self._event_file, log_dir=self.log_dir, **self._kwargs)
        else:
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    def _event_file(self) -> Any:
        """The native writer of this run's event file: created on first use, and again (a new
        file, as `SummaryWriter` does) after it was closed."""
        events = self._events
        if events is None or events.closed:
            events = self._events = _create_event_file(self.log_dir, self._kwargs.get("filename_suffix", ""))
        return events

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if not self._native:
            return self._log_metrics_with_summary_writer(metrics, step)
        scalars = []
        for key, value in metrics.items():
            if type(value) is not float:
                if hasattr(value, "item") and not isinstance(value, dict):
                    value = value.item()
                if isinstance(value, dict):
                    self.experiment.add_scalars(key, value, step)  # one file per key, as SummaryWriter does
                    continue
                try:
                    value = float(value)
                except Exception as err:
                    raise _not_a_number(key, value) from err
            scalars.append((key, value))
        if scalars:
            self._event_file().add_scalars(scalars, None if step is None else int(step))

    def _log_metrics_with_summary_writer(self, metrics: Mapping[str, Any], step: Optional[int]) -> None:
        writer = self.experiment
        for key, value in metrics.items():
            if hasattr(value, "item") and not isinstance(value, dict):
                value = value.item()
            if isinstance(value, dict):
                writer.add_scalars(key, value, step)
                continue
            try:
                writer.add_scalar(key, value, step)
            except Exception as err:
                raise _not_a_number(key, value) from err

    @rank_zero_only
    def log_hyperparams(
        self,
        params: Optional[Union[Dict[str, Any], Namespace]] = None,
        metrics: Optional[Union[Dict[str, Any], float]] = None,
        step: Optional[int] = None,
    ) -> None:
        """Record hyperparameters (shown in TensorBoard's HPARAMS tab and saved to `hparams.yaml`).

        Without `metrics`, `hp_metric = -1` is logged when `default_hp_metric` is on (as Lightning);
        a bare number as `metrics` is logged as `hp_metric`.
        """
        params = _convert_params(params)
        self.hparams.update(params)
        flat = _sanitize_params(_flatten_dict(params))

        if metrics is None:
            if self._default_hp_metric:
                metrics = {"hp_metric": -1}
        elif not isinstance(metrics, dict):
            metrics = {"hp_metric": metrics}

        if metrics:
            # Positional, as Lightning calls it here (the Trainer's own calls pass keywords).
            self.log_metrics(metrics, step)
            from torch.utils.tensorboard.summary import hparams

            exp, ssi, sei = hparams(flat, metrics)
            file_writer = self.experiment._get_file_writer()
            file_writer.add_summary(exp, step)
            file_writer.add_summary(ssi, step)
            file_writer.add_summary(sei, step)

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            rank_zero_warn(
                "Could not log computational graph to TensorBoard: The `model.example_input_array` attribute"
                " is not set or `input_array` was not given."
            )
            return
        import torch

        if not isinstance(input_array, (torch.Tensor, tuple)):
            rank_zero_warn(
                "Could not log computational graph to TensorBoard: The `input_array` or `model.example_input_array`"
                f" has type {type(input_array)} which can't be traced by TensorBoard. Make the input array a tuple"
                " representing the positional arguments to the model's `forward()` implementation."
            )
            return
        self.experiment.add_graph(model, input_array)

    @rank_zero_only
    def save(self) -> None:
        # No flush here: the Trainer calls `save()` after every logging step, and the writer
        # already flushes in the background (`flush_secs`) and in `finalize` (as Lightning's does).
        # `hparams.yaml` is written once, as soon as the log folder exists; remembering that saves
        # two file-system lookups per logging step.
        if self._hparams_file_written:
            return
        log_dir = self.log_dir
        hparams_file = os.path.join(log_dir, self.NAME_HPARAMS_FILE)
        fs = get_filesystem(log_dir) if self._remote else os.path
        if fs.isdir(log_dir):
            if not fs.isfile(hparams_file):
                save_hparams_to_yaml(hparams_file, self.hparams)
            self._hparams_file_written = True

    @rank_zero_only
    def finalize(self, status: str) -> None:
        # `hparams.yaml` also when nothing was logged, once something (a checkpoint) made the
        # log folder, as Lightning's `finalize` does.
        if status == "success":
            self.save()
        if self._experiment is None and self._events is None:
            return
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
        if self._events is not None:
            self._events.close()  # flushes; a no-op when the experiment closed it

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        pass

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None
        state["_events"] = None
        return state


_NATIVE_OPTIONS = frozenset({"max_queue", "flush_secs", "filename_suffix"})
_file_numbers = itertools.count()


def _not_a_number(key: str, value: Any) -> ValueError:
    return ValueError(
        f"TensorBoardLogger cannot log {key}={value!r}: log a number, a 0-d tensor or a dict of numbers."
    )


def _create_event_file(log_dir: str, suffix: str) -> Any:
    """A new native event file in `log_dir`, named as tensorboard's `EventFileWriter` names them:
    `events.out.tfevents.<time, 10 digits>.<host>.<pid>.<n><suffix>`."""
    import socket

    from ferrotrain import _core

    os.makedirs(log_dir, exist_ok=True)
    host, pid = socket.gethostname(), os.getpid()
    while True:
        name = "events.out.tfevents.%010d.%s.%s.%s" % (time.time(), host, pid, next(_file_numbers)) + suffix
        try:
            return _core.EventFileWriter(os.path.join(log_dir, name))
        except FileExistsError:
            continue  # another writer of this process took the number: take the next one


_summary_writer_class: Any = None


def _native_summary_writer_class() -> Any:
    """A `SummaryWriter` whose default `FileWriter` hands serialized events to the native event
    file (built once; imports tensorboard)."""
    global _summary_writer_class
    if _summary_writer_class is not None:
        return _summary_writer_class
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.writer import FileWriter

    class _NativeEvents:
        """What `FileWriter` uses of tensorboard's `EventFileWriter`, over the native writer."""

        def __init__(self, open_file: Callable[[], Any], log_dir: str) -> None:
            self._open_file = open_file
            self._log_dir = log_dir
            self._file = open_file()

        def get_logdir(self) -> str:
            return self._log_dir

        def add_event(self, event: Any) -> None:
            self._file.add_event(event.SerializeToString())

        def flush(self) -> None:
            self._file.flush()

        def close(self) -> None:
            self._file.close()

        def reopen(self) -> None:
            if self._file.closed:
                self._file = self._open_file()  # a new file, as tensorboard's writer does

    class _NativeFileWriter(FileWriter):
        def __init__(self, open_file: Callable[[], Any], log_dir: str) -> None:  # no super(): no Python writer
            self.event_writer = _NativeEvents(open_file, log_dir)

    class NativeSummaryWriter(SummaryWriter):
        """`SummaryWriter` writing its default event file with ferrotrain's native writer."""

        def __init__(self, open_file: Callable[[], Any], **kwargs: Any) -> None:
            self._open_file = open_file
            super().__init__(**kwargs)

        def _get_file_writer(self) -> Any:
            if self.all_writers is None or self.file_writer is None:
                self.file_writer = _NativeFileWriter(self._open_file, self.log_dir)
                self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
            return self.file_writer

    _summary_writer_class = NativeSummaryWriter
    return NativeSummaryWriter
