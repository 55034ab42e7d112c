"""`BackgroundSender`: a tracker's records handed to a daemon thread, so that a logging step on
the training thread only appends to a list, and the tracker client's disk or network work (a
file store's reads and appends, a socket hand-off) happens beside training.

Records are sent in the order they were put, in batches of what piled up meanwhile; `flush()`
waits until every record put before it has been sent, and raises the first error a send raised,
so a failure still reaches the user (at the next log call, flush or `finalize`)."""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import Any, Callable, List, Optional


class BackgroundSender:
    """Send records through `send(batch)` from one daemon thread, started on the first `put`.

    Args:
        send: called on the sender thread with a list of records (at most `max_batch`), in order.
        name: the thread's name (shown in thread dumps and profilers).
        max_batch: the most records one `send` call receives.
        linger_s: how long the thread waits, after a record arrives, for more to send with it
            (fewer, larger client calls); a `flush()` cuts the wait short.
    """

    def __init__(self, send: Callable[[List[Any]], None], name: str, max_batch: int = 1000,
                 linger_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"BackgroundSender(max_batch={max_batch!r}): expected an int of at least 1")
        self._send = send
        self._name = name
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._pending: List[Any] = []
        self._put_count = 0
        self._done_count = 0
        self._flushing = 0
        self._closed = False
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def put(self, record: Any) -> None:
        """Queue `record`; raises the error an earlier send raised, if any."""
        self._raise_error()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._name}: put() after close()")
            self._pending.append(record)
            self._put_count += 1
            if self._thread is None:
                self._start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Block until every record put so far has been sent; raise the first send error."""
        if threading.current_thread() is self._thread:
            return  # a send that reaches flush (through the tracker's own API) must not wait on itself
        with self._cond:
            target = self._put_count
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._done_count < target and self._thread is not None and self._thread.is_alive():
                    self._cond.wait(0.1)
            finally:
                self._flushing -= 1
        self._raise_error()

    def close(self) -> None:
        """Flush, then stop the thread; a later `put` is an error."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()

    @property
    def pending(self) -> int:
        """Records put but not yet sent."""
        with self._cond:
            return self._put_count - self._done_count

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        # records still queued when the interpreter exits are sent first (a script that never
        # reached `finalize`); the weak reference lets a dropped sender be collected
        ref = weakref.ref(self)
        atexit.register(_flush_at_exit, ref)

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                if self._linger_s > 0 and not self._closed:
                    deadline = time.monotonic() + self._linger_s
                    while not self._flushing and not self._closed and len(self._pending) < self._max_batch:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
            try:
                self._send(batch)
            except BaseException as err:  # kept for the training thread; the thread goes on
                if self._error is None:
                    self._error = err
            with self._cond:
                self._done_count += len(batch)
                self._cond.notify_all()


def _flush_at_exit(ref: "weakref.ReferenceType[BackgroundSender]") -> None:
    sender = ref()
    if sender is not None and sender.pending:
        try:
            sender.flush()
        except Exception:
            pass  # the interpreter is exiting: nobody is left to report a failed send to
