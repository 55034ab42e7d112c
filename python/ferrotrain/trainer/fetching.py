"""How the training loop gets its batches: in the main thread, or from the native prefetcher.

A background thread only pays off when reading a batch waits without holding the GIL (disk or
network reads, DataLoader workers, sleeps). When the loader's Python code itself is the work
(collating small tensors), a second thread just competes with the step for the GIL. So the first
few batches of each epoch are read in the main thread while their wall time and this thread's CPU
time are measured; if most of the wall time was spent waiting, the rest of the epoch comes from
the prefetcher.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Optional, Tuple, Union

from ferrotrain.errors import ConfigTypeError, MisconfigurationException
from ferrotrain.trainer.data import Fetcher

# Batches read in the main thread before deciding, and the decision's thresholds.
PROBE_BATCHES = 3
WAIT_SHARE = 0.5  # prefetch when more than this share of the read time was spent waiting
MIN_READ_S = 100e-6  # reads faster than this are not worth a thread hand-off


class TrainFetcher:
    __slots__ = ("_sync", "_prefetcher", "_depth", "_probes", "_probe_left", "_wall", "_cpu", "fetch")

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
        self._cpu = 0.0
        # `fetch` is rebound as the strategy settles, so the steady state pays no dispatch.
        self.fetch = self._probe if self._probe_left else self._sync.fetch
        if depth > 0 and probe == 0:
            self._start_prefetcher()

    @property
    def prefetching(self) -> bool:
        return self._prefetcher is not None

    def _probe(self) -> Optional[Tuple[Any, bool]]:
        w0, c0 = time.perf_counter(), time.thread_time()
        item = self._sync.fetch()
        self._wall += time.perf_counter() - w0
        self._cpu += time.thread_time() - c0
        self._probe_left -= 1
        if item is None:
            self.fetch = self._sync.fetch
        elif self._probe_left == 0:
            self._decide(item)
        return item

    def _decide(self, last_item: Tuple[Any, bool]) -> None:
        mean_read = self._wall / self._probes
        waiting = 1.0 - (self._cpu / self._wall if self._wall > 0 else 1.0)
        if last_item[1] or mean_read < MIN_READ_S or waiting < WAIT_SHARE:
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
