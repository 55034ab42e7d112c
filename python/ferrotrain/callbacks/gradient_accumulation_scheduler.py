"""`GradientAccumulationScheduler`: change `trainer.accumulate_grad_batches` at given epochs, e.g.
`{0: 8, 4: 4, 8: 1}`. It sets the value at the start of each training epoch; the Trainer's loop
reads it from there (and steps the optimizer on an epoch's last, incomplete group too)."""

from __future__ import annotations

from typing import Any, Dict

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.rank_zero import rank_zero_warn


def _overridden_by_user(pl_module: Any, name: str) -> bool:
    """True when `name` is defined by a class of the user's, not by ferrotrain's base classes."""
    for cls in type(pl_module).__mro__:
        if name in vars(cls):
            return not cls.__module__.startswith(("ferrotrain.", "lightning.", "pytorch_lightning."))
    return False


class GradientAccumulationScheduler(Callback):
    """Change the gradient accumulation factor by epoch (Lightning's callback).

    Args:
        scheduling: `{epoch: factor}` with zero-based epochs; before the first listed epoch the
            factor is 1.

    Raises:
        TypeError: if `scheduling` is empty.
        MisconfigurationException: if an epoch is not an int >= 0 or a factor not an int >= 1.
    """

    def __init__(self, scheduling: Dict[int, int]) -> None:
        super().__init__()
        if not scheduling:
            raise TypeError("GradientAccumulationScheduler(scheduling={}) : give at least one {epoch: factor} entry.")
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in scheduling):
            raise MisconfigurationException(
                f"Epoch should be an int greater than or equal to 0. Got {list(scheduling.keys())}."
            )
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in scheduling.values()):
            raise MisconfigurationException(
                f"Accumulation factor should be an int greater than 0. Got {list(scheduling.values())}."
            )
        scheduling = dict(scheduling)
        if min(scheduling) != 0:
            scheduling[0] = 1
        self.scheduling = scheduling
        self.epochs = sorted(scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        for start in reversed(self.epochs):
            if epoch >= start:
                return self.scheduling[start]
        return 1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not getattr(pl_module, "automatic_optimization", True):
            raise RuntimeError(
                "Automatic gradient accumulation and the `GradientAccumulationScheduler` is not supported for"
                " manual optimization. Please remove the callback or switch to automatic optimization."
            )
        custom_step = _overridden_by_user(pl_module, "optimizer_step") or _overridden_by_user(
            pl_module, "optimizer_zero_grad"
        )
        if custom_step and self.going_to_accumulate_grad_batches():
            rank_zero_warn(
                "When using `Trainer(accumulate_grad_batches != 1)` and overriding"
                " `LightningModule.optimizer_{step,zero_grad}`, the hooks will not be called on every batch"
                " (rather, they are called on every optimization step)."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "You have set `accumulate_grad_batches` and are using the `GradientAccumulationScheduler`"
                " callback. Either remove `accumulate_grad_batches` from the Trainer or remove the callback."
            )

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
