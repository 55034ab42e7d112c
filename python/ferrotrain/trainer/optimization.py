"""Optimizers and schedulers: reading `configure_optimizers`, the `LightningOptimizer` wrapper that
manual optimization uses, scheduler stepping, and gradient clipping. The per-batch automatic step
lives in `loops/train_batch.py`; this module holds what it calls."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.optim import Optimizer

from ferrotrain.errors import ConfigTypeError, MisconfigurationException

_CONFIG_HELP = (
    "`configure_optimizers` must return one of: an optimizer; a list or tuple of optimizers; two lists "
    "(optimizers, lr schedulers); a dict with an 'optimizer' key and optional 'lr_scheduler' and "
    "'monitor' keys; a list or tuple of such dicts; or None (train without an optimizer)"
)


@dataclasses.dataclass
class LRSchedulerConfig:
    scheduler: Any
    name: Optional[str] = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: Optional[str] = None
    strict: bool = True


_SCHEDULER_KEYS = {f.name for f in dataclasses.fields(LRSchedulerConfig)}
# Keys manual optimization ignores: the user steps the schedulers (Lightning warns about them).
_MANUAL_IGNORED_KEYS = ("reduce_on_plateau", "monitor", "strict")


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _check_frequency(frequency: Any) -> None:
    if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
        raise MisconfigurationException(f'The "frequency" key in lr scheduler dict must be an int >= 1, got {frequency!r}')


def _automatic_config(item: Any, monitor: Optional[str]) -> LRSchedulerConfig:
    """Lightning's `_configure_schedulers_automatic_opt` for one scheduler (or scheduler dict)."""
    if not isinstance(item, dict):
        if _is_plateau(item) and monitor is None:
            raise MisconfigurationException(
                "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used. "
                'For example: {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "metric_to_track"}'
            )
        return LRSchedulerConfig(scheduler=item, reduce_on_plateau=_is_plateau(item), monitor=monitor if _is_plateau(item) else None)
    extra = set(item) - _SCHEDULER_KEYS
    if extra:
        warnings.warn(f"Found unsupported keys in the lr scheduler dict: {extra}. HINT: remove them from the output "
                      "of `configure_optimizers`.", RuntimeWarning)
        item = {k: v for k, v in item.items() if k in _SCHEDULER_KEYS}
    if "scheduler" not in item:
        raise MisconfigurationException(
            'The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler'
        )
    interval = item.get("interval", "epoch")
    if interval not in ("step", "epoch"):
        raise MisconfigurationException(
            f'The "interval" key in lr scheduler dict must be "step" or "epoch" but is "{interval}"'
        )
    _check_frequency(item.get("frequency", 1))
    item = {**item, "reduce_on_plateau": item.get("reduce_on_plateau", _is_plateau(item["scheduler"]))}
    if item["reduce_on_plateau"] and item.get("monitor") is None:
        raise MisconfigurationException(
            "The lr scheduler dict must include a monitor when a `ReduceLROnPlateau` scheduler is used. "
            'For example: {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "your_loss"}}'
        )
    if isinstance(item["scheduler"], torch.optim.lr_scheduler.OneCycleLR) and interval == "epoch":
        warnings.warn("A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean "
                      "'interval': 'step'?", RuntimeWarning)
    return LRSchedulerConfig(**item)


def _manual_config(item: Any) -> LRSchedulerConfig:
    """Lightning's `_configure_schedulers_manual_opt`: the user steps the scheduler, so the keys
    that decide when the Trainer steps it are ignored (`interval` stays, for LearningRateMonitor)."""
    if not isinstance(item, dict):
        return LRSchedulerConfig(scheduler=item)
    ignored = [k for k in item if k in _MANUAL_IGNORED_KEYS]
    if ignored:
        warnings.warn(f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored. You need "
                      "to call `lr_scheduler.step()` manually in manual optimization.", RuntimeWarning)
    kept = {k: v for k, v in item.items() if k not in _MANUAL_IGNORED_KEYS}
    extra = set(kept) - _SCHEDULER_KEYS
    if extra or "scheduler" not in kept:
        raise MisconfigurationException(
            f"The lr scheduler dict must have the key \"scheduler\" and only the keys {sorted(_SCHEDULER_KEYS)}; "
            f"got {sorted(item)}")
    return LRSchedulerConfig(**kept)


def _check_scheduler_api(configs: Sequence[LRSchedulerConfig], optimizers: Sequence[Any], automatic: bool,
                         steps_itself: bool) -> None:
    """Lightning's checks of the schedulers: each is stateful and belongs to a returned optimizer;
    in automatic optimization the Trainer steps it, so it must be a torch scheduler unless the
    module overrides `lr_scheduler_step` (`steps_itself`)."""
    torch_types = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for cfg in configs:
        sched = cfg.scheduler
        name = type(sched).__name__
        if not (callable(getattr(sched, "state_dict", None)) and callable(getattr(sched, "load_state_dict", None))):
            raise ConfigTypeError(
                f"The provided lr scheduler `{name}` is invalid. It should have `state_dict` and `load_state_dict` "
                f"methods defined (got {sched!r}; a scheduler the Trainer steps also needs `step`)"
            )
        if automatic and not isinstance(sched, torch_types) and not steps_itself:
            raise MisconfigurationException(
                f"The provided lr scheduler `{name}` doesn't follow PyTorch's LRScheduler API. You should override "
                "the `LightningModule.lr_scheduler_step` hook with your own logic if you are using a custom LR "
                "scheduler."
            )
    for cfg in configs:
        if not any(getattr(cfg.scheduler, "optimizer", None) is o for o in optimizers):
            raise MisconfigurationException(
                "Some schedulers are attached with an optimizer that wasn't returned from `configure_optimizers`."
            )


def parse_configure_optimizers(output: Any, automatic: bool = True,
                               steps_itself: bool = False) -> Tuple[List[Optimizer], List[LRSchedulerConfig]]:
    """Lightning's `_init_optimizers_and_lr_schedulers`: normalise every accepted return shape,
    read the schedulers as automatic or manual optimization does, and check them. `steps_itself`:
    the module overrides `lr_scheduler_step`."""
    if output is None:
        warnings.warn("`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
                      UserWarning)
        return [], []
    optimizers: List[Any] = []
    raw: List[Any] = []
    monitors: List[Optional[str]] = []
    if isinstance(output, Optimizer):
        optimizers = [output]
    elif isinstance(output, dict):
        optimizers, raw, monitors = _from_dict(output)
    elif isinstance(output, (list, tuple)):
        if len(output) == 2 and isinstance(output[0], (list, tuple)) and all(isinstance(o, Optimizer) for o in output[0]):
            optimizers = list(output[0])
            raw = list(output[1]) if isinstance(output[1], (list, tuple)) else [output[1]]
            monitors = [None] * len(raw)
        elif all(isinstance(o, dict) for o in output) and output:
            for d in output:
                opts, scheds, mons = _from_dict(d)
                optimizers += opts
                raw += scheds
                monitors += mons
        elif all(isinstance(o, Optimizer) for o in output) and output:
            optimizers = list(output)
        else:
            raise MisconfigurationException(f"Unknown configuration for model optimizers: got {output!r}. {_CONFIG_HELP}")
    else:
        raise MisconfigurationException(f"Unknown configuration for model optimizers: got {output!r}. {_CONFIG_HELP}")
    if automatic:
        schedulers = [_automatic_config(item, monitor) for item, monitor in zip(raw, monitors)]
    else:
        schedulers = [_manual_config(item) for item in raw]
    _check_scheduler_api(schedulers, optimizers, automatic, steps_itself)
    return optimizers, schedulers


def _from_dict(d: Dict[str, Any]) -> Tuple[List[Optimizer], List[Any], List[Optional[str]]]:
    """One optimizer dict: its optimizer, its scheduler (if any) and the monitor for it."""
    if "optimizer" not in d:
        raise MisconfigurationException(f"The optimizer dict must have an 'optimizer' key; got keys {sorted(d)}. {_CONFIG_HELP}")
    opt = d["optimizer"]
    if not isinstance(opt, Optimizer):
        raise MisconfigurationException(f"The 'optimizer' entry must be a torch.optim.Optimizer, got {opt!r}")
    extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        warnings.warn(f"Found unsupported keys in the optimizer configuration: {extra}", RuntimeWarning)
    scheds = [d["lr_scheduler"]] if d.get("lr_scheduler") is not None else []
    return [opt], scheds, [d.get("monitor")] * len(scheds)


class LightningOptimizer:
    """Wraps a torch optimizer for manual optimization: `step()` runs the optimizer-step hooks and
    counts the step; everything else passes through to the optimizer."""

    def __init__(self, optimizer: Optimizer, trainer: Any) -> None:
        self.__dict__["_optimizer"] = optimizer
        self.__dict__["_trainer"] = trainer

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_optimizer"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._optimizer, name, value)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Optional[Callable[[], Any]] = None, **kwargs: Any) -> Any:
        trainer = self._trainer
        result = trainer._step_optimizer(self._optimizer, closure, kwargs)
        trainer._count_manual_step()
        return result


def step_schedulers(trainer: Any, configs: Sequence[LRSchedulerConfig], interval: str, plateau: bool,
                    current_idx: int) -> None:
    """Lightning's `_update_learning_rates` for the schedulers of `interval`."""
    module = trainer.lightning_module
    override = trainer._hooks.overridden.get("lr_scheduler_step", False) if trainer._hooks else False
    for cfg in configs:
        if cfg.reduce_on_plateau != plateau or cfg.interval != interval:
            continue
        if (current_idx + 1) % cfg.frequency != 0:
            continue
        metric = None
        if cfg.reduce_on_plateau:
            assert cfg.monitor is not None
            metrics = trainer.callback_metrics
            metric = metrics.get(cfg.monitor)
            if metric is None:
                if cfg.strict:
                    raise MisconfigurationException(
                        f"ReduceLROnPlateau conditioned on metric {cfg.monitor!r} which is not available. "
                        f"Available metrics are: {sorted(metrics)}. Set the `monitor` key of the lr scheduler dict "
                        "to one of them, or `strict=False`"
                    )
                warnings.warn(
                    f"ReduceLROnPlateau conditioned on metric {cfg.monitor!r} which is not available but strict is set "
                    "to `False`. Skipping learning rate update.",
                    RuntimeWarning,
                )
                continue
        if override:
            module.__dict__["_current_fx_name"] = "lr_scheduler_step"
            module.lr_scheduler_step(cfg.scheduler, metric)
        elif metric is None:
            cfg.scheduler.step()
        else:
            cfg.scheduler.step(metric)


def _optimizer_params(optimizer: Any) -> List[torch.Tensor]:
    opt = getattr(optimizer, "optimizer", optimizer)
    return [p for group in opt.param_groups for p in group["params"] if p.grad is not None]


def clip_gradients(module: Any, optimizer: Any, gradient_clip_val: Optional[float],
                   gradient_clip_algorithm: Optional[str]) -> None:
    """`LightningModule.clip_gradients`: clip the gradients of `optimizer`'s parameters."""
    trainer = module._trainer
    trainer_val = trainer.gradient_clip_val if trainer is not None else None
    trainer_algo = trainer.gradient_clip_algorithm if trainer is not None else "norm"
    if gradient_clip_val is None:
        gradient_clip_val = trainer_val or 0.0
    elif trainer_val is not None and trainer_val != gradient_clip_val:
        raise MisconfigurationException(
            f"You have set `Trainer(gradient_clip_val={trainer_val!r})` and have passed "
            f"`clip_gradients(gradient_clip_val={gradient_clip_val!r})`. Please use only one of them."
        )
    if gradient_clip_algorithm is None:
        gradient_clip_algorithm = trainer_algo or "norm"
    elif trainer_val is not None and trainer_algo != gradient_clip_algorithm.lower():
        raise MisconfigurationException(
            f"You have set `Trainer(gradient_clip_algorithm={trainer_algo!r})` and have passed "
            f"`clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r}) Please use only one of them."
        )
    if not isinstance(gradient_clip_val, (int, float)) or isinstance(gradient_clip_val, bool):
        raise ConfigTypeError(f"`gradient_clip_val` should be an int or a float. Got {gradient_clip_val}.")
    algo = gradient_clip_algorithm.lower()
    if algo not in ("norm", "value"):
        raise MisconfigurationException(
            f"`gradient_clip_algorithm` {gradient_clip_algorithm} is invalid. Allowed algorithms: ['value', 'norm']."
        )
    if gradient_clip_val <= 0:
        return
    params = _optimizer_params(optimizer)
    if not params:
        return
    from ferrotrain.utilities import clip

    if algo == "norm":
        # The strategy computes the total norm: with sharded parameters (FSDP) a per-rank norm is wrong.
        strategy = trainer.strategy if trainer is not None else None
        if strategy is not None:
            strategy.clip_grad_norm(params, float(gradient_clip_val))
        else:
            clip.clip_grad_norm_(params, float(gradient_clip_val))
    else:
        clip.clip_grad_value_(params, float(gradient_clip_val))
