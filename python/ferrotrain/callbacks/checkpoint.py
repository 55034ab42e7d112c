"""`Checkpoint`: the marker base class of callbacks that save checkpoints (Lightning's
`lightning.pytorch.callbacks.Checkpoint`); `ModelCheckpoint` and `OnExceptionCheckpoint` subclass it,
and the Trainer finds checkpointing callbacks by it."""

from __future__ import annotations

from ferrotrain.callbacks.callback import Callback


class Checkpoint(Callback):
    """Base class of checkpointing callbacks."""
