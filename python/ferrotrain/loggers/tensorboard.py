"""`TensorBoardLogger`: real TensorBoard event files written with
`torch.utils.tensorboard.SummaryWriter`, in Lightning's layout `save_dir/name/version_N[/sub_dir]`,
plus `hparams.yaml` and the `hp_metric` placeholder Lightning logs with the hyperparameters.

`tensorboard` is an optional dependency: it is looked up (not imported) when the logger is created,
and imported only when the writer is first used, so `import ferrotrain` stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from argparse import Namespace
from typing import Any, Dict, Mapping, Optional, Union

from ferrotrain.loggers.logger import VersionedLogger, rank_zero_experiment
from ferrotrain.loggers.utilities import (
    _add_prefix,
    _convert_params,
    _flatten_dict,
    _sanitize_params,
    save_hparams_to_yaml,
)
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
        **kwargs: passed to `SummaryWriter` (e.g. `max_queue`, `flush_secs`).

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
        """The `SummaryWriter` (created on first use)."""
        if self._experiment is not None:
            return self._experiment
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ModuleNotFoundError(_MISSING_TENSORBOARD, name="tensorboard") from err
        os.makedirs(self.root_dir, exist_ok=True)
        self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
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
                raise ValueError(
                    f"TensorBoardLogger cannot log {key}={value!r}: log a number, a 0-d tensor or a dict of numbers."
                ) from err

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
                "Could not log computational graph to TensorBoard: the `model.example_input_array` attribute"
                " is not set and `input_array` was not given."
            )
            return
        import torch

        if not isinstance(input_array, (torch.Tensor, tuple)):
            rank_zero_warn(
                "Could not log computational graph to TensorBoard: the input has type"
                f" {type(input_array).__name__}; give a tensor or a tuple of the positional arguments of `forward()`."
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
        if os.path.isdir(log_dir):
            if not os.path.isfile(hparams_file):
                save_hparams_to_yaml(hparams_file, self.hparams)
            self._hparams_file_written = True

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return
        if status == "success":
            self.save()
        self._experiment.flush()
        self._experiment.close()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        pass

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state
