"""`CometLogger` with Lightning 2.6's arguments (built on `comet_ml.start`): hyperparameters as
experiment parameters, metrics with their step and epoch, `online=False` for an offline archive.
The `comet_ml` client is imported when the logger is constructed; the experiment starts on first use.

`comet_ml` queues messages for its own sender thread, so the training thread does not wait on it."""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Dict, Literal, Mapping, Optional, Union

from ferrotrain.loggers._client import import_client
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

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The comet experiment (`comet_ml.start`, an `OfflineExperiment` when `online=False`)."""
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
        self.experiment.log_metrics(values, step=step, epoch=epoch)

    @rank_zero_only
    def finalize(self, status: str) -> None:
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
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._comet = import_client("comet_ml", "comet_ml", "comet", "CometLogger")
