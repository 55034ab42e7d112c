"""`Prefetcher`: reads batches from any iterable on a background thread while the step runs.

It owns the read-ahead and the `is_last` flag; the thread, the bounded queue and the waiting are
in the native core (`ferrotrain._core.Prefetcher`). This module adds what must be Python: the
exit hook that closes live prefetchers before the interpreter shuts down.

Contract (what the training loop relies on):

- `Prefetcher(iterable, depth=2)` calls `iter(iterable)` at once, in the calling thread (a
  DataLoader starts its workers there), and starts a thread that keeps up to `depth` batches
  ready. It calls `next()` from that thread, holding the GIL only while the loader's Python code
  runs; the consumer waits with the GIL released.
- `fetch()` returns `(batch, is_last)`, or `None` once the iterable is exhausted (and after
  `close()`). Batches come in the iterable's exact order, each once, as the same objects.
  Iterating a `Prefetcher` yields the same pairs.
- `is_last`: when the iterable has `len()`, a batch is last when its position + 1 reaches it
  (Lightning's rule; `len()` is trusted, except that an end already read is honoured too).
  Without `len()`, a batch is handed out only once the next one (or the end) was read, so the
  thread keeps `depth + 1` batches ready; nothing is read ahead on the caller's side.
- An exception raised by the iterable is raised by `fetch()` at the batch where it happened, with
  its type and traceback; the thread is joined before it leaves.
- `close()` stops the thread and joins it. The thread checks the stop flag after each item, so
  `close()` waits for the item being read (a `next()` cannot be interrupted from outside); a
  signal during that wait (a second Ctrl-C) raises and leaves the thread to end after that item.
  `close()` also runs on `with` exit, when the object is collected, and at interpreter exit.
  Ctrl-C while `fetch()` waits raises `KeyboardInterrupt` after closing the same way.
- `depth=0`: no thread. `fetch()` reads the iterable itself, with the same contract (one batch
  of look-ahead when the iterable has no `len()`).
- `len(prefetcher)` is the iterable's `len()` (TypeError when it has none).
- Fork safety: DataLoader workers may fork while the thread runs. The native object never touches
  its lock or thread from another process than the one that created it.
"""

from __future__ import annotations

import atexit
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ferrotrain import _core

__all__ = ["Prefetcher"]

_LIVE: weakref.WeakSet[Prefetcher] = weakref.WeakSet()


class Prefetcher(_core.Prefetcher):
    """Reads batches from `iterable` on a background thread, `depth` batches ahead (0: none).
    `fetch()` returns `(batch, is_last)` or `None` when exhausted; see the module docstring."""

    __slots__ = ()

    def __init__(self, iterable: Iterable[Any], depth: int = 2) -> None:
        # The native __new__ did the work; remember the object so the exit hook can close it.
        _LIVE.add(self)

    if TYPE_CHECKING:  # the native methods, for type checkers

        def fetch(self) -> tuple[Any, bool] | None: ...
        def close(self) -> None: ...
        def is_alive(self) -> bool: ...
        @property
        def depth(self) -> int: ...
        def __len__(self) -> int: ...
        def __iter__(self) -> Iterator[tuple[Any, bool]]: ...
        def __next__(self) -> tuple[Any, bool]: ...
        def __enter__(self) -> Prefetcher: ...
        def __exit__(self, *exc: object) -> bool: ...


Prefetcher.__module__ = "ferrotrain.data"


@atexit.register
def _close_all() -> None:
    # Before interpreter shutdown, when a producer thread can still finish its item and be
    # joined; later it could not take the GIL back.
    for prefetcher in list(_LIVE):
        prefetcher.close()
