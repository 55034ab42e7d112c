"""`BasePredictionWriter`: the base class for callbacks that write predictions out, per batch,
once at the end of the predict epoch, or both (Lightning's `write_interval`).

The predict loop (`ferrotrain.loops.predict.run_predict`) records each batch's sample
indices in `trainer.predict_loop` when a writer is attached, and keeps the predictions for an
epoch-level writer even with `trainer.predict(..., return_predictions=False)`.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any, Optional, Sequence

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException


class WriteInterval(str, enum.Enum):
    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"

    @property
    def on_batch(self) -> bool:
        return self in (WriteInterval.BATCH, WriteInterval.BATCH_AND_EPOCH)

    @property
    def on_epoch(self) -> bool:
        return self in (WriteInterval.EPOCH, WriteInterval.BATCH_AND_EPOCH)


class BasePredictionWriter(Callback):
    """Subclass and implement `write_on_batch_end` and/or `write_on_epoch_end`.

    Args:
        write_interval: "batch", "epoch" or "batch_and_epoch".
    """

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in [i.value for i in WriteInterval]:
            raise MisconfigurationException(f"`write_interval` should be one of {[i.value for i in WriteInterval]}.")
        self.interval = WriteInterval(write_interval)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if "dataloader_iter" in inspect.signature(pl_module.predict_step).parameters:
            raise NotImplementedError("The `PredictionWriterCallback` does not support using `dataloader_iter`.")

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Optional[Sequence[int]],
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        """Override with the logic to write a single batch."""
        raise NotImplementedError()

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        """Override with the logic to write all batches."""
        raise NotImplementedError()

    # Only predict hooks: a writer costs nothing in fit/validate/test.
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if not self.interval.on_batch:
            return
        batch_indices = trainer.predict_loop.current_batch_indices
        self.write_on_batch_end(trainer, pl_module, outputs, batch_indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.interval.on_epoch:
            return
        loop = trainer.predict_loop
        self.write_on_epoch_end(trainer, pl_module, loop.predictions, loop.epoch_batch_indices)
