"""How the training loop gets its batches: in the main thread, or from the native prefetcher.

A background thread only pays off when reading a batch waits without holding the GIL (disk or
network reads, DataLoader workers, sleeps). When the loader's Python code itself is the work
(collating small tensors), a second thread just competes with the step for the GIL: on W1 (a
`TensorDataset` read in the main thread) prefetching from the first batch costs more than it
saves (`benches/bench_w1.py`, "forced-pf" row). So the first few batches of each epoch are read
in the main thread and each read is timed; the rest of the epoch comes from the prefetcher when
most of those reads waited (decided as soon as the majority is known: 2 reads of 3 when they
agree, each probe read being one whose wait is not overlapped).

A read waited when most of its wall time was not this thread's CPU time and, where the OS counts
them (Linux), the thread blocked voluntarily during it. The second test matters on a loaded
machine: a thread preempted by the scheduler also shows wall time without CPU time, and on a
shared 2-core box that alone made about one epoch in seven of W1 prefetch for nothing.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Optional, Tuple, Union

from ferrotrain.errors import ConfigTypeError, MisconfigurationException
from ferrotrain.trainer.data import Fetcher

try:
    import resource

    _RUSAGE_THREAD: Optional[int] = resource.RUSAGE_THREAD  # Linux only
except (ImportError, AttributeError):  # pragma: no cover - other platforms
    _RUSAGE_THREAD = None

# Batches read in the main thread before deciding, and the decision's thresholds.
PROBE_BATCHES = 3
WAIT_SHARE = 0.5  # a read waited when more than this share of its wall time was not CPU time
MIN_READ_S = 100e-6  # reads faster than this on average are not worth a thread hand-off


def _blocked_count() -> int:
    """This thread's voluntary context switches so far (it blocked: I/O, sleep, a lock); -1 where
    the OS does not count them per thread."""
    if _RUSAGE_THREAD is None:
        return -1
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class TrainFetcher:
    __slots__ = ("_sync", "_prefetcher", "_depth", "_probes", "_probe_left", "_wall", "_waits", "fetch")

    def __init__(self, loader: Any, num_batches: Union[int, float], depth: int,
                 probe: Optional[int] = None) -> None:
        """`probe`: batches to read and time in the main thread before deciding (default
        `PROBE_BATCHES`); 0 with `depth > 0` prefetches from the first batch, undecided."""
        self._sync = Fetcher(loader, num_batches)
        self._prefetcher: Optional[Any] = None
        self._depth = depth
        probe = PROBE_BATCHES if probe is None else probe
        self._probes = probe
        self._probe_left = probe if depth > 0 else 0
        self._wall = 0.0
        self._waits = 0  # probe reads that waited
        # `fetch` is rebound as the strategy settles, so the steady state pays no dispatch.
        self.fetch = self._probe if self._probe_left else self._sync.fetch
        if depth > 0 and probe == 0:
            self._start_prefetcher()

    @property
    def prefetching(self) -> bool:
        return self._prefetcher is not None

    def _probe(self) -> Optional[Tuple[Any, bool]]:
        b0 = _blocked_count()
        w0, c0 = time.perf_counter(), time.thread_time()
        item = self._sync.fetch()
        wall = time.perf_counter() - w0
        cpu = time.thread_time() - c0
        blocked = _blocked_count() > b0 if b0 >= 0 else True
        self._wall += wall
        if wall > 0 and (wall - cpu) / wall > WAIT_SHARE and blocked:
            self._waits += 1
        self._probe_left -= 1
        if item is None or item[1]:
            self.fetch = self._sync.fetch
        elif 2 * self._waits > self._probes or 2 * (self._waits + self._probe_left) <= self._probes:
            # Decided as soon as the majority is known: each probe read is one not overlapped.
            self._decide()
        return item

    def _decide(self) -> None:
        # Most probe reads must have waited: one preempted or slow read alone does not decide.
        reads = self._probes - self._probe_left
        self._probe_left = 0
        if self._wall / reads < MIN_READ_S or 2 * self._waits <= self._probes:
            self.fetch = self._sync.fetch
            return
        self._start_prefetcher()

    def _start_prefetcher(self) -> None:
        from ferrotrain.data import Prefetcher

        sync = self._sync
        # Hand the rest of the iterator (and a batch already read ahead) to the prefetcher.
        rest = sync.rest()
        remaining = sync._remaining
        self._prefetcher = Prefetcher(_Limited(rest, remaining), depth=self._depth)
        self.fetch = self._prefetcher.fetch

    def close(self) -> None:
        self._sync.close()
        if self._prefetcher is not None:
            self._prefetcher.close()


class _Limited:
    """The iterator's remaining batches, at most `count` of them, with a length when known."""

    def __init__(self, it: Any, count: Union[int, float]) -> None:
        self._it = it
        self._count = count

    def __iter__(self) -> Any:
        if self._count == float("inf"):
            return iter(self._it)
        return itertools.islice(self._it, int(self._count))

    def __len__(self) -> int:
        if self._count == float("inf"):
            raise TypeError("unknown length")
        return int(self._count)


def check_depth(value: Any) -> int:
    """`trainer.prefetch_batches`: an int >= 0."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigTypeError(
            f"`trainer.prefetch_batches` must be an int >= 0 (0: no prefetching), got {value!r} ({type(value).__name__})"
        )
    if value < 0:
        raise MisconfigurationException(
            f"`trainer.prefetch_batches` must be an int >= 0 (0: no prefetching), got {value!r}"
        )
    return value
