"""The CUDA half of the training data path: pinned host memory, and each batch's copy to the GPU
issued one batch ahead on a side stream while the current step runs.

It owns pinning batches where they are read (`PinnedLoader`: in the prefetch thread when one
runs) and the copy-ahead (`AheadFeeder` with `CudaCopy`). It does not own reading batches (the
fetchers in `fetching`) nor the user's transfer hooks: when the module or datamodule overrides
any of `on_before_batch_transfer`, `transfer_batch_to_device` or `on_after_batch_transfer`, the
loop runs them in Lightning's order right before each batch's step, and batches are only pinned
here (the default transfer then copies them with `non_blocking=True` on the compute stream).
The Trainer imports this module only for a CUDA run: the CPU and MPS paths pay nothing for it.

Why the copy-ahead is correct (the three hazards of an asynchronous copy):

- The step must not read the batch before its copy finished: before a batch is handed out, the
  compute stream waits for the side stream (`wait_stream`), which orders it after that copy and
  before nothing later (the next batch's copy is issued after the wait).
- The batch's device memory was allocated on the side stream; the caching allocator would reuse
  it for a later side-stream allocation as soon as the tensor is freed, even while the compute
  stream still reads it. `record_stream(compute)` makes the allocator wait for the compute
  stream's work queued so far before reusing the block.
- The pinned host buffer must live until its copy ran: torch's pinned-memory allocator records
  an event on the copying stream for every `non_blocking` copy from pinned memory and does not
  reuse the buffer before it, so dropping the host batch early is safe.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Tuple

import torch

from ferrotrain.data.tensor_batches import loader_batches
from ferrotrain.utilities.apply_func import iter_tensors, map_tensors, move_data_to_device


def _pin(t: torch.Tensor) -> torch.Tensor:
    # Only dense CPU tensors can be page-locked; anything else is copied as it is.
    if t.device.type != "cpu" or t.is_pinned() or t.layout != torch.strided:
        return t
    return t.pin_memory()


def loader_pins(loader: Any) -> bool:
    """Whether `loader` already returns pinned batches (a DataLoader with `pin_memory=True`)."""
    return bool(getattr(loader, "pin_memory", False))


class PinnedLoader:
    """`loader`'s batches with their CPU tensors in pinned memory, pinned in the thread that
    reads them (the prefetcher's when it runs). `len()` is the loader's."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __iter__(self) -> Iterator[Any]:
        for batch in loader_batches(self._loader):
            yield map_tensors(batch, _pin)

    def __len__(self) -> int:
        return len(self._loader)


class CudaCopy:
    """Issues a batch's copy on a side stream, and hands a copied batch over to the compute
    stream (see the module docstring for why each call is needed)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device)

    def issue(self, batch: Any) -> Any:
        with torch.cuda.stream(self.stream):
            # Pinned tensors copy with non_blocking=True (move_data_to_device decides per tensor).
            return move_data_to_device(batch, self.device)

    def hand_over(self, batch: Any) -> Any:
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)
        for t in iter_tensors(batch):
            if t.is_cuda:
                t.record_stream(compute)
        return batch


class AheadFeeder:
    """A training fetcher whose batches were moved to the device one batch ahead.

    `fetch()` returns `(batch, is_last)` like the fetcher it wraps. Handing out batch k reads
    batch k+1 from the source and issues its copy, so the copy runs while step k computes. The
    source is not read past a batch flagged last. An exception raised while reading ahead is
    raised by the next `fetch()`, at the batch where it happened; KeyboardInterrupt at once.
    """

    __slots__ = ("_source", "_copy", "_ready", "_error", "_done")

    def __init__(self, source: Any, copy: Any) -> None:
        self._source = source
        self._copy = copy
        self._ready: Optional[Tuple[Any, bool]] = None
        self._error: Optional[BaseException] = None
        self._done = False

    @property
    def prefetching(self) -> bool:
        return bool(getattr(self._source, "prefetching", False))

    def _read_ahead(self) -> None:
        try:
            item = self._source.fetch()
        except Exception as exc:  # raised when the loop asks for this batch, not one early
            self._error = exc
            return
        if item is None:
            self._done = True
        else:
            self._ready = (self._copy.issue(item[0]), item[1])

    def fetch(self) -> Optional[Tuple[Any, bool]]:
        if self._ready is None and not self._done:
            if self._error is not None:
                error, self._error = self._error, None
                self._done = True
                raise error
            self._read_ahead()
            if self._error is not None:
                return self.fetch()
        item = self._ready
        if item is None:
            return None
        self._ready = None
        batch = self._copy.hand_over(item[0])
        if item[1]:
            self._done = True
        else:
            self._read_ahead()
        return batch, item[1]

    def close(self) -> None:
        self._ready = None
        self._error = None
        self._done = True
        self._source.close()


def train_fetcher(trainer: Any, loader: Any, make_fetcher: Callable[[Any], Any], ahead: bool) -> Any:
    """The training fetcher for a CUDA run: batches pinned where they are read, and, when
    `ahead`, moved to the device one batch ahead on a side stream."""
    source = make_fetcher(loader if loader_pins(loader) else PinnedLoader(loader))
    if not ahead:
        return source
    return AheadFeeder(source, CudaCopy(trainer._device))
