"""`AsyncCheckpointWriter`: snapshot a checkpoint's tensors into one reusable host buffer, then
let a Rust thread write the file while training goes on. Owns the buffer (a torch uint8
tensor, pinned when CUDA tensors are copied into it), the device-to-host copies and the
deferred snapshot (tensors the caller will not change for a while, copied after `submit`
returns); the background thread, the parallel CPU copies and the file format are the Rust core's."""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
import warnings
import weakref
from typing import Any, Collection, List, Optional, Sequence, Tuple

import torch

from .. import _core
from ..errors import CheckpointError
from ._io import METADATA, PathLike
from ._tree import flatten

_live: "weakref.WeakSet[AsyncCheckpointWriter]" = weakref.WeakSet()
#: Below this many deferrable bytes the copy is done before `submit` returns: it takes well
#: under a millisecond, less than starting the thread that would defer it.
DEFER_MIN_BYTES = 4 << 20


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

    - `submit(..., defer=tensors)`: those of the checkpoint's CPU tensors the caller will not
      modify until `finish_snapshot()` (the Trainer's parameters and optimizer states, which
      change only in the next optimizer step) are copied on a background thread after `submit`
      returns, so the copy overlaps whatever the caller does next. `finish_snapshot()` waits for
      that copy. Once the copy is done its thread checks, by their version counters, that none
      of them changed meanwhile, and only then is the file completed and renamed into place.
      One that changed (an in-place write through the tensor or a view of it; writes through
      `.data`, and one still running when the copy ends, are not seen) is a warning naming it: the file is written again with every
      tensor as it is then, and this writer copies everything before returning from then on.
      `submit`, `wait` and `close` finish a pending snapshot first.

    Usable as a context manager (`close` on exit). Pending writes are also awaited at
    interpreter exit. Not meant to be shared between threads (calls are serialised).
    """

    def __init__(self) -> None:
        self._writer = _core.AsyncWriter()
        self._buffer: Optional[torch.Tensor] = None
        self._closed = False
        self._lock = threading.Lock()
        self._pending: Optional[_DeferredCopy] = None
        self._defer = True
        _live.add(self)

    @property
    def buffer_nbytes(self) -> int:
        """Bytes of host memory held for snapshots (0 before the first submit)."""
        return 0 if self._buffer is None else self._buffer.numel()

    @property
    def in_flight(self) -> bool:
        """True while a submitted write has not been awaited."""
        return self._pending is not None or self._writer.in_flight

    @property
    def snapshot_pending(self) -> bool:
        """True while tensors given in `submit(defer=...)` may still be read by the copy."""
        return self._pending is not None

    def finish_snapshot(self) -> None:
        """Block until the deferred copy of the last `submit` is done (the caller may then modify
        those tensors); raise `CheckpointError` when it failed. Returns at once when no copy is
        pending."""
        with self._lock:
            self._finish_snapshot()

    def _finish_snapshot(self) -> None:
        job, self._pending = self._pending, None
        if job is None:
            return
        job.thread.join()
        if job.error is not None:
            raise job.error
        if job.changed is None:
            return
        # A deferred tensor changed while it was being copied (a hook wrote it in place right
        # after the save): the held file was dropped. Write the checkpoint again from the same
        # tree with every tensor copied now, so the file is whole (that tensor as it is now),
        # and copy before returning from now on.
        try:
            self._writer.wait()
        except CheckpointError:
            pass  # the discard itself
        self._defer = False
        warnings.warn(
            f"tensor '{job.changed}' of checkpoint '{job.path}' was modified in place while the "
            "checkpoint was being copied after the save returned (the copy runs until the next optimizer "
            "step); the checkpoint holds its new value, and this writer now copies every tensor before a "
            "save returns. Modify parameters and optimizer states in place only in optimizer steps to keep "
            "saves from blocking.",
            UserWarning,
            stacklevel=4,
        )
        # The other tensors' bytes are in the buffer already (copied before `submit` returned).
        self._writer.submit(*job.args[:5], job.later, job.args[6])

    def _buffer_for(self, nbytes: int, pinned: bool) -> torch.Tensor:
        buf = self._buffer
        if buf is None or buf.numel() < nbytes or (pinned and not buf.is_pinned()):
            # Free the old buffer before allocating: at most one checkpoint's worth is held.
            self._buffer = buf = None
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)
            self._buffer = buf
        return buf

    def submit(self, path: PathLike, checkpoint: dict, remove: Sequence[PathLike] = (),
               defer: Collection[torch.Tensor] = ()) -> None:
        """Snapshot `checkpoint` and start writing it to `path` in the background.

        `remove`: files to delete on the background thread (before it writes `path`; a file
        already gone is fine). They may go because the write submitted before this one, which
        replaces them, is awaited (durable) first; a failure to delete one is raised like a
        write error, by the next `submit`, `wait` or `close`.

        `defer`: tensors of the checkpoint that the caller will not modify until
        `finish_snapshot()`; their copy runs after this returns (see the class docs). Only
        contiguous CPU tensors stored whole are deferred, and only when they hold at least
        `DEFER_MIN_BYTES`; the others are copied before it returns.

        Raises `CheckpointError` for a value that cannot be saved (naming its key path), for the
        previous background write's failure, or when the writer is closed.
        """
        with self._lock:
            if self._closed:
                raise CheckpointError("this AsyncCheckpointWriter is closed")
            self._finish_snapshot()
            self._writer.wait()  # the previous write: awaited first, its error raised here
            path = os.fspath(path)
            flat = flatten(checkpoint, METADATA)
            layout = flat.layout
            # Tensors the native encoder could not read in place (devices, strided views).
            copied = [t for t, direct in zip(flat.tensors, flat.direct) if direct is None]
            pinned = any(t.device.type == "cuda" for t in copied) and torch.cuda.is_available()
            buf = self._buffer_for(layout.data_len, pinned)
            copies = []
            later: List[Tuple[int, int, int]] = []
            versions: List[Tuple[torch.Tensor, int, str]] = []
            stable = {(t.data_ptr(), t.numel() * t.element_size()) for t in defer if t.device.type == "cpu"} if self._defer else set()
            streams = set()
            for t, name, direct, offset in zip(flat.tensors, flat.names, flat.direct, layout.offsets):
                if direct is not None:
                    if direct[1] and (direct[0], direct[1]) in stable:
                        later.append((direct[0], direct[1], offset))
                        versions.append((t, t._version, name))
                    elif direct[1]:
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
            removing = [os.fspath(p) for p in remove]
            if sum(n for _, n, _ in later) < DEFER_MIN_BYTES:
                copies += later
                later = []
            if not later:
                self._writer.submit(path, layout, buf, buf.data_ptr(), buf.numel(), copies, removing)
                return
            # The tensors that may change soon are copied now, on this thread (small: buffers,
            # counters, RNG states); the rest by the native copy on a thread of its own, which
            # feeds the writer and holds the file back until it has checked they did not change.
            base = buf.data_ptr()
            for src, nbytes, offset in copies:
                ctypes.memmove(base + offset, src, nbytes)
            job = _DeferredCopy(path, versions, flat, later, (path, layout, buf, base, buf.numel(), later, removing, True))
            job.thread = threading.Thread(target=job.run, args=(self._writer,), name="ferrotrain-ckpt-copy", daemon=True)
            self._pending = job
            job.thread.start()

    def wait(self) -> None:
        """Block until the write in flight (if any) is durable; raise its error if it failed."""
        with self._lock:
            self._finish_snapshot()
            self._writer.wait()

    def close(self) -> None:
        """Wait for the write in flight (raising its error) and refuse further submits. Idempotent."""
        with self._lock:
            self._closed = True
            self._finish_snapshot()
            self._writer.wait()

    def __enter__(self) -> "AsyncCheckpointWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DeferredCopy:
    """One deferred snapshot: its thread runs the native copy (which starts the write), then
    checks the version counters and lets the file be completed, or drops it when one changed.
    Holds the flattened checkpoint, which keeps the sources alive."""

    def __init__(self, path: str, versions: List[Tuple[torch.Tensor, int, str]], flat: Any,
                 later: list, args: tuple) -> None:
        self.path = path
        self.versions = versions
        self.flat = flat
        self.later = later
        self.args = args
        self.thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None
        self.changed: Optional[str] = None  # the first tensor found modified during the copy

    def run(self, writer: Any) -> None:
        try:
            writer.submit(*self.args)  # the GIL is released while it copies
        except BaseException as e:  # noqa: BLE001 - raised by finish_snapshot on the caller's thread
            self.error = e
            return
        # In-place writes bump a tensor's version counter when they are done; a write that had
        # begun and not yet finished here would be missed, but then it also overlaps the
        # caller's next step, which already waits for this thread.
        self.changed = next((name for t, version, name in self.versions if t._version != version), None)
        if self.changed is None:
            writer.commit()
        else:
            writer.discard()


@atexit.register
def _finish_pending_writes() -> None:
    # A write submitted just before exit still reaches the disk; its error has no caller left,
    # so it is printed rather than lost silently.
    for w in list(_live):
        try:
            w.close()
        except Exception as e:  # noqa: BLE001 - report every failure at exit
            print(f"ferrotrain: background checkpoint write failed: {e}", file=sys.stderr)
