"""`LearningRateMonitor`: log each optimizer's learning rate (and optionally momentum and weight
decay) to the trainer's loggers, with Lightning's names: `lr-SGD`, `lr-Adam-1` for a second Adam,
`lr-Adam/pg2` for parameter groups, or the scheduler's / parameter group's `name`.

Per step it costs one modulo unless it is a logging step (`log_every_n_steps`); names are worked
out once at `on_train_start` and again only on logging steps.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any, DefaultDict, Dict, List, Optional, Tuple

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.rank_zero import rank_zero_warn


class LearningRateMonitor(Callback):
    """Log learning rates (Lightning's `LearningRateMonitor`).

    Args:
        logging_interval: `"step"` or `"epoch"` to log every optimizer at that interval; `None`
            logs an optimizer with a scheduler at the scheduler's own `interval`, and one without a
            scheduler at both (each logging step and each epoch start), as Lightning does.
        log_momentum: also log `<name>-momentum` (`betas[0]` for Adam-like optimizers).
        log_weight_decay: also log `<name>-weight_decay`.
    """

    def __init__(
        self,
        logging_interval: Optional[str] = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): use 'step', 'epoch' or None."
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: Dict[str, List[float]] = {}
        self.last_momentum_values: Dict[str, Optional[float]] = {}
        self.last_weight_decay_values: Dict[str, Optional[float]] = {}

    def on_train_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers:
            raise MisconfigurationException("Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger.")
        if self.log_momentum:

            def _missing(key: str) -> bool:
                if trainer.lr_scheduler_configs:
                    return any(key not in c.scheduler.optimizer.defaults for c in trainer.lr_scheduler_configs)
                return any(key not in _unwrap(o).defaults for o in trainer.optimizers)

            if _missing("momentum") and _missing("betas"):
                rank_zero_warn(
                    "You have set log_momentum=True, but some optimizers do not"
                    " have momentum. This will log a value 0 for the momentum.",
                    category=RuntimeWarning,
                )
        sched_names, seen_opts, seen_types = self._find_names_from_schedulers(trainer.lr_scheduler_configs)
        opt_names, _ = self._find_names_from_optimizers(trainer.optimizers, seen_opts, seen_types)
        names = list(itertools.chain.from_iterable(sched_names + opt_names))
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    def on_train_batch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self.logging_interval == "epoch" or not _should_update_logs(trainer):
            return
        stats = self._extract_stats(trainer, "step" if self.logging_interval is None else "any")
        if stats:
            for logger in trainer.loggers:
                logger.log_metrics(metrics=stats, step=_batches_that_stepped(trainer))

    def on_train_epoch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self.logging_interval == "step":
            return
        stats = self._extract_stats(trainer, "epoch" if self.logging_interval is None else "any")
        if stats:
            for logger in trainer.loggers:
                logger.log_metrics(metrics=stats, step=_batches_that_stepped(trainer))

    # -- reading the values --

    def _extract_stats(self, trainer: Any, interval: str) -> Dict[str, float]:
        stats: Dict[str, float] = {}
        sched_names, seen_opts, seen_types = self._find_names_from_schedulers(trainer.lr_scheduler_configs)
        self._remap_keys(sched_names)
        for names, config in zip(sched_names, trainer.lr_scheduler_configs):
            if interval in (config.interval, "any"):
                stats.update(self._get_optimizer_stats(config.scheduler.optimizer, names))
        opt_names, opts_without_scheduler = self._find_names_from_optimizers(trainer.optimizers, seen_opts, seen_types)
        self._remap_keys(opt_names)
        for opt, names in zip(opts_without_scheduler, opt_names):
            stats.update(self._get_optimizer_stats(opt, names))
        metrics = getattr(trainer, "callback_metrics", None)
        if isinstance(metrics, dict):
            metrics.update(stats)
        return stats

    def _get_optimizer_stats(self, optimizer: Any, names: List[str]) -> Dict[str, float]:
        stats: Dict[str, float] = {}
        use_betas = "betas" in optimizer.defaults
        for group, name in zip(optimizer.param_groups, names):
            lr = float(group["lr"])
            self.lrs.setdefault(name, []).append(lr)
            stats[name] = lr
            if self.log_momentum:
                key = f"{name}-momentum"
                momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                self.last_momentum_values[key] = float(momentum)
                stats[key] = float(momentum)
            if self.log_weight_decay:
                key = f"{name}-weight_decay"
                self.last_weight_decay_values[key] = float(group["weight_decay"])
                stats[key] = float(group["weight_decay"])
        return stats

    def _remap_keys(self, names: List[List[str]], token: str = "/pg1") -> None:
        """Keep the history when an optimizer gains parameter groups (`lr-SGD` becomes `lr-SGD/pg1`)."""
        for group_names in names:
            for new_name in group_names:
                old_name = new_name.replace(token, "")
                if token in new_name and old_name in self.lrs:
                    self.lrs[new_name] = self.lrs.pop(old_name)
                elif new_name not in self.lrs:
                    self.lrs[new_name] = []

    # -- naming --

    @staticmethod
    def _add_prefix(name: str, optimizer_cls: type, seen_types: DefaultDict[type, int]) -> str:
        if optimizer_cls not in seen_types:
            return name
        count = seen_types[optimizer_cls]
        return f"{name}-{count - 1}" if count > 1 else name

    @staticmethod
    def _add_suffix(name: str, param_groups: List[dict], index: int) -> str:
        if len(param_groups) > 1:
            return f"{name}/{param_groups[index].get('name', f'pg{index + 1}')}"
        pg_name = param_groups[index].get("name")
        return f"{name}/{pg_name}" if pg_name else name

    @staticmethod
    def _duplicate_param_group_names(param_groups: List[dict]) -> set:
        names = [pg.get("name", f"pg{i}") for i, pg in enumerate(param_groups, start=1)]
        return {n for n in names if names.count(n) > 1}

    def _find_names_from_schedulers(self, configs: List[Any]) -> Tuple[List[List[str]], List[Any], DefaultDict[type, int]]:
        names: List[List[str]] = []
        seen_opts: List[Any] = []
        seen_types: DefaultDict[type, int] = defaultdict(int)
        for config in configs:
            optimizer = config.scheduler.optimizer
            name = config.name if config.name is not None else "lr-" + optimizer.__class__.__name__
            names.append(self._check_duplicates_and_update_name(optimizer, name, seen_opts, seen_types, config))
        return names, seen_opts, seen_types

    def _find_names_from_optimizers(
        self, optimizers: List[Any], seen_opts: List[Any], seen_types: DefaultDict[type, int]
    ) -> Tuple[List[List[str]], List[Any]]:
        names: List[List[str]] = []
        without_scheduler: List[Any] = []
        for optimizer in optimizers:
            optimizer = _unwrap(optimizer)
            if any(optimizer is seen for seen in seen_opts):
                continue
            name = "lr-" + optimizer.__class__.__name__
            names.append(self._check_duplicates_and_update_name(optimizer, name, seen_opts, seen_types, None))
            without_scheduler.append(optimizer)
        return names, without_scheduler

    def _check_duplicates_and_update_name(
        self, optimizer: Any, name: str, seen_opts: List[Any], seen_types: DefaultDict[type, int], config: Any
    ) -> List[str]:
        seen_opts.append(optimizer)
        optimizer_cls = type(optimizer)
        if config is None or config.name is None:
            seen_types[optimizer_cls] += 1
        param_groups = optimizer.param_groups
        duplicates = self._duplicate_param_group_names(param_groups)
        if duplicates:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical"
                f" `name` values. {name} has duplicated parameter group names {duplicates}"
            )
        name = self._add_prefix(name, optimizer_cls, seen_types)
        return [self._add_suffix(name, param_groups, i) for i in range(len(param_groups))]


def _unwrap(optimizer: Any) -> Any:
    """A `LightningOptimizer`-style wrapper -> the torch optimizer inside it."""
    return optimizer.optimizer if hasattr(optimizer, "optimizer") and hasattr(optimizer.optimizer, "param_groups") else optimizer


def _batches_that_stepped(trainer: Any) -> int:
    """Lightning's logging step: batches that stepped, not optimizer steps (several optimizers
    advance `global_step` more than once per batch)."""
    schedule = getattr(trainer, "_schedule", None)
    return int(schedule.batches_that_stepped) if schedule is not None else int(trainer.global_step)


def _should_update_logs(trainer: Any) -> bool:
    """Lightning's rule: log on every `log_every_n_steps`-th batch (counted before the batch runs),
    or when training is about to stop."""
    every = getattr(trainer, "log_every_n_steps", 50) or 1
    return (_batches_that_stepped(trainer) + 1) % every == 0 or bool(trainer.should_stop)
