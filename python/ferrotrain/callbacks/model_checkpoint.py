"""`ModelCheckpoint`: when to save, under which name, and which files to keep (top-k by a monitored
metric, the latest, `last.ckpt`), with Lightning 2.x's options and file names
(`epoch=0-step=128.ckpt`). Saves go through `trainer.save_checkpoint` (as Lightning's do, so
subclasses and wrappers of it see them); the bytes are written in the background by the native
writer, and a save blocks training only while the tensors are snapshotted. A file reported in
`best_model_path` / `last_model_path` is at its final name, complete, when the next save starts,
when `fit` returns, and when `ckpt_path="best"`/`"last"` is resolved; a hook running in between
may find it still being written (its previous version, if any, stays whole until the rename)."""

import functools
import math
import os
import re
from datetime import timedelta
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ferrotrain.callbacks.checkpoint import Checkpoint
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.cloud_io import is_remote, path_exists, resolve_dir
from ferrotrain.utilities.rank_zero import rank_zero_info


class ModelCheckpoint(Checkpoint):
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: Optional[Union[str, os.PathLike]] = None,
        filename: Optional[str] = None,
        monitor: Optional[str] = None,
        verbose: bool = False,
        save_last: Optional[Union[bool, str]] = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: Optional[int] = None,
        train_time_interval: Optional[timedelta] = None,
        every_n_epochs: Optional[int] = None,
        save_on_train_epoch_end: Optional[bool] = None,
        enable_version_counter: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise MisconfigurationException(f"`mode` can be min, max but got {mode} (`ModelCheckpoint(mode={mode!r})`)")
        if not isinstance(save_top_k, int) or isinstance(save_top_k, bool) or save_top_k < -1:
            raise MisconfigurationException(
                f"Invalid value for save_top_k={save_top_k}. Must be >= -1 (`ModelCheckpoint(save_top_k=...)`: an int)")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration. No quantity for "
                "top_k to track. Set `monitor` or use save_top_k in (-1, 0, 1)"
            )
        if save_last not in (None, True, False, "link"):
            raise MisconfigurationException(f"`ModelCheckpoint(save_last={save_last!r})` must be None, True, False or 'link'")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise MisconfigurationException(
                    f"Invalid value for {name}={value}. Must be >= 0 (`ModelCheckpoint({name}=...)`: None or an int)")
        if sum(v is not None and v != 0 for v in (every_n_train_steps, every_n_epochs, train_time_interval)) > 1:
            raise MisconfigurationException(
                f"Combination of parameters every_n_train_steps={every_n_train_steps}, every_n_epochs={every_n_epochs} "
                f"and train_time_interval={train_time_interval} should be mutually exclusive."
            )
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs, every_n_train_steps = 1, 0
        self._every_n_train_steps = every_n_train_steps or 0
        self._every_n_epochs = every_n_epochs if every_n_epochs is not None else 0
        self._train_time_interval = train_time_interval
        self._last_time_check: Optional[float] = None
        self.dirpath: Optional[str] = resolve_dir(dirpath) if dirpath is not None else None
        self.filename = filename
        self.best_k_models: Dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.best_model_score: Optional[torch.Tensor] = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.current_score: Optional[torch.Tensor] = None
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
        self._last_global_step_saved = 0
        self._last_checkpoint_saved = ""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs, train_time_interval=self._train_time_interval,
        )

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            # Rank zero's choice (its logger's version) is every rank's.
            strategy = getattr(trainer, "strategy", None)
            resolved = self._resolve_dir(trainer)
            self.dirpath = strategy.broadcast(resolved) if strategy is not None else resolved
        if self.save_last == "link" and is_remote(self.dirpath):
            # fsspec file systems have no symbolic links: Lightning refuses the setting here too
            raise ValueError(
                f"`ModelCheckpoint(save_last='link')` is only supported for local file paths, got "
                f"`dirpath={self.dirpath}`. Use `save_last=True` to write `last.ckpt` as a full checkpoint."
            )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        import time

        self._last_time_check = time.monotonic()

    def _idle_hooks(self) -> frozenset:
        """Hooks that do nothing with this configuration (the Trainer then does not call them):
        `on_train_batch_end` when saving is not step- or time-based, unless a subclass overrides it."""
        if (
            type(self).on_train_batch_end is ModelCheckpoint.on_train_batch_end
            and self._every_n_train_steps < 1
            and self._train_time_interval is None
        ):
            return frozenset({"on_train_batch_end"})
        return frozenset()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Called every step: the cheapest test first, so epoch-based saving costs nothing here.
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return
        if self._skip(trainer):
            return
        if self._train_time_interval is not None:
            import time

            now = time.monotonic()
            if self._last_time_check is not None and now - self._last_time_check < self._train_time_interval.total_seconds():
                return
            self._last_time_check = now
        elif self._every_n_train_steps < 1 or trainer.global_step % self._every_n_train_steps != 0:
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._skip(trainer) and self._should_save_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._skip(trainer) and not self._should_save_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """With `save_on_exception=True`: a checkpoint of the state the error left (named as the
        regular ones), and `last` when asked for, unless this step was already saved."""
        if not self.save_on_exception or self._skip(trainer):
            return
        if self.dirpath is None:
            self.dirpath = self._resolve_dir(trainer)
        metrics = self._monitor_candidates(trainer)
        path = os.path.join(self.dirpath, self.format_checkpoint_name(metrics))
        self._write(trainer, path)
        if self.save_last:
            self._save_last(trainer, metrics)
        self._last_global_step_saved = trainer.global_step
        rank_zero_info(f"An {type(exception).__name__} was raised with message: {exception}, saved checkpoint to {path}")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # `save_last=True` leaves a `last` checkpoint even when no regular save happened.
        if self.save_last and not self._last_checkpoint_saved and not trainer.fast_dev_run:
            if self.dirpath is None:
                self.dirpath = self._resolve_dir(trainer)
            self._save_last(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> Dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict.get("dirpath") == self.dirpath:
            self.best_k_models = dict(state_dict.get("best_k_models", {}))
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.last_model_path = state_dict.get("last_model_path", "")
        self.best_model_score = state_dict.get("best_model_score")
        self.best_model_path = state_dict.get("best_model_path", "")

    # ------------------------------------------------------------------ decisions
    def _skip(self, trainer: Any) -> bool:
        return bool(
            trainer.fast_dev_run
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _epoch_due(self, trainer: Any) -> bool:
        n = self._every_n_epochs
        return n >= 1 and (trainer.current_epoch + 1) % n == 0

    def _should_save_on_train_epoch_end(self, trainer: Any) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False
        if sum(trainer.num_val_batches) == 0:
            return True
        return trainer.val_check_interval == 1.0

    def _resolve_dir(self, trainer: Any) -> str:
        loggers = trainer.loggers
        if loggers:
            lg = loggers[0]
            save_dir = lg.save_dir or trainer.default_root_dir
            name, version = lg.name, lg.version
            version = version if isinstance(version, str) else f"version_{version}"
            return resolve_dir(os.path.join(save_dir, str(name), version, "checkpoints"))
        return resolve_dir(os.path.join(trainer.default_root_dir, "checkpoints"))

    # ------------------------------------------------------------------ saving
    def _monitor_candidates(self, trainer: Any) -> Dict[str, torch.Tensor]:
        metrics = dict(trainer.callback_metrics)
        metrics.setdefault("epoch", torch.tensor(trainer.current_epoch))
        metrics.setdefault("step", torch.tensor(trainer.global_step))
        return metrics

    def _save(self, trainer: Any) -> None:
        if self.dirpath is None:
            self.dirpath = self._resolve_dir(trainer)
        metrics = self._monitor_candidates(trainer)
        if self.save_top_k != 0:
            if self.monitor is None:
                self._save_latest(trainer, metrics)
            else:
                self._save_monitored(trainer, metrics)
        if self.save_last:
            self._save_last(trainer, metrics)
        self._last_global_step_saved = trainer.global_step

    def _save_latest(self, trainer: Any, metrics: Dict[str, torch.Tensor]) -> None:
        path = self._unique_path(self.format_checkpoint_name(metrics), trainer)
        # Bookkeeping first, as Lightning: the checkpoint then records itself as the best.
        previous, self.best_model_path = self.best_model_path, path
        self._write(trainer, path)
        if self.save_top_k == 1 and previous and previous != path:
            self._remove(trainer, previous)

    def _save_monitored(self, trainer: Any, metrics: Dict[str, torch.Tensor]) -> None:
        if self.monitor not in metrics:
            raise MisconfigurationException(
                f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the returned "
                f"metrics: {sorted(k for k in metrics)}. HINT: did you call `self.log({self.monitor!r}, value)`?"
            )
        current = metrics[self.monitor].detach().float().cpu().reshape(())
        if torch.isnan(current):
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        self.current_score = current
        if not self._improves_top_k(current):
            if self.verbose:
                rank_zero_info(f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} was not in top {self.save_top_k}")
            return
        path = self._unique_path(self.format_checkpoint_name(metrics), trainer)
        # Bookkeeping first, as Lightning: the checkpoint then holds the top k it belongs to.
        self.best_k_models[path] = current
        worst = None
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            worst = max(self.best_k_models, key=self._rank_key)
            self.best_k_models.pop(worst)
        if self.best_k_models:
            self.kth_best_model_path = max(self.best_k_models, key=self._rank_key)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
            self.best_model_path = min(self.best_k_models, key=self._rank_key)
            self.best_model_score = self.best_k_models[self.best_model_path]
        self._write(trainer, path)
        if worst is not None and worst != path:
            self._remove(trainer, worst)
        if self.verbose:
            rank_zero_info(f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} reached {float(current):.5f}; saved {path!r}")

    def to_yaml(self, filepath: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        """Write `best_k_models` ({checkpoint path: score}) as YAML to `filepath` (default:
        `best_k_models.yaml` in `dirpath`), as Lightning's does."""
        from ferrotrain.loggers.utilities import save_hparams_to_yaml

        if filepath is None:
            if not self.dirpath:
                raise MisconfigurationException("`ModelCheckpoint.to_yaml()` needs a `filepath` when `dirpath` is not set yet")
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        save_hparams_to_yaml(os.fspath(filepath), {k: float(v) for k, v in self.best_k_models.items()})

    def _rank_key(self, path: str) -> float:
        v = float(self.best_k_models[path])
        return v if self.mode == "min" else -v

    def _improves_top_k(self, current: torch.Tensor) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        kth = self.best_k_models[self.kth_best_model_path]
        return bool(current < kth) if self.mode == "min" else bool(current > kth)

    def _save_last(self, trainer: Any, metrics: Dict[str, torch.Tensor]) -> None:
        name = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        path = os.path.join(self.dirpath or "", name)
        if self._enable_version_counter:
            # A `last.ckpt` this callback did not write (an earlier run's) is kept: `last-v1.ckpt`.
            version = self.STARTING_VERSION
            while path != self.last_model_path and path_exists(path):
                path = os.path.join(self.dirpath or "", self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST, ver=version))
                version += 1
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            tmp = path + ".tmp-link"
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(os.path.relpath(self._last_checkpoint_saved, os.path.dirname(path)), tmp)
            os.replace(tmp, path)
        else:
            self.last_model_path = path
            self._write(trainer, path)
        self.last_model_path = path

    def _write(self, trainer: Any, path: str) -> None:
        self._save_checkpoint(trainer, path)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        """Lightning's hook point: `trainer.save_checkpoint(filepath, self.save_weights_only)`,
        which this call routes to the background writer."""
        path = filepath
        trainer._checkpoint_async = True
        try:
            trainer.save_checkpoint(path, self.save_weights_only)
        finally:
            trainer.__dict__.pop("_checkpoint_async", None)
        self._last_checkpoint_saved = path
        # Loggers hear of checkpoints ModelCheckpoint saves (not of `trainer.save_checkpoint`), as in Lightning.
        for lg in trainer.loggers:
            lg.after_save_checkpoint(self)

    def _remove(self, trainer: Any, path: str) -> None:
        from ferrotrain.trainer import checkpointing

        if not getattr(trainer, "is_global_zero", True):
            return  # files belong to rank zero
        resumed = getattr(trainer, "ckpt_path", None)
        if resumed and os.path.abspath(os.fspath(resumed)) == os.path.abspath(path):
            return  # the checkpoint this run resumed from stays, as in Lightning
        # Deleted only once the checkpoint replacing it is durable, without blocking the loop.
        checkpointing.remove_when_durable(trainer, self, path)

    def _may_remove(self, path: str) -> bool:
        return path not in self.best_k_models and path not in (self.best_model_path, self.last_model_path)

    def _unique_path(self, name: str, trainer: Any) -> str:
        path = os.path.join(self.dirpath or "", name)
        if not self._enable_version_counter:
            return path
        stem = path[: -len(self.FILE_EXTENSION)]
        version = self.STARTING_VERSION
        while path_exists(path) and path not in self.best_k_models and path != self.best_model_path:
            path = f"{stem}{self.CHECKPOINT_JOIN_CHAR}v{version}{self.FILE_EXTENSION}"
            version += 1
        return path

    def format_checkpoint_name(self, metrics: Dict[str, Any], filename: Optional[str] = None, ver: Optional[int] = None) -> str:
        template = filename or self.filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        name = self._format(template, metrics)
        if ver is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        return name + self.FILE_EXTENSION

    def _format(self, template: str, metrics: Dict[str, Any]) -> str:
        fmt, keys = _parse_template(template, self.auto_insert_metric_name, self.CHECKPOINT_EQUALS_CHAR)
        values = {}
        for key, safe in keys:
            v = metrics.get(key, 0)
            if isinstance(v, torch.Tensor):
                v = v.item()
            values[safe] = v
        name = fmt.format(**values)
        return name.replace("___", "/").replace("__dot__", ".") if "___" in name or "__dot__" in name else name


@functools.lru_cache(maxsize=64)
def _parse_template(template: str, auto_insert_metric_name: bool, equals: str) -> Tuple[str, Tuple[Tuple[str, str], ...]]:
    """A filename template as a `str.format` string and its (metric key, format field) pairs,
    parsed once per template rather than at every save. `{val/loss}` becomes the field
    `val___loss` (`/` and `.` cannot appear in a field name), put back in the formatted name."""
    groups = re.findall(r"(\{.*?)[:\}]", template)
    for group in sorted(set(groups), key=len, reverse=True):
        key = group[1:]
        if auto_insert_metric_name:
            template = template.replace(group, key + equals + "{" + key)
        template = template.replace("{" + key, "{" + key.replace("/", "___").replace(".", "__dot__"))
    keys = tuple((g[1:], g[1:].replace("/", "___").replace(".", "__dot__")) for g in groups)
    return template, keys
