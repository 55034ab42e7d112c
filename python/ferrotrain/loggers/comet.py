"""`CometLogger` with Lightning 2.6's arguments (built on `comet_ml.start`): hyperparameters as
experiment parameters, metrics with their step and epoch, `online=False` for an offline archive.
The `comet_ml` client is imported when the logger is constructed; the experiment starts on first use.

A call of comet's `log_metrics` validates, converts and queues each value (about 0.1 ms on the
training thread); a logging step only queues the record, and a background thread
(`BackgroundSender`) makes the client calls. `finalize` (or any use of `experiment`) waits until
the queue is empty, so the archive or the upload holds every record."""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

from ferrotrain.loggers._client import import_client
from ferrotrain.loggers._sender import BackgroundSender
from ferrotrain.loggers.logger import Logger, rank_zero_experiment
from ferrotrain.loggers.utilities import _add_prefix, _convert_params, _flatten_dict
from ferrotrain.utilities.rank_zero import rank_zero_only

_FRAMEWORK = "pytorch-lightning"


class CometLogger(Logger):
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        workspace: Optional[str] = None,
        project: Optional[str] = None,
        experiment_key: Optional[str] = None,
        mode: Optional[Literal["get_or_create", "get", "create"]] = None,
        online: Optional[bool] = None,
        prefix: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if mode not in (None, "get_or_create", "get", "create"):
            raise ValueError(f"CometLogger(mode={mode!r}): expected None, 'get_or_create', 'get' or 'create'")
        self._comet = import_client("comet_ml", "comet_ml", "comet", "CometLogger")
        super().__init__()
        self._api_key = api_key
        self._workspace = workspace
        self._project_name = project
        self._experiment_key = experiment_key
        self._mode = mode
        self._online = online
        self._prefix = prefix or ""
        self._kwargs = kwargs
        self._experiment: Any = None
        self._sender: Optional[BackgroundSender] = None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The comet experiment (`comet_ml.start`, an `OfflineExperiment` when `online=False`).
        Records still queued are logged first, so what the caller logs comes after them."""
        if self._sender is not None and self._sender.pending:
            self._sender.flush()
        if self._experiment is None:
            comet = self._comet
            self._experiment = comet.start(
                api_key=self._api_key, workspace=self._workspace, project=self._project_name,
                mode=self._mode, online=self._online, experiment_key=self._experiment_key,
                experiment_config=comet.ExperimentConfig(**self._kwargs),
            )
            self._experiment_key = self._experiment.get_key()
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], Namespace], *args: Any, **kwargs: Any) -> None:
        self.experiment.log_parameters(_flatten_dict(_convert_params(params)))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Union[float, Any]], step: Optional[int] = None) -> None:
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        epoch = values.pop("epoch", None)  # comet records the epoch beside the step, not as a metric
        values = dict(_add_prefix(values, self._prefix, self.LOGGER_JOIN_CHAR))
        if self._experiment is None:
            _ = self.experiment  # the experiment starts here, so that its errors reach the caller
        if self._sender is None:
            self._sender = BackgroundSender(self._send_records, name="CometLogger-sender")
        self._sender.put((values, step, epoch))

    def _send_records(self, records: List[Tuple[Dict[str, Any], Optional[int], Any]]) -> None:
        for values, step, epoch in records:
            self._experiment.log_metrics(values, step=step, epoch=epoch)

    def _flush(self) -> None:
        if self._sender is not None:
            sender, self._sender = self._sender, None
            sender.close()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._flush()  # every queued record reaches comet before the experiment ends
        if self._experiment is None:
            return  # nothing was logged: start no experiment
        self._experiment.end()
        self._experiment = None  # a later fit starts (or resumes) its own experiment

    @property
    def save_dir(self) -> Optional[str]:
        return None

    @property
    def name(self) -> Optional[str]:
        if self._experiment is not None and self._experiment.project_name is not None:
            return self._experiment.project_name
        return self._project_name

    @property
    def version(self) -> Optional[str]:
        return self._experiment_key

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_comet", None)
        state["_experiment"] = None
        state["_sender"] = None  # a copy logs through its own thread
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._comet = import_client("comet_ml", "comet_ml", "comet", "CometLogger")
