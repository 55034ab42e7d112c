"""Lightning's info messages for a batch limit of exactly `1` or `1.0`: the int and the float
mean different things (one batch vs. every batch), so a user who wrote one is told which."""

from __future__ import annotations

from typing import Any

from ferrotrain.utilities.rank_zero import rank_zero_info

_ONE_BATCH = {
    "limit_train_batches": "1 batch per epoch will be used.",
    "val_check_interval": "validation will run after every batch.",
}
_ALL_BATCHES = {
    "limit_train_batches": "100% of the batches per epoch will be used.",
    "val_check_interval": "validation will run at the end of the training epoch.",
}


def announce_batch_limit(name: str, value: Any) -> None:
    """Log what `Trainer(name=1)` or `Trainer(name=1.0)` selects; other values say nothing.
    Called only for values the user passed (defaults are `None`)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and value == 1:
        rank_zero_info(f"`Trainer({name}=1)` was configured so {_ONE_BATCH.get(name, '1 batch will be used.')}")
    elif isinstance(value, float) and value == 1.0:
        rank_zero_info(f"`Trainer({name}=1.0)` was configured so {_ALL_BATCHES.get(name, '100% of the batches will be used.')}")
