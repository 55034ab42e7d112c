"""`MLFlowLogger` with Lightning 2.x's arguments: hyperparameters as run params, metrics as
per-step run metrics, checkpoints as run artifacts when `log_model` is set. The `mlflow` client
(`mlflow-skinny` is enough) is imported when the logger is constructed.

Metrics reach it only at the Trainer's logging interval. On the training thread a logging step
only queues them: a background thread (`BackgroundSender`) sends what piled up in one `log_batch`
call (a file store reads the run's metadata on every call), and `finalize` (or any use of
`experiment`) flushes the queue first. `synchronous=True` sends each call at once instead, as
mlflow's own option says; `synchronous=False` is passed on to mlflow."""

from __future__ import annotations

import os
import re
import time
from argparse import Namespace
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Union

from ferrotrain.loggers._client import import_client
from ferrotrain.loggers._sender import BackgroundSender
from ferrotrain.loggers.logger import Logger, rank_zero_experiment
from ferrotrain.loggers.utilities import _add_prefix, _convert_params, _flatten_dict
from ferrotrain.utilities.rank_zero import rank_zero_only, rank_zero_warn

_LOCAL_FILE_URI_PREFIX = "file:"
_PARAM_VALUE_LIMIT = 250  # mlflow rejects longer param values
_BATCH_LIMIT = 100  # mlflow's most params per log_batch call
_METRIC_BATCH_LIMIT = 1000  # mlflow's most metrics per log_batch call
_SEND_LINGER_S = 0.5  # how long queued metrics wait for more to share their log_batch call
_RUN_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}


class MLFlowLogger(Logger):
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: Optional[str] = None,
        tracking_uri: Optional[str] = os.getenv("MLFLOW_TRACKING_URI"),
        tags: Optional[Dict[str, Any]] = None,
        save_dir: Optional[str] = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        checkpoint_path_prefix: str = "",
        prefix: str = "",
        artifact_location: Optional[str] = None,
        run_id: Optional[str] = None,
        synchronous: Optional[bool] = None,
    ) -> None:
        if log_model not in (True, False, "all"):
            raise ValueError(f"MLFlowLogger(log_model={log_model!r}): expected True, False or 'all'")
        self._mlflow = import_client("mlflow", "mlflow", "mlflow", "MLFlowLogger")
        super().__init__()
        if not tracking_uri and save_dir is not None:
            tracking_uri = f"{_LOCAL_FILE_URI_PREFIX}{save_dir}"
        self._experiment_name = experiment_name
        self._experiment_id: Optional[str] = None
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self.tags = tags
        self._log_model = log_model
        self._logged_model_time: Dict[str, float] = {}
        self._checkpoint_callback: Any = None
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._log_batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._checkpoint_path_prefix = checkpoint_path_prefix
        self._initialized = False
        self._synchronous = synchronous
        self._sender: Optional[BackgroundSender] = None
        self._clean_keys: Dict[str, str] = {}  # metric name -> the name mlflow accepts

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The `mlflow.MlflowClient`; the experiment and run are created on first use. Metrics
        still queued are sent first, so what the caller does with the client comes after them."""
        if self._initialized:
            if self._sender is not None and self._sender.pending:
                self._sender.flush()
            return self._mlflow_client
        mlflow = self._mlflow
        self._mlflow_client = mlflow.tracking.MlflowClient(self._tracking_uri)
        if self._run_id is not None:
            run = self._mlflow_client.get_run(self._run_id)
            self._experiment_id = run.info.experiment_id
            self._initialized = True
            return self._mlflow_client
        if self._experiment_id is None:
            found = self._mlflow_client.get_experiment_by_name(self._experiment_name)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self._mlflow_client.create_experiment(
                    name=self._experiment_name, artifact_location=self._artifact_location)
        tags = dict(self.tags or {})
        if self._run_name is not None:
            tags.setdefault("mlflow.runName", self._run_name)
        from mlflow.tracking.context.registry import resolve_tags

        run = self._mlflow_client.create_run(experiment_id=self._experiment_id, tags=resolve_tags(tags))
        self._run_id = run.info.run_id
        self._initialized = True
        return self._mlflow_client

    @property
    def run_id(self) -> Optional[str]:
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> Optional[str]:
        _ = self.experiment
        return self._experiment_id

    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], Namespace], *args: Any, **kwargs: Any) -> None:
        from mlflow.entities import Param

        flat = _flatten_dict(_convert_params(params))
        entries = [Param(key=str(k), value=str(v)[:_PARAM_VALUE_LIMIT]) for k, v in flat.items()]
        for start in range(0, len(entries), _BATCH_LIMIT):
            self.experiment.log_batch(run_id=self.run_id, params=entries[start:start + _BATCH_LIMIT], **self._log_batch_kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        now_ms = int(time.time() * 1000)
        values: List[Any] = []
        for key, value in metrics.items():
            if isinstance(value, str):
                rank_zero_warn(f"MLFlowLogger: discarding metric with string value {key}={value}.")
                continue
            values.append((self._clean_key(key), float(value)))
        if not values:
            return
        if not self._initialized:
            _ = self.experiment  # the run is created here, so that its errors reach the caller
        record = (now_ms, step or 0, values)
        if self._synchronous:
            self._send_metrics([record])
            return
        if self._sender is None:
            self._sender = BackgroundSender(self._send_metrics, name="MLFlowLogger-sender",
                                            max_batch=_METRIC_BATCH_LIMIT, linger_s=_SEND_LINGER_S)
        self._sender.put(record)

    def _clean_key(self, key: str) -> str:
        clean = self._clean_keys.get(key)
        if clean is None:
            clean = self._clean_keys[key] = re.sub(r"[^a-zA-Z0-9_/. -]+", "", key)
            if clean != key:
                rank_zero_warn(f"MLFlowLogger: metric name {key!r} has characters mlflow rejects; logged as {clean!r}.")
        return clean

    def _send_metrics(self, records: List[Any]) -> None:
        """The queued `(time, step, values)` records in one `log_batch` call. mlflow rejects a
        batch whole, so when it does, each record goes on its own: the records a `log_metrics`
        call at a time would have stored are stored, and the first rejection is raised."""
        try:
            self._log_batch(records)
        except Exception:
            if len(records) == 1:
                raise
            first_error: Optional[BaseException] = None
            for record in records:
                try:
                    self._log_batch([record])
                except Exception as err:
                    first_error = first_error or err
            if first_error is not None:
                raise first_error

    def _log_batch(self, records: List[Any]) -> None:
        from mlflow.entities import Metric

        entries = [Metric(key=key, value=value, timestamp=now_ms, step=step)
                   for now_ms, step, values in records for key, value in values]
        for start in range(0, len(entries), _METRIC_BATCH_LIMIT):
            self._mlflow_client.log_batch(run_id=self._run_id, metrics=entries[start:start + _METRIC_BATCH_LIMIT],
                                          **self._log_batch_kwargs)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        try:
            if self._sender is not None:
                self._sender.close()  # every queued metric is in the store before the run ends
        finally:
            self._sender = None
            if self._checkpoint_callback is not None:
                self._scan_and_log_checkpoints(self._checkpoint_callback)
            if self.experiment.get_run(self.run_id):
                self.experiment.set_terminated(self.run_id, _RUN_STATUS.get(status, status))

    @property
    def save_dir(self) -> Optional[str]:
        """The local folder of a `file:` tracking URI, else None."""
        if self._tracking_uri and self._tracking_uri.startswith(_LOCAL_FILE_URI_PREFIX):
            return self._tracking_uri[len(_LOCAL_FILE_URI_PREFIX):]
        return None

    @property
    def name(self) -> Optional[str]:
        return self.experiment_id

    @property
    def version(self) -> Optional[str]:
        return self.run_id

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        # log_model=True uploads once at the end (the kept top-k); "all" uploads every save
        if self._log_model == "all" or (self._log_model is True and getattr(checkpoint_callback, "save_top_k", 1) == -1):
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        paths = set(getattr(checkpoint_callback, "best_k_models", {}) or {})
        for attr in ("last_model_path", "best_model_path"):
            path = getattr(checkpoint_callback, attr, "")
            if path:
                paths.add(path)
        for path in sorted(paths):
            if not os.path.isfile(path):
                continue
            mtime = os.path.getmtime(path)
            if self._logged_model_time.get(path) == mtime:
                continue  # already uploaded, unchanged
            artifact_path = f"{self._checkpoint_path_prefix}{Path(path).stem}"
            self.experiment.log_artifact(self._run_id, path, artifact_path)
            self._logged_model_time[path] = mtime

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_mlflow", None)
        state.pop("_mlflow_client", None)
        state["_sender"] = None  # a copy sends through its own thread
        state["_initialized"] = False
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._mlflow = import_client("mlflow", "mlflow", "mlflow", "MLFlowLogger")
