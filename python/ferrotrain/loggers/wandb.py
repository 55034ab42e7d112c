"""`WandbLogger` with Lightning 2.x's arguments: hyperparameters into the run config, metrics
with `trainer/global_step` as their step metric, checkpoints as `model` artifacts when `log_model`
is set. The `wandb` client is imported when the logger is constructed; the run starts on first use.

`wandb.log` hands each record to W&B's service process over a socket and waits for the hand-off;
a logging step on the training thread only queues the record, and a background thread
(`BackgroundSender`) makes the `log` calls. `finalize` (or any use of `experiment`) waits until
the queue is empty, so `wandb.finish()` after `fit` finds every record."""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Any, Dict, List, Literal, Mapping, Optional, Union

from ferrotrain.loggers._client import import_client
from ferrotrain.loggers._sender import BackgroundSender
from ferrotrain.loggers.logger import Logger, rank_zero_experiment
from ferrotrain.loggers.utilities import _add_prefix, _convert_params
from ferrotrain.utilities.rank_zero import rank_zero_only

_STEP_METRIC = "trainer/global_step"


class WandbLogger(Logger):
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: Optional[str] = None,
        save_dir: Union[str, "os.PathLike[str]"] = ".",
        version: Optional[str] = None,
        offline: bool = False,
        dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        id: Optional[str] = None,
        anonymous: Optional[bool] = None,
        project: Optional[str] = None,
        log_model: Union[Literal["all"], bool] = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: Optional[str] = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        if offline and log_model:
            raise ValueError(
                f"WandbLogger(offline=True, log_model={log_model!r}): checkpoints cannot be uploaded in offline "
                "mode; pass log_model=False or offline=False"
            )
        if log_model not in (True, False, "all"):
            raise ValueError(f"WandbLogger(log_model={log_model!r}): expected True, False or 'all'")
        if add_file_policy not in ("mutable", "immutable"):
            raise ValueError(f"WandbLogger(add_file_policy={add_file_policy!r}): expected 'mutable' or 'immutable'")
        self._wandb = import_client("wandb", "wandb", "wandb", "WandbLogger")
        super().__init__()
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._logged_model_time: Dict[str, float] = {}
        self._checkpoint_callback: Any = None
        self._checkpoint_name = checkpoint_name
        self._add_file_policy = add_file_policy
        self._sender: Optional[BackgroundSender] = None
        # `save_dir` wins over `dir` (the name wandb.init uses), as in Lightning
        chosen = save_dir or dir
        save_dir = os.fspath(chosen) if chosen else "."
        self._save_dir = save_dir
        self._project = project or os.environ.get("WANDB_PROJECT", "lightning_logs")
        self._name = name
        self._id = version or id
        self._wandb_init: Dict[str, Any] = dict(
            name=name, project=self._project, dir=save_dir, id=self._id, resume="allow",
            anonymous="allow" if anonymous else None,
        )
        if offline:
            self._wandb_init["mode"] = "offline"
        self._wandb_init.update(**kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The `wandb` run (started on first use, or the one already running in this process).
        Records still queued are logged first, so what the caller logs comes after them."""
        if self._sender is not None and self._sender.pending:
            self._sender.flush()
        if self._experiment is None:
            wandb = self._wandb
            if wandb.run is not None:
                self._experiment = wandb.run
            else:
                os.makedirs(self._save_dir, exist_ok=True)
                self._experiment = wandb.init(**self._wandb_init)
            if getattr(self._experiment, "define_metric", None):
                self._experiment.define_metric(_STEP_METRIC)
                self._experiment.define_metric("*", step_metric=_STEP_METRIC, step_sync=True)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], Namespace], *args: Any, **kwargs: Any) -> None:
        clean = {k: (getattr(v, "__name__", repr(v)) if callable(v) else v) for k, v in _convert_params(params).items()}
        self.experiment.config.update(clean, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        metrics = dict(_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR))
        if step is not None:
            metrics[_STEP_METRIC] = step
        if self._experiment is None:
            _ = self.experiment  # the run starts here, so that its errors reach the caller
        if self._sender is None:
            self._sender = BackgroundSender(self._send_records, name="WandbLogger-sender")
        self._sender.put(metrics)

    def _send_records(self, records: List[Dict[str, Any]]) -> None:
        for record in records:
            self._experiment.log(record)

    def _flush(self) -> None:
        if self._sender is not None:
            sender, self._sender = self._sender, None
            sender.close()

    @property
    def save_dir(self) -> Optional[str]:
        return self._save_dir

    @property
    def name(self) -> Optional[str]:
        return self._project

    @property
    def version(self) -> Optional[str]:
        return self._experiment.id if self._experiment is not None else self._id

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and getattr(checkpoint_callback, "save_top_k", 1) == -1):
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._flush()  # every queued record reaches W&B, whatever the status
        if status != "success":
            return  # as Lightning: no checkpoint upload for a failed run
        if self._checkpoint_callback is not None and self._experiment is not None:
            self._scan_and_log_checkpoints(self._checkpoint_callback)

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        paths: List[str] = sorted(set(getattr(checkpoint_callback, "best_k_models", {}) or {})
                                  | {p for p in (checkpoint_callback.last_model_path, checkpoint_callback.best_model_path) if p})
        for path in paths:
            if not os.path.isfile(path):
                continue
            mtime = os.path.getmtime(path)
            if self._logged_model_time.get(path) == mtime:
                continue
            score = checkpoint_callback.best_k_models.get(path)
            metadata = {"score": score.item() if hasattr(score, "item") else score, "original_filename": os.path.basename(path)}
            artifact = self._wandb.Artifact(name=self._checkpoint_name or f"model-{self.experiment.id}", type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self._add_file_policy)
            aliases = ["latest", "best"] if path == checkpoint_callback.best_model_path else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._logged_model_time[path] = mtime

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_wandb", None)
        if self._experiment is not None:
            state["_id"] = getattr(self._experiment, "id", None)
            state["_wandb_init"] = {**self._wandb_init, "id": state["_id"]}
        state["_experiment"] = None
        state["_sender"] = None  # a copy logs through its own thread
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._wandb = import_client("wandb", "wandb", "wandb", "WandbLogger")
