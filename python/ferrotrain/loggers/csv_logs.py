"""`CSVLogger`: metrics to `metrics.csv` and hyperparameters to `hparams.yaml`, laid out as
Lightning does: `save_dir/name/version_N/`. Rows are buffered in memory and written every
`flush_logs_every_n_steps` steps and on `save()`/`finalize()`; when a new metric name appears the
file is rewritten with the wider header, so every row always has every column.

It owns only files under its `log_dir`; the Trainer decides when to call it.
"""

from __future__ import annotations

import csv
import os
from argparse import Namespace
from typing import Any, Dict, List, Mapping, Optional, Set, Union

from ferrotrain.loggers.logger import VersionedLogger, rank_zero_experiment
from ferrotrain.loggers.utilities import _add_prefix, _convert_params, save_hparams_to_yaml
from ferrotrain.utilities.cloud_io import get_filesystem
from ferrotrain.utilities.rank_zero import rank_zero_only, rank_zero_warn


class ExperimentWriter:
    """Buffers metric rows and writes `metrics.csv` / `hparams.yaml` into `log_dir`."""

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics: List[Dict[str, Any]] = []
        self.metrics_keys: List[str] = []
        self.hparams: Dict[str, Any] = {}
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        # every file goes through fsspec so that `memory://`/`s3://` save dirs work as locally
        self._fs = get_filesystem(log_dir)
        self._check_log_dir_exists()
        self._fs.makedirs(log_dir, exist_ok=True)

    def log_hparams(self, params: Dict[str, Any]) -> None:
        """Merge `params` into the recorded hyperparameters and rewrite `hparams.yaml`."""
        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Buffer one row."""
        if step is None:
            step = len(self.metrics)
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = step
        self.metrics.append(row)

    def save(self) -> None:
        """Append buffered rows to `metrics.csv` (rewriting it first if the header grew)."""
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        file_exists = self._fs.isfile(self.metrics_file_path)
        if new_keys and file_exists:
            self._rewrite_with_new_header(self.metrics_keys)
        with self._fs.open(self.metrics_file_path, "a" if file_exists else "w", newline="") as fp:
            writer = csv.DictWriter(fp, fieldnames=self.metrics_keys)
            if not file_exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []

    def _record_new_keys(self) -> Set[str]:
        current: Set[str] = set().union(*self.metrics)
        new_keys = current - set(self.metrics_keys)
        self.metrics_keys.extend(new_keys)
        self.metrics_keys.sort()
        return new_keys

    def _rewrite_with_new_header(self, fieldnames: List[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as fp:
            rows = list(csv.DictReader(fp))
        with self._fs.open(self.metrics_file_path, "w", newline="") as fp:
            writer = csv.DictWriter(fp, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def _check_log_dir_exists(self) -> None:
        if self._fs.isdir(self.log_dir) and self._fs.ls(self.log_dir):
            rank_zero_warn(
                f"Experiment logs directory {self.log_dir} exists and is not empty."
                " Previous log files in this directory will be deleted when the new ones are saved!"
            )
            if self._fs.isfile(self.metrics_file_path):
                self._fs.rm(self.metrics_file_path)


class CSVLogger(VersionedLogger):
    """Log to the local file system: `metrics.csv` and `hparams.yaml` in
    `save_dir/name/version_N` (Lightning's `CSVLogger`).

    Args:
        save_dir: root folder of all experiments.
        name: experiment name; `None` or `""` puts the versions directly in `save_dir`.
        version: an int (folder `version_<int>`) or a string (used as the folder name); by default
            the next free `version_N`.
        prefix: put in front of every metric name, joined with `-`.
        flush_logs_every_n_steps: write buffered rows to disk every this many steps.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: Union[str, "os.PathLike[str]"],
        name: Optional[str] = "lightning_logs",
        version: Optional[Union[int, str]] = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name, version)
        self._prefix = prefix
        self._flush_logs_every_n_steps = max(1, int(flush_logs_every_n_steps))
        self._experiment: Optional[ExperimentWriter] = None

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.root_dir, version)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (created, with its folder, on first use)."""
        if self._experiment is None:
            get_filesystem(self.root_dir).makedirs(self.root_dir, exist_ok=True)
            self._experiment = ExperimentWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Optional[Union[Dict[str, Any], Namespace]] = None, *args: Any, **kwargs: Any) -> None:
        self.experiment.log_hparams(_convert_params(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        experiment = self.experiment
        if step is None:
            step = len(experiment.metrics)
        experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return  # nothing was logged: create no folder
        self.save()

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state
