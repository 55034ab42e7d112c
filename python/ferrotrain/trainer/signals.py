"""Signal handlers installed for the length of a fit, so that a scheduler's stop signal costs at
most the current step.

The handler only records the signal and calls `on_signal` (which sets the loop's stop request, a
field the native loop reads at batch boundaries anyway): nothing else happens inside the handler,
so it is safe whatever the interrupted code was doing. The user's own handlers are saved on entry
and restored on exit, and each is still called after ours records the signal, so handlers
installed before `fit` keep working. A second signal while the stop is under way is recorded
as seen and otherwise ignored: the checkpoint being written is finished.

Signals handled (Lightning 2.6's `_SignalConnector` semantics):
- SIGTERM: request a stop after the current step.
- the SLURM requeue signal (SIGUSR1 by default) under SLURM: request a stop; when auto-requeue
  is on, `requeue_job` asks SLURM to requeue the job after the checkpoint is written.
SIGINT stays Python's KeyboardInterrupt, handled by the Trainer's graceful-shutdown path, which
ignores further SIGINTs while it runs (`ignoring_sigint`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from types import FrameType
from typing import Any, Callable, Iterator, Optional


@contextlib.contextmanager
def ignoring_sigint() -> Iterator[None]:
    """SIGINT ignored for the block: the Ctrl-C shutdown runs to its end however often the user
    presses Ctrl-C again (Lightning ignores SIGINT there). Lightning leaves it ignored for the rest
    of the process; the handler is put back here so that a notebook or a test session that
    catches the `SystemExit` still gets Ctrl-C, and the processes it starts do too."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change signal handlers
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

from ferrotrain.errors import SIGTERMException

__all__ = ["SIGTERMException", "SignalFlags", "requeue_job", "slurm_requeue_signal"]


class SignalFlags:
    """Which stop signals arrived since `install`. Read by the loop between steps."""

    def __init__(self, requeue_signal: Optional[int] = None,
                 on_signal: Optional[Callable[[int], None]] = None) -> None:
        self.received: Optional[int] = None  # the first stop signal seen
        self.count = 0  # every stop signal seen, the first included
        self.requeue_signal = requeue_signal
        self._on_signal = on_signal
        self._saved: dict[int, Any] = {}

    @property
    def stop_requested(self) -> bool:
        return self.received is not None

    @property
    def requeue_requested(self) -> bool:
        return self.requeue_signal is not None and self.received == self.requeue_signal

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
            if self._on_signal is not None:
                self._on_signal(signum)
        previous = self._saved.get(signum)
        if callable(previous):
            previous(signum, frame)

    def install(self) -> "SignalFlags":
        # signal.signal only works in the main thread; elsewhere (a fit in a worker thread) the
        # process keeps its own handlers and no stop is requested by signals.
        if threading.current_thread() is not threading.main_thread():
            return self
        wanted = [signal.SIGTERM]
        if self.requeue_signal is not None and self.requeue_signal != signal.SIGTERM:
            wanted.append(self.requeue_signal)
        for signum in wanted:
            self._saved[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)
        return self

    def restore(self) -> None:
        for signum, previous in self._saved.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._saved.clear()

    def __enter__(self) -> "SignalFlags":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def slurm_requeue_signal(requeue_signal: Optional[int] = None) -> Optional[int]:
    """The requeue signal when running under SLURM (SLURM_JOB_ID set), else None."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return int(requeue_signal) if requeue_signal is not None else int(signal.SIGUSR1)


def requeue_job(run: Callable[..., Any] = subprocess.run) -> int:
    """Ask SLURM to requeue this job (`scontrol requeue $SLURM_JOB_ID`); returns its exit code.
    Array jobs are requeued by their array id, as Lightning does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise RuntimeError("requeue_job: SLURM_JOB_ID is not set; requeue needs a SLURM job")
    return run(["scontrol", "requeue", job_id]).returncode
