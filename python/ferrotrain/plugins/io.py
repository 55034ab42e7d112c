"""Checkpoint I/O plugins: how a checkpoint dict becomes a file and back.

`TorchCheckpointIO` is what the Trainer uses when given none: torch's zip format written by the
native writer (`torch.load` reads it). A subclass, or `AsyncCheckpointIO` around one, passed in
`Trainer(plugins=[...])` writes and reads every checkpoint the trainer saves and resumes from.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional

from ferrotrain.errors import NotSupportedYetError


class CheckpointIO:
    """The interface: save, load and remove one checkpoint."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        raise NotImplementedError

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        raise NotImplementedError

    def remove_checkpoint(self, path: Any) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        """Called when a run ends."""


class TorchCheckpointIO(CheckpointIO):
    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("`TorchCheckpointIO.save_checkpoint(storage_options=...)` is not supported: "
                            "pass a custom CheckpointIO to use storage options")
        from ferrotrain import checkpoint as io

        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
        io.save(os.fspath(path), checkpoint)

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        from ferrotrain.checkpoint._migrate import load_any

        if not os.path.exists(os.fspath(path)):
            raise FileNotFoundError(f"Checkpoint file not found: {os.fspath(path)}")
        return load_any(os.fspath(path), map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            import shutil

            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


class AsyncCheckpointIO(CheckpointIO):
    """Saves through another CheckpointIO on a background thread: `save_checkpoint` returns at
    once; the next save, a load and `teardown` wait for the one in flight (and raise its error)."""

    def __init__(self, checkpoint_io: Optional[CheckpointIO] = None) -> None:
        self.checkpoint_io = checkpoint_io if checkpoint_io is not None else TorchCheckpointIO()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        self._wait()

        def run() -> None:
            try:
                self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options)
            except BaseException as e:  # raised on the caller's thread at the next wait
                self._error = e

        self._thread = threading.Thread(target=run, name="ferrotrain-async-checkpoint-io", daemon=True)
        self._thread.start()

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        self._wait()
        return self.checkpoint_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        self._wait()
        self.checkpoint_io.remove_checkpoint(path)

    def teardown(self) -> None:
        self._wait()
        self.checkpoint_io.teardown()


class XLACheckpointIO(TorchCheckpointIO):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedYetError("`XLACheckpointIO` is not supported by ferrotrain: it needs TPUs through torch_xla")
