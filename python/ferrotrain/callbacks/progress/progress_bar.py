"""`ProgressBar`, the base class of progress bars (Lightning's): descriptions, the number of
batches each bar counts to, `get_metrics`, and the `enable()`/`disable()` switches."""

from typing import Any, Dict, Optional, Union

from ferrotrain.callbacks.callback import Callback
from ferrotrain.utilities.rank_zero import rank_zero_warn


class ProgressBar(Callback):
    """Base class of progress bars (Lightning's `ProgressBar`): descriptions, the number of batches
    each bar counts to, `get_metrics`, and `enable()`/`disable()` which subclasses implement."""

    def __init__(self) -> None:
        self._trainer: Any = None
        self._current_eval_dataloader_idx: Optional[int] = None

    @property
    def trainer(self) -> Any:
        if self._trainer is None:
            raise TypeError(f"The `{self.__class__.__name__}._trainer` reference has not been set yet.")
        return self._trainer

    @property
    def sanity_check_description(self) -> str:
        return "Sanity Checking"

    @property
    def train_description(self) -> str:
        return "Training"

    @property
    def validation_description(self) -> str:
        return "Validation"

    @property
    def test_description(self) -> str:
        return "Testing"

    @property
    def predict_description(self) -> str:
        return "Predicting"

    @property
    def total_train_batches(self) -> Union[int, float]:
        """Batches in this training epoch (`inf` when unknown); capped by the steps left when the
        run is bounded by `max_steps` only."""
        trainer = self.trainer
        max_steps = getattr(trainer, "max_steps", -1)
        if trainer.max_epochs == -1 and max_steps is not None and max_steps > 0:
            return min(trainer.num_training_batches, max_steps - trainer.global_step)
        return trainer.num_training_batches

    @property
    def total_val_batches_current_dataloader(self) -> Union[int, float]:
        trainer = self.trainer
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0] if batches else 0
        return batches

    @property
    def total_test_batches_current_dataloader(self) -> Union[int, float]:
        batches = self.trainer.num_test_batches
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0] if batches else 0
        return batches

    @property
    def total_predict_batches_current_dataloader(self) -> Union[int, float]:
        batches = self.trainer.num_predict_batches
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0] if batches else 0
        return batches

    @property
    def total_val_batches(self) -> Union[int, float]:
        """Validation batches over all validation dataloaders this epoch: 0 on an epoch that
        `check_val_every_n_epoch` (or a disabled validation) skips, as in Lightning."""
        trainer = self.trainer
        every = getattr(trainer, "check_val_every_n_epoch", None)
        if not getattr(trainer, "enable_validation", True) or (
            every is not None and (trainer.current_epoch + 1) % every != 0
        ):
            return 0
        batches = trainer.num_val_batches
        return sum(batches) if isinstance(batches, list) else batches

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        old = self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return old != dataloader_idx

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    def disable(self) -> None:
        """Turn the bar off (subclasses implement it)."""
        raise NotImplementedError

    def enable(self) -> None:
        """Turn the bar back on (subclasses implement it)."""
        raise NotImplementedError

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print without breaking the bar."""
        print(*args, **kwargs)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        if not getattr(trainer, "is_global_zero", True):
            self.disable()

    def get_metrics(self, trainer: Any, pl_module: Any) -> Dict[str, Union[int, str, float, Dict[str, float]]]:
        """What the bar shows after the timing: `v_num` (the loggers' version) then
        `trainer.progress_bar_metrics`. Override it to change the items."""
        standard = get_standard_metrics(trainer)
        pbar_metrics = trainer.progress_bar_metrics
        duplicates = [k for k in standard if k in pbar_metrics]
        if duplicates:
            rank_zero_warn(
                f"The progress bar already tracks a metric with the name(s) '{', '.join(duplicates)}' and"
                f" `self.log('{duplicates[0]}', ..., prog_bar=True)` will overwrite this value."
                " If this is undesired, change the name or override `get_metrics()` in the progress bar callback."
            )
        return {**standard, **pbar_metrics}


def get_standard_metrics(trainer: Any) -> Dict[str, Union[int, str]]:
    """`{'v_num': version}` when the trainer has loggers (a string version shows its last 4
    characters), else `{}`."""
    items: Dict[str, Union[int, str]] = {}
    loggers = getattr(trainer, "loggers", None)
    if loggers:
        from ferrotrain.loggers.utilities import _version

        version = _version(loggers)
        if version not in ("", None):
            if isinstance(version, str):
                version = version[-4:]
            items["v_num"] = version
    return items
