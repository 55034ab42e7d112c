"""`AsyncCheckpointWriter`: snapshot a checkpoint's tensors into one reusable host buffer, then
let a Rust thread write the file while training goes on. Owns the buffer (a torch uint8
tensor, pinned when CUDA tensors are copied into it) and the device-to-host copies; the
background thread, the parallel CPU copies and the file format are the Rust core's."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from typing import Optional, Sequence

import torch

from .. import _core
from ..errors import CheckpointError
from ._io import METADATA, PathLike
from ._tree import flatten

_live: "weakref.WeakSet[AsyncCheckpointWriter]" = weakref.WeakSet()


class AsyncCheckpointWriter:
    """Writes checkpoints in the background, one at a time.

    `submit(path, checkpoint)` blocks only while the checkpoint's tensors are copied into a host
    buffer (CPU tensors by Rust threads with the GIL released; CUDA tensors by a device-to-host
    copy into pinned memory, synchronised before returning). When it returns, the caller may
    modify or free every tensor: what gets written is the snapshot. A Rust thread writes the
    file exactly as `save` does (atomic, fsynced, checksummed), from the snapshot buffer only: it
    starts on the pieces already copied while `submit` is still copying the later ones, so the
    copy overlaps the write; it runs at a lower CPU priority than the training thread.

    - A write still in flight when `submit` is called again is awaited first.
    - A background failure is raised as `CheckpointError` (naming the file) by the next
      `submit` (which then does not take the new checkpoint), `wait` or `close`: never lost.
    - The buffer is reused from one checkpoint to the next and only grows, to the largest
      checkpoint submitted: the extra host memory is one checkpoint's tensor bytes
      (`buffer_nbytes`).

    Usable as a context manager (`close` on exit). Pending writes are also awaited at
    interpreter exit. Not meant to be shared between threads (calls are serialised).
    """

    def __init__(self) -> None:
        self._writer = _core.AsyncWriter()
        self._buffer: Optional[torch.Tensor] = None
        self._closed = False
        self._lock = threading.Lock()
        _live.add(self)

    @property
    def buffer_nbytes(self) -> int:
        """Bytes of host memory held for snapshots (0 before the first submit)."""
        return 0 if self._buffer is None else self._buffer.numel()

    @property
    def in_flight(self) -> bool:
        """True while a submitted write has not been awaited."""
        return self._writer.in_flight

    def _buffer_for(self, nbytes: int, pinned: bool) -> torch.Tensor:
        buf = self._buffer
        if buf is None or buf.numel() < nbytes or (pinned and not buf.is_pinned()):
            # Free the old buffer before allocating: at most one checkpoint's worth is held.
            self._buffer = buf = None
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)
            self._buffer = buf
        return buf

    def submit(self, path: PathLike, checkpoint: dict, remove: Sequence[PathLike] = ()) -> None:
        """Snapshot `checkpoint` and start writing it to `path` in the background.

        `remove`: files to delete on the background thread (before it writes `path`; a file
        already gone is fine). They may go because the write submitted before this one, which
        replaces them, is awaited (durable) first; a failure to delete one is raised like a
        write error, by the next `submit`, `wait` or `close`.

        Raises `CheckpointError` for a value that cannot be saved (naming its key path), for the
        previous background write's failure, or when the writer is closed.
        """
        with self._lock:
            if self._closed:
                raise CheckpointError("this AsyncCheckpointWriter is closed")
            self._writer.wait()  # the previous write: awaited first, its error raised here
            path = os.fspath(path)
            flat = flatten(checkpoint, METADATA)
            layout = flat.layout
            # Tensors the native encoder could not read in place (devices, strided views).
            copied = [t for t, direct in zip(flat.tensors, flat.direct) if direct is None]
            pinned = any(t.device.type == "cuda" for t in copied) and torch.cuda.is_available()
            buf = self._buffer_for(layout.data_len, pinned)
            copies = []
            streams = set()
            for t, direct, offset in zip(flat.tensors, flat.direct, layout.offsets):
                if direct is not None:
                    if direct[1]:
                        copies.append((direct[0], direct[1], offset))  # `flat` keeps `t` alive
                    continue
                nbytes = t.numel() * t.element_size()
                if nbytes == 0:
                    continue
                # Strided or device tensors: torch copies them straight into their slot.
                dst = buf[offset : offset + nbytes].view(t.dtype).view(t.shape)
                if t.device.type == "cuda":
                    dst.copy_(t, non_blocking=pinned)
                    streams.add(torch.cuda.current_stream(t.device))
                else:
                    dst.copy_(t)
            # Sync point: the device-to-host copies must have landed before the Rust thread
            # reads the buffer and before the caller may modify the device tensors.
            for s in streams:
                s.synchronize()
            self._writer.submit(path, layout, buf, buf.data_ptr(), buf.numel(), copies, [os.fspath(p) for p in remove])

    def wait(self) -> None:
        """Block until the write in flight (if any) is durable; raise its error if it failed."""
        with self._lock:
            self._writer.wait()

    def close(self) -> None:
        """Wait for the write in flight (raising its error) and refuse further submits. Idempotent."""
        with self._lock:
            self._closed = True
            self._writer.wait()

    def __enter__(self) -> "AsyncCheckpointWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _finish_pending_writes() -> None:
    # A write submitted just before exit still reaches the disk; its error has no caller left,
    # so it is printed rather than lost silently.
    for w in list(_live):
        try:
            w.close()
        except Exception as e:  # noqa: BLE001 - report every failure at exit
            print(f"ferrotrain: background checkpoint write failed: {e}", file=sys.stderr)
