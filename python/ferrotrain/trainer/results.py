"""What `self.log` records, per loop: one entry per (hook, name), reduced in the native
`MetricStore`, and the views the Trainer exposes (`callback_metrics`, `logged_metrics`,
`progress_bar_metrics`).

Per call, `log` does a dict lookup and hands the value to the native store: a CPU tensor is read
in place through its data pointer (no `.item()`, no copy), a number is passed as is. Tensors on an
accelerator are accumulated on their device with torch ops and copied to the host only when the
metrics are flushed. Options are checked the first time a (hook, name) pair is logged.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Tuple

import torch

from ferrotrain import _core
from ferrotrain._dtypes import SCALAR_CODES as _DTYPE_CODES
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.apply_func import extract_batch_size

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}


def _reduce_name(reduce_fx: Any) -> str:
    if isinstance(reduce_fx, str):
        name = _REDUCE_NAMES.get(reduce_fx.lower())
    else:
        name = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
                sum: "sum", max: "max", min: "min"}.get(reduce_fx)
    if name is None:
        raise MisconfigurationException(
            f"`self.log(reduce_fx={reduce_fx!r})` must be one of 'mean', 'sum', 'max', 'min' "
            "(or torch.mean, torch.sum, torch.max, torch.min)"
        )
    return name


# Per-hook defaults and what is allowed, as Lightning's `_FxValidator`: (on_step default,
# on_epoch default, on_step allowed values, on_epoch allowed values). Hooks not listed cannot log.
_STEP = ((True, False), (False, True))
_EPOCH_ONLY = ((False,), (True,))
_EVAL = ((False, True), (True, False))
FX_DEFAULTS: Dict[str, Tuple[bool, bool, Tuple[bool, ...], Tuple[bool, ...]]] = {}
for _fx in ("training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward",
            "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
            "optimizer_step", "lr_scheduler_step", "backward", "optimizer_zero_grad",
            "configure_gradient_clipping", "clip_gradients"):
    FX_DEFAULTS[_fx] = (True, False) + _STEP
for _fx in ("on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_validation_start",
            "on_validation_epoch_start", "on_validation_epoch_end", "on_test_start",
            "on_test_epoch_start", "on_test_epoch_end", "on_fit_start", "on_validation_end"):
    FX_DEFAULTS[_fx] = (False, True) + _EPOCH_ONLY
for _fx in ("validation_step", "on_validation_batch_start", "on_validation_batch_end",
            "test_step", "on_test_batch_start", "on_test_batch_end"):
    FX_DEFAULTS[_fx] = (False, True) + _EVAL



def _refused_value(name: str, value: Any) -> MisconfigurationException:
    """Lightning's error for a `self.log` value that is not a number, a tensor or a Metric."""
    if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
        why = "nested dictionaries cannot be logged"
    else:
        why = f"`{type(value).__name__}` values cannot be logged"
    return MisconfigurationException(
        f"`self.log({name}, {value})` was called, but {why} (allowed: a number, a scalar torch.Tensor, or a "
        "torchmetrics Metric)"
    )

class _Entry:
    __slots__ = ("fx", "name", "options", "on_step", "on_epoch", "prog_bar", "logger", "reduce",
                 "slot", "dl_idx", "src_dl", "key", "step_key", "epoch_key", "device_acc", "device_weight", "device_last",
                 "sync", "metric", "metric_epoch")

    def __init__(self, fx: str, name: str, key: str, options: tuple, on_step: bool, on_epoch: bool,
                 prog_bar: bool, logger: bool, reduce: str, slot: int, dl_idx: Optional[int],
                 src_dl: Optional[int]) -> None:
        self.fx = fx
        self.name = name
        self.key = key
        # Forked names put the suffix last, as Lightning: `loss_step/dataloader_idx_0`.
        suffix = key[len(name):]
        self.step_key = f"{name}_step{suffix}" if on_epoch else key
        self.epoch_key = f"{name}_epoch{suffix}" if on_step else key
        self.options = options
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.prog_bar = prog_bar
        self.logger = logger
        self.reduce = reduce
        self.slot = slot
        self.dl_idx = dl_idx
        # The dataloader whose batch was running when first logged (None: outside a batch, or a
        # single loader), even with `add_dataloader_idx=False`: validate/test return it per loader.
        self.src_dl = src_dl
        self.device_acc: Optional[torch.Tensor] = None
        self.device_weight = 0.0
        self.device_last: Optional[torch.Tensor] = None
        # `sync_dist=True` with several processes (see `ferrotrain.trainer.sync`), else None.
        self.sync: Any = None
        # A logged torchmetrics Metric: its epoch value is its own `compute()`, not a mean of
        # the step values, and it is reset at epoch end (Lightning).
        self.metric: Any = None
        self.metric_epoch: Optional[float] = None


class Results:
    """The metrics of one loop (training, validation, test). The loop tells it the current batch
    and dataloader index; `self.log` calls go to `log`."""

    def __init__(self, training: bool) -> None:
        self.training = training
        # True once the epoch's batches are done: reads then see epoch-level values.
        self.epoch_end_reached = False
        self._store = _core.MetricStore()
        self._entries: Dict[Tuple[str, str, Optional[int]], _Entry] = {}
        self.batch: Any = None
        self._batch_size: Optional[int] = None
        self.dataloader_idx: Optional[int] = None
        self.num_dataloaders = 1
        # Some entry logs per step: evaluation loops then send step values to the loggers.
        self.has_step_entries = False

    # ---------------------------------------------------------------- per-batch state
    def set_batch(self, batch: Any, dataloader_idx: Optional[int] = None) -> None:
        self.batch = batch
        self._batch_size = None
        self.dataloader_idx = dataloader_idx

    def _current_batch_size(self) -> float:
        if self._batch_size is None:
            size = extract_batch_size(self.batch) if self.batch is not None else None
            self._batch_size = size if size is not None else 1
        return float(self._batch_size)

    # ---------------------------------------------------------------- logging
    def log(self, fx: Optional[str], name: str, value: Any, prog_bar: bool, logger: Optional[bool],
            on_step: Optional[bool], on_epoch: Optional[bool], reduce_fx: Any, add_dataloader_idx: bool,
            batch_size: Optional[int], sync_dist: bool) -> None:
        dl_idx = self.dataloader_idx if add_dataloader_idx and self.num_dataloaders > 1 else None
        entry = self._entries.get((fx, name, dl_idx))  # type: ignore[arg-type]
        options = (prog_bar, logger, on_step, on_epoch, reduce_fx)
        if entry is None or entry.options != options:
            entry = self._register(fx, name, options, dl_idx)
        if entry.on_epoch and entry.reduce == "mean":
            weight = float(batch_size) if batch_size is not None else self._current_batch_size()
        else:
            weight = 1.0
        if sync_dist:
            from ferrotrain.trainer.sync import log_synced

            if log_synced(self, entry, value, weight):
                return
        # A one-element CPU tensor (a loss) is read by the native core in one call.
        elif type(value) is torch.Tensor and self._store.update_from_tensor(entry.slot, value, torch.Tensor, weight):
            return
        self._update(entry, value, weight)

    def _register(self, fx: Optional[str], name: str, options: tuple, dl_idx: Optional[int]) -> _Entry:
        prog_bar, logger, on_step, on_epoch, reduce_fx = options
        if not isinstance(name, str) or not name:
            raise MisconfigurationException(f"`self.log` needs a non-empty str name, got {name!r}")
        if fx is None or fx not in FX_DEFAULTS:
            raise MisconfigurationException(f"You can't `self.log({name!r}, ...)` inside `{fx}`")
        d_step, d_epoch, allowed_step, allowed_epoch = FX_DEFAULTS[fx]
        on_step = d_step if on_step is None else bool(on_step)
        on_epoch = d_epoch if on_epoch is None else bool(on_epoch)
        if on_step not in allowed_step or on_epoch not in allowed_epoch:
            raise MisconfigurationException(
                f"You can't `self.log({name!r}, on_step={on_step}, on_epoch={on_epoch})` inside `{fx}`: "
                f"allowed on_step={list(allowed_step)}, on_epoch={list(allowed_epoch)}"
            )
        if not on_step and not on_epoch:
            raise MisconfigurationException(
                f"`self.log(on_step=False, on_epoch=False)` is not useful. `self.log({name!r}, ...)` logs nothing: "
                "set one of them to True"
            )
        reduce = _reduce_name(reduce_fx)
        old = self._entries.get((fx, name, dl_idx))  # type: ignore[arg-type]
        if old is not None:
            raise MisconfigurationException(
                f"You called `self.log({name!r}, ...)` twice in `{fx}` with different arguments "
                f"(before: {old.options}, now: {options}); this is not allowed"
            )
        key = f"{name}/dataloader_idx_{dl_idx}" if dl_idx is not None else name
        slot = self._store.register(reduce)
        entry = _Entry(fx, name, key, options, on_step, on_epoch, bool(prog_bar),
                       True if logger is None else bool(logger), reduce, slot, dl_idx, self.dataloader_idx)
        self._entries[(fx, name, dl_idx)] = entry  # type: ignore[index]
        self.has_step_entries = self.has_step_entries or on_step
        return entry

    def _update(self, entry: _Entry, value: Any, weight: float) -> None:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise MisconfigurationException(
                    f"`self.log({entry.name}, {value})` was called, but the tensor must have a single element. You "
                    f"can try doing `self.log({entry.name}, {value}.mean())` (got shape {tuple(value.shape)})"
                )
            if value.is_cpu:
                code = _DTYPE_CODES.get(value.dtype)
                if code is not None:
                    self._store.update_from_ptr(entry.slot, value.data_ptr(), code, weight)
                    return
                self._store.update(entry.slot, float(value), weight)
                return
            self._update_on_device(entry, value.detach(), weight)
            return
        if isinstance(value, numbers.Number) and not isinstance(value, complex):
            self._store.update(entry.slot, float(value), weight)
            return
        compute = getattr(value, "compute", None)
        if callable(compute):  # a torchmetrics Metric: the step value is this batch's
            entry.metric = value
            step = getattr(value, "_forward_cache", None)
            if not isinstance(step, (torch.Tensor, numbers.Number)):
                step = compute()  # only `update()` was called: its running value
            self._update(entry, step, weight)
            return
        raise _refused_value(entry.name, value)

    def _update_on_device(self, entry: _Entry, value: torch.Tensor, weight: float) -> None:
        # Accumulate on the device: no host copy until the metrics are flushed.
        v = value.reshape(()).to(torch.float64 if value.dtype == torch.float64 else torch.float32)
        entry.device_last = v
        acc = entry.device_acc
        if entry.reduce == "mean":
            entry.device_acc = v * weight if acc is None else acc + v * weight
            entry.device_weight += weight
        elif entry.reduce == "sum":
            entry.device_acc = v if acc is None else acc + v
        elif entry.reduce == "max":
            entry.device_acc = v if acc is None else torch.maximum(acc, v)
        else:
            entry.device_acc = v if acc is None else torch.minimum(acc, v)
        # Count in the native store too, so "was it logged" has one answer.
        self._store.update(entry.slot, math.nan, 0.0)

    # ---------------------------------------------------------------- reading
    def _last(self, entry: _Entry) -> Optional[float]:
        if entry.sync is not None and entry.sync.step is not None:
            return entry.sync.step
        if entry.device_last is not None:
            return float(entry.device_last.item())  # host sync: only when metrics are read
        return self._store.last(entry.slot)

    def _reduced(self, entry: _Entry) -> Optional[float]:
        if entry.sync is not None:
            return entry.sync.epoch_value(self._local_reduced(entry))
        return self._local_reduced(entry)

    def _local_reduced(self, entry: _Entry) -> Optional[float]:
        if entry.metric is not None:
            if not self.epoch_end_reached:
                return float(entry.metric.compute())  # a mid-epoch read: not final yet
            if entry.metric_epoch is None:
                entry.metric_epoch = float(entry.metric.compute())
            return entry.metric_epoch
        if entry.device_acc is not None:
            acc = float(entry.device_acc.item())  # host sync: only at epoch end
            return acc / entry.device_weight if entry.reduce == "mean" and entry.device_weight else acc
        return self._store.compute(entry.slot)

    def step_metrics(self, dataloader_idx: Optional[int] = None) -> Tuple[Dict[str, float], Dict[str, float], Dict[str, float]]:
        """(logger, progress bar, callback) views of the latest step-level values; with
        `dataloader_idx`, only what that dataloader's batches logged. As in Lightning, step values
        of evaluation loops never reach the callback metrics."""
        entries = [e for e in self._entries.values()
                   if e.on_step and (dataloader_idx is None or e.src_dl == dataloader_idx)]
        return self._views(entries, self._last, "step_key", self.training)

    def epoch_metrics(self) -> Tuple[Dict[str, float], Dict[str, float], Dict[str, float]]:
        """(logger, progress bar, callback) views of the epoch-level reduced values."""
        return self._views([e for e in self._entries.values() if e.on_epoch], self._reduced, "epoch_key", True)

    def _views(self, entries: List[_Entry], value_of: Any, key_attr: str,
               to_callbacks: bool) -> Tuple[Dict[str, float], Dict[str, float], Dict[str, float]]:
        log: Dict[str, float] = {}
        bar: Dict[str, float] = {}
        cb: Dict[str, float] = {}
        for e in entries:
            if self._store.count(e.slot) == 0:
                continue
            v = value_of(e)
            if v is None:
                continue
            name = getattr(e, key_attr)
            if e.logger:
                log[name] = v
            if e.prog_bar:
                bar[name] = v
            if to_callbacks:
                cb[name] = v
                cb[e.key] = v
        return log, bar, cb

    def reset_metrics(self) -> None:
        """At epoch end, after the epoch's values went out: each torchmetrics Metric logged this
        epoch keeps its computed value for the views, then `reset()`s, as Lightning does."""
        for e in self._entries.values():
            if e.metric is None or not self._store.count(e.slot):
                continue
            if e.on_epoch:
                self._local_reduced(e)
            e.metric.reset()

    def reset(self) -> None:
        """Start a new epoch: reductions restart, entries (and their checked options) stay."""
        self._store.reset_all()
        self.epoch_end_reached = False
        for e in self._entries.values():
            e.metric_epoch = None
            e.device_acc = None
            e.device_weight = 0.0
            e.device_last = None
            if e.sync is not None:
                e.sync.reset()

    def callback_view(self) -> Dict[str, float]:
        return self.epoch_metrics()[2] if self.epoch_end_reached else self.step_metrics()[2]

    def log_view(self) -> Dict[str, float]:
        return self.epoch_metrics()[0] if self.epoch_end_reached else self.step_metrics()[0]

    def progress_bar_view(self) -> Dict[str, float]:
        return self.epoch_metrics()[1] if self.epoch_end_reached else self.step_metrics()[1]

    def clear(self) -> None:
        self._entries.clear()
        self.has_step_entries = False
        self._store = _core.MetricStore()

    def dataloader_metrics(self) -> List[Dict[str, float]]:
        """Epoch-level values per dataloader, for the return value of validate/test."""
        per: Dict[Optional[int], Dict[str, float]] = {}
        for e in self._entries.values():
            if not e.on_epoch or self._store.count(e.slot) == 0:
                continue
            v = self._reduced(e)
            if v is None:
                continue
            name = e.epoch_key
            per.setdefault(e.src_dl, {})[name] = v
        if self.num_dataloaders <= 1:
            return [per.get(None, {})]
        shared = per.get(None, {})
        return [{**shared, **per.get(i, {})} for i in range(self.num_dataloaders)]
