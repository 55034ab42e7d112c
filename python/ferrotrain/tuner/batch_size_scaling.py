"""The batch size search (Lightning's `scale_batch_size`): run a few training steps per candidate
batch size, doubling it until a step runs out of memory ("power"), optionally followed by a binary
search between the last size that fit and the first that did not ("binsearch"). The size lives in
a user attribute (`batch_arg_name`) that the module's or datamodule's `*_dataloader` reads, so
each trial requests the loaders again; the model and Trainer are restored afterwards."""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.memory import garbage_collection_cuda, is_oom_error
from ferrotrain.utilities.parsing import lightning_getattr, lightning_setattr
from ferrotrain.utilities.rank_zero import rank_zero_info, rank_zero_warn

log = logging.getLogger(__name__)

# Every trial starts from an empty progress (Lightning resets the optimizer and epoch progress).
_ZERO = dict(epoch=0, epochs_processed=0, batches_in_epoch=0, total_batches=0, global_step=0, batches_that_stepped=0)


def _check_margin(margin: float) -> None:
    # Lightning asserts this; here it is the usual configuration error (a ValueError).
    if not 0.0 <= margin < 1.0:
        raise MisconfigurationException(f"`margin` should be between 0 and 1 (0 <= margin < 1). Found margin={margin!r}")


def _scale_batch_size(
    trainer: Any,
    mode: str = "power",
    steps_per_trial: int = 3,
    init_val: int = 2,
    max_trials: int = 25,
    batch_arg_name: str = "batch_size",
    margin: float = 0.05,
    max_val: int = 8192,
) -> Optional[int]:
    """Search from inside a fit (`on_fit_start`); returns the size found, also set on the model."""
    from ferrotrain.tuner import _trial

    _check_margin(margin)
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping batch size scaler since `fast_dev_run` is enabled.")
        return None

    trials = _Trials(trainer)
    with _trial.restored_after(trainer, "scale_batch_size"):
        _trial.begin_trials(trainer, [], limit_train_batches=1.0, limit_val_batches=steps_per_trial,
                            max_steps=steps_per_trial)
        new_size, _ = _adjust_batch_size(trainer, batch_arg_name, value=init_val)
        trials.pending = 1
        if mode == "power":
            new_size = _run_power_scaling(trials, new_size, batch_arg_name, max_trials, max_val)
        elif mode == "binsearch":
            new_size = _run_binsearch_scaling(trials, new_size, batch_arg_name, max_trials, margin, max_val)
        garbage_collection_cuda()
        log.info(f"Finished batch size finder, will continue with full run using batch size {new_size}")
        trials.draw_pending()
    # The fit goes on with loaders built for the size found (Lightning's `_reset_dataloaders`).
    model = trainer.lightning_module
    trainer._setup_val_data(model, trainer.datamodule, trainer._fit_sources[1], for_fit=True)
    trainer._setup_train_data(model, trainer.datamodule, trainer._fit_sources[0])
    _touch(trainer._train_loader)
    return new_size


def _touch(loader: Any) -> None:
    """Create (and drop) an iterator of each training loader: each draws its base seed from the
    RNG. Lightning creates one whenever it sets up the training data, ferrotrain only when an
    epoch starts; drawing the seeds it drew keeps the real fit's shuffle order identical."""
    for l in getattr(loader, "flattened", None) or [loader]:
        iterator = iter(l)
        del iterator


class _Trials:
    """Runs the trials and counts the loaders Lightning would have set up for a trial that never
    ran (after the last one), whose iterator seeds are drawn at the end."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.pending = 0
        self.first = True

    def run(self) -> None:
        from ferrotrain.tuner import _trial

        garbage_collection_cuda()
        # The first trial reads the loader set up before `init_val` was applied, as in Lightning
        # (it is only rebuilt after a trial); later ones follow a rebuild.
        first, self.first = self.first, False
        self.pending = 0  # the trial's epoch uses the loader set up last, even if it then fails
        _trial.run_fit_loop(self.trainer, reload_data=True, progress=_ZERO, reload_train=not first)

    def reset_dataloaders(self) -> None:
        self.pending += 1

    def draw_pending(self) -> None:
        for _ in range(self.pending):
            _touch(self.trainer._train_loader)
        self.pending = 0


def _run_power_scaling(trials: _Trials, new_size: int, batch_arg_name: str, max_trials: int, max_val: int) -> int:
    """Double the size after each trial that fits; after an out-of-memory error, halve it and stop
    (or keep halving while nothing fit yet)."""
    trainer = trials.trainer
    any_success = False
    last_successful_size = new_size
    for i in range(max_trials):
        if new_size >= max_val:
            rank_zero_info(f"Reached the maximum batch size limit of {max_val}. Stopping search.")
            break
        try:
            trials.run()
            last_successful_size = new_size
            if i + 1 >= max_trials:
                new_size = last_successful_size
                break
            new_size, changed = _adjust_batch_size(trainer, batch_arg_name, factor=2.0, desc="succeeded")
            if not changed:
                break
            trials.reset_dataloaders()
            any_success = True
        except RuntimeError as exception:
            if not is_oom_error(exception):
                raise
            garbage_collection_cuda()
            new_size, _ = _adjust_batch_size(trainer, batch_arg_name, factor=0.5, desc="failed")
            trials.reset_dataloaders()
            if any_success:
                break
    return new_size


def _run_binsearch_scaling(trials: _Trials, new_size: int, batch_arg_name: str, max_trials: int, margin: float,
                           max_val: int) -> int:
    """Double until a size fails, then bisect between the last size that fit and it; finally
    shrink the result by `margin`."""
    trainer = trials.trainer
    low = 1
    high: Optional[int] = None
    count = 0
    last_successful_size = new_size
    while True:
        if new_size >= max_val:
            rank_zero_info(f"Reached the maximum batch size limit of {max_val}. Stopping search.")
            break
        try:
            trials.run()
            last_successful_size = new_size
            count += 1
            if count >= max_trials:
                new_size = last_successful_size
                break
            low = new_size
            if high:
                if high - low <= 1:
                    break
                new_size, changed = _adjust_batch_size(trainer, batch_arg_name, value=(high + low) // 2,
                                                       desc="succeeded", max_val=max_val)
            else:
                new_size, changed = _adjust_batch_size(trainer, batch_arg_name, factor=2.0, desc="succeeded",
                                                       max_val=max_val)
            if not changed:
                break
            trials.reset_dataloaders()
        except RuntimeError as exception:
            if not is_oom_error(exception):
                raise
            garbage_collection_cuda()
            high = new_size
            new_size, _ = _adjust_batch_size(trainer, batch_arg_name, value=(high + low) // 2, desc="failed")
            trials.reset_dataloaders()
            if high - low <= 1:
                break
    if margin > 0:
        reduced = max(1, int(new_size * (1 - margin)))
        if reduced != new_size:
            rank_zero_info(f"Applying margin of {margin:.1%}, reducing batch size from {new_size} to {reduced}")
            new_size = reduced
            lightning_setattr(trainer.lightning_module, batch_arg_name, new_size)
    return new_size


def _adjust_batch_size(trainer: Any, batch_arg_name: str = "batch_size", factor: float = 1.0,
                       value: Optional[int] = None, desc: Optional[str] = None, max_val: int = 8192) -> Tuple[int, bool]:
    """Set the next size to try (`value`, or the current one times `factor`, capped at
    `max_val`); returns it and whether it changed. A size already covering the whole training set
    is not grown further."""
    from ferrotrain.tuner._trial import dataset_length

    model = trainer.lightning_module
    batch_size = lightning_getattr(model, batch_arg_name)
    assert batch_size is not None
    # The loader as the current size builds it (Lightning's `loop.setup_data()`).
    trainer._setup_train_data(model, trainer.datamodule, trainer._fit_sources[0])
    length = dataset_length(trainer)
    if batch_size >= length:
        rank_zero_info(f"The batch size {batch_size} is greater or equal than the length of your dataset: {length}.")
        return batch_size, False
    new_size = value if value is not None else int(batch_size * factor)
    if new_size > max_val:
        if desc:
            rank_zero_info(f"Batch size {new_size} exceeds max_val limit {max_val}, capping at {max_val}")
        new_size = max_val
    if desc:
        rank_zero_info(f"Batch size {batch_size} {desc}, trying batch size {new_size}")
    lightning_setattr(model, batch_arg_name, new_size)
    return new_size, new_size != batch_size
