"""Optimizers and schedulers: reading `configure_optimizers`, the `LightningOptimizer` wrapper that
manual optimization uses, scheduler stepping, and gradient clipping. The per-batch automatic step
lives in `training_step.py`; this module holds what it calls."""

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
    opt_idx: Optional[int] = None


_SCHEDULER_KEYS = {"scheduler", "name", "interval", "frequency", "monitor", "strict", "reduce_on_plateau", "opt_idx"}


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _scheduler_config(item: Any, monitor: Optional[str]) -> LRSchedulerConfig:
    if isinstance(item, dict):
        if "scheduler" not in item:
            raise MisconfigurationException(
                'The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler'
            )
        extra = set(item) - _SCHEDULER_KEYS
        if extra:
            raise MisconfigurationException(
                f"Found unsupported keys in the lr scheduler dict: {sorted(extra)}; allowed: {sorted(_SCHEDULER_KEYS)}"
            )
        interval = item.get("interval", "epoch")
        if interval not in ("step", "epoch"):
            raise MisconfigurationException(
                f'The "interval" key in lr scheduler dict must be "step" or "epoch", but is {interval!r}'
            )
        frequency = item.get("frequency", 1)
        if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
            raise MisconfigurationException(f'The "frequency" key in lr scheduler dict must be an int >= 1, got {frequency!r}')
        sched = item["scheduler"]
        cfg = LRSchedulerConfig(
            scheduler=sched,
            name=item.get("name"),
            interval=interval,
            frequency=frequency,
            reduce_on_plateau=item.get("reduce_on_plateau", _is_plateau(sched)),
            monitor=item.get("monitor", monitor),
            strict=item.get("strict", True),
        )
    else:
        cfg = LRSchedulerConfig(scheduler=item, reduce_on_plateau=_is_plateau(item), monitor=monitor)
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise MisconfigurationException(
            "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used: "
            'for example {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "val_loss"}'
        )
    if not hasattr(cfg.scheduler, "step"):
        raise ConfigTypeError(f"The lr scheduler {cfg.scheduler!r} has no `step` method")
    return cfg


def parse_configure_optimizers(output: Any) -> Tuple[List[Optimizer], List[LRSchedulerConfig]]:
    """Lightning's `_configure_optimizers`: normalise every accepted return shape."""
    optimizers: List[Any] = []
    schedulers: List[LRSchedulerConfig] = []
    if output is None:
        warnings.warn("`configure_optimizers` returned `None`: this fit will run with no optimizer", UserWarning)
        return [], []
    if isinstance(output, Optimizer):
        optimizers = [output]
    elif isinstance(output, dict):
        optimizers, schedulers = _from_dict(output)
    elif isinstance(output, (list, tuple)):
        if len(output) == 2 and isinstance(output[0], (list, tuple)) and all(isinstance(o, Optimizer) for o in output[0]):
            optimizers = list(output[0])
            scheds = output[1] if isinstance(output[1], (list, tuple)) else [output[1]]
            schedulers = [_scheduler_config(s, None) for s in scheds]
        elif all(isinstance(o, dict) for o in output) and output:
            for d in output:
                opts, scheds = _from_dict(d)
                optimizers += opts
                schedulers += scheds
        elif all(isinstance(o, Optimizer) for o in output) and output:
            optimizers = list(output)
        else:
            raise MisconfigurationException(f"Unknown configuration for optimizers: {output!r}. {_CONFIG_HELP}")
    else:
        raise MisconfigurationException(f"Unknown configuration for optimizers: {output!r}. {_CONFIG_HELP}")
    for cfg in schedulers:
        opt = getattr(cfg.scheduler, "optimizer", None)
        for i, o in enumerate(optimizers):
            if o is opt:
                cfg.opt_idx = i
    return optimizers, schedulers


def _from_dict(d: Dict[str, Any]) -> Tuple[List[Optimizer], List[LRSchedulerConfig]]:
    if "optimizer" not in d:
        raise MisconfigurationException(f"The optimizer dict must have an 'optimizer' key; got keys {sorted(d)}. {_CONFIG_HELP}")
    opt = d["optimizer"]
    if not isinstance(opt, Optimizer):
        raise MisconfigurationException(f"The 'optimizer' entry must be a torch.optim.Optimizer, got {opt!r}")
    extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        raise MisconfigurationException(f"Found unsupported keys in the optimizer dict: {sorted(extra)}")
    scheds = [_scheduler_config(d["lr_scheduler"], d.get("monitor"))] if d.get("lr_scheduler") is not None else []
    return [opt], scheds


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
            f"You set `Trainer(gradient_clip_val={trainer_val})` and passed "
            f"`clip_gradients(gradient_clip_val={gradient_clip_val})`; use only one of them"
        )
    if gradient_clip_algorithm is None:
        gradient_clip_algorithm = trainer_algo or "norm"
    elif trainer_val is not None and trainer_algo != gradient_clip_algorithm.lower():
        raise MisconfigurationException(
            f"You set `Trainer(gradient_clip_algorithm={trainer_algo!r})` and passed "
            f"`clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r})`; use only one of them"
        )
    if not isinstance(gradient_clip_val, (int, float)) or isinstance(gradient_clip_val, bool):
        raise ConfigTypeError(f"`gradient_clip_val` should be an int or a float, got {gradient_clip_val!r}")
    algo = gradient_clip_algorithm.lower()
    if algo not in ("norm", "value"):
        raise MisconfigurationException(
            f"`gradient_clip_algorithm` must be 'norm' or 'value', got {gradient_clip_algorithm!r}"
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
