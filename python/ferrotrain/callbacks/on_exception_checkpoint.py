"""`OnExceptionCheckpoint`: save a checkpoint when `fit` raises (Ctrl-C included), so the run can be
resumed from where it broke. After a run that ends normally, a stale file from an earlier crash is
removed."""

from __future__ import annotations

import os
from typing import Any, Union

from ferrotrain.callbacks.checkpoint import Checkpoint


class OnExceptionCheckpoint(Checkpoint):
    """Save `dirpath/filename.ckpt` when training raises (Lightning's `OnExceptionCheckpoint`).

    Args:
        dirpath: the folder of the checkpoint.
        filename: the file name without the `.ckpt` extension.

    Raises:
        ValueError: if `filename` is empty.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: Union[str, "os.PathLike[str]"], filename: str = "on_exception") -> None:
        super().__init__()
        if not filename:
            raise ValueError("The filename cannot be empty")
        self.dirpath = os.fspath(dirpath)
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        strategy = getattr(trainer, "strategy", None)
        remove = getattr(strategy, "remove_checkpoint", None)
        if remove is not None:
            remove(self.ckpt_path)
        elif getattr(trainer, "is_global_zero", True) and os.path.isfile(self.ckpt_path):
            os.remove(self.ckpt_path)
