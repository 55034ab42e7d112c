"""Short trial fits run from inside a `fit` (the tuners'), and putting the Trainer back afterwards.

Lightning's tuners run inside the user's `fit`, from `on_fit_start`: they save a temporary
checkpoint, swap the loop's limits, callbacks and loggers for their own, run the fit loop for a few
steps, then restore everything from the checkpoint so the real fit starts from the original
weights, optimizer state and progress. This module owns that protocol for ferrotrain, whose Trainer
builds its per-run pieces (hook table, native `Schedule`, `FitLoop` with its batch closure) once per
fit: a trial builds its own set and `Snapshot` puts the fit's set back.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Union

from ferrotrain.data.tensor_batches import loader_batches
from ferrotrain.trainer.data import INF, limited_batches
from ferrotrain.trainer.hooks import HookTable
from ferrotrain.trainer.results import Results
from ferrotrain.trainer.states import RunningStage
from ferrotrain.utilities.rank_zero import rank_zero_info

# Trainer attributes a trial replaces. The fit loop's batch closure holds the hook table, the
# results and the scheduler lists, so all of them go back together.
_SAVED = (
    "callbacks", "_hooks", "_loggers", "_config", "_schedule", "_fit_loop", "lr_scheduler_configs",
    "_train_results", "_val_results", "_active_results", "_epoch_start_rng", "_train_loader",
    "num_training_batches", "_val_loaders", "num_val_batches", "_has_validation", "_val_check_batch",
)


class Snapshot:
    """The Trainer's per-run state at one moment; `restore()` puts it back."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.values = {name: getattr(trainer, name, None) for name in _SAVED}
        self.stage = trainer.state.stage
        self.module_results = getattr(trainer.lightning_module, "_results", None)

    def restore(self) -> None:
        t = self.trainer
        for name, value in self.values.items():
            setattr(t, name, value)
        t.state.stage = self.stage
        t.lightning_module._results = self.module_results


def begin_trials(trainer: Any, callbacks: List[Any], **limits: Any) -> None:
    """Set the Trainer up for trial fits: only `callbacks` run, nothing is logged (Lightning swaps
    in a DummyLogger), and `limits` (max_steps, limit_train_batches, limit_val_batches) replace
    the constructor's."""
    trainer.callbacks = list(callbacks)
    trainer._hooks = HookTable(trainer.lightning_module, trainer.callbacks, trainer.datamodule)
    trainer._loggers = []
    trainer._config = dataclasses.replace(trainer._config, **limits)


def run_fit_loop(trainer: Any, reload_data: bool, progress: Optional[dict] = None,
                 reload_train: Optional[bool] = None) -> None:
    """One trial: the fit loop runs from the current progress (or `progress`) until the trial's
    limits. With `reload_data`, the validation loaders, and the training loader unless
    `reload_train` is False, are requested again (the batch size changed); otherwise the fit's
    validation loaders are kept under the trial's limit."""
    from ferrotrain.loops.fit import FitLoop

    model = trainer.lightning_module
    dm = trainer.datamodule
    train_given, val_given = trainer._fit_sources
    if reload_train is None:
        reload_train = reload_data
    if reload_data:
        trainer._setup_val_data(model, dm, val_given, for_fit=True)
    else:
        limit = trainer._config.limit_val_batches
        trainer.num_val_batches = [limited_batches(l, limit, "limit_val_batches") for l in trainer._val_loaders]
        trainer._has_validation = bool(trainer._val_loaders) and sum(trainer.num_val_batches) > 0
    trainer._new_schedule(has_validation=trainer._has_validation, automatic=model.automatic_optimization)
    if progress is not None:
        trainer._schedule.load_state_dict(**progress)
    trainer.should_stop = False
    if reload_train or trainer._train_loader is None:
        trainer._setup_train_data(model, dm, train_given)
    else:
        trainer._count_train_batches()
    trainer._configure_val_check()
    trainer._train_results = Results(training=True)
    trainer._val_results = Results(training=False)
    trainer._fit_loop = FitLoop(trainer)
    trainer.state.stage = RunningStage.TRAINING
    trainer._fit_loop.run()


def dataset_length(trainer: Any) -> Union[int, float]:
    """The training set's size (the largest, with several loaders), or INF when unknown."""
    loader = trainer._train_loader
    loaders = getattr(loader, "flattened", None) or [loader]
    lengths = []
    for l in loaders:
        ds = getattr(l, "dataset", None)
        if ds is not None and hasattr(ds, "__len__"):
            lengths.append(len(ds))
    return max(lengths) if lengths else INF


@contextmanager
def restored_after(trainer: Any, prefix: str) -> Iterator[Snapshot]:
    """Save a temporary checkpoint in `default_root_dir` (Lightning's `.{prefix}_{uuid}.ckpt`), run
    the body, then put the Trainer's state back, restore the model, optimizers, schedulers,
    callbacks and progress from the checkpoint, and delete it, whether the body failed or not."""
    path = os.path.join(trainer.default_root_dir, f".{prefix}_{uuid.uuid4()}.ckpt")
    path = trainer.strategy.broadcast(path)  # every rank restores from rank zero's file
    trainer.save_checkpoint(path)
    snapshot = Snapshot(trainer)
    try:
        yield snapshot
    finally:
        from ferrotrain.trainer import checkpointing

        try:
            snapshot.restore()
            rank_zero_info(f"Restoring states from the checkpoint path at {path}")
            checkpointing.restore_state(trainer, path)
            rank_zero_info(f"Restored all states from the checkpoint at {path}")
            trainer.should_stop = False
        finally:
            if trainer.is_global_zero and os.path.exists(path):
                os.remove(path)


class _Started:
    """A loader's iterator created ahead of its epoch, handed to the epoch's fetcher once."""

    __slots__ = ("loader", "iterator")

    def __init__(self, loader: Any, iterator: Any) -> None:
        self.loader = loader
        self.iterator = iterator

    def __iter__(self) -> Any:
        return self.iterator

    def __getattr__(self, name: str) -> Any:  # `pin_memory` etc. as the loader says (device feed)
        return getattr(self.loader, name)


def start_first_epoch_iterator(trainer: Any) -> None:
    """Set up the training loader and create its first epoch's iterator now (Lightning's
    `fit_loop.setup_data()` at the end of `lr_find`). The iterator draws its base seed here, inside
    the finder's `isolate_rng`, so the real fit's random stream is the one Lightning's sees."""
    trainer._setup_train_data(trainer.lightning_module, trainer.datamodule, trainer._fit_sources[0])
    loader = trainer._train_loader
    trainer._first_epoch_iterator = (loader, _Started(loader, loader_batches(loader)))


def take_first_epoch_iterator(trainer: Any, loader: Any) -> Any:
    """The loader to read the epoch from: the iterator started ahead for `loader`, if any."""
    started, trainer._first_epoch_iterator = trainer._first_epoch_iterator, None
    if started is not None and started[0] is loader:
        return started[1]
    return loader
