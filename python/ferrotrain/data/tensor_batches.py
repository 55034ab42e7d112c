"""Reading a loader's batches, with a direct read for the commonest in-memory dataset.

A `DataLoader` over a `TensorDataset` with the default collation builds each batch by indexing
every tensor once per sample and stacking the rows again: on W1 (batches of 32 rows) that is
about a quarter of a hand-written loop's step. The batch it builds is, tensor by tensor, the rows
at the batch's indices, contiguous. `loader_batches` reads exactly that with one torch call per
tensor: a copy of a row range when the loader samples sequentially, a gather otherwise.

What stays the loader's: the iterator is the loader's own (`iter(loader)` draws its base seed
from the same generator), and the indices come from that iterator's batch sampler, so the order,
`drop_last`, shuffling and every random draw are the DataLoader's. The batch is the list that
`default_collate` returns, with equal values, dtype, shape and strides
(`tests/test_tensor_batches.py` compares them). A read the direct path cannot do (indices out of
range or of another kind, which the gather refuses) is done by the loader's own fetcher, so its
error is the DataLoader's. Under torch's profiler the read is recorded under the DataLoader's name.

Only the exact case takes the direct path: a `DataLoader` (not a subclass, which may read
differently) in the main process, over a `TensorDataset` (not a subclass) of dense contiguous CPU
tensors that do not require grad, or over `Subset`s of one (`random_split`'s), with
`default_collate` and without pinning. Anything else is `iter(loader)`.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch


def loader_batches(loader: Any) -> Iterator[Any]:
    """The batches of one pass over `loader`: `iter(loader)`, read directly when it is a plain
    DataLoader over a TensorDataset or a Subset of one (see the module docstring)."""
    source = _direct_source(loader)
    it = iter(loader)
    if source is None or getattr(it, "_pin_memory", True) or not hasattr(it, "_next_index") \
            or not hasattr(it, "_dataset_fetcher"):
        return it
    tensors, rows = source
    return TensorBatches(it, tensors, rows, rows is None and _samples_in_order(loader))


def _direct_source(loader: Any) -> Optional[Tuple[Tuple[torch.Tensor, ...], Optional[torch.Tensor]]]:
    """`(tensors, rows)` when `loader` is the exact case the direct read reproduces, else None:
    the TensorDataset's tensors, and for a Subset (nested or not, as `random_split` makes) the
    dataset row of each of its items (None: item i is row i)."""
    from torch.utils.data import DataLoader, Subset, TensorDataset
    from torch.utils.data._utils.collate import default_collate

    if type(loader) is not DataLoader or loader.num_workers != 0 or loader.batch_sampler is None \
            or loader.collate_fn is not default_collate:
        return None
    dataset, rows = loader.dataset, None
    try:
        while type(dataset) is Subset:
            # Item i of a Subset is item indices[i] of the dataset under it.
            indices = torch.as_tensor(dataset.indices)
            if indices.dim() != 1 or indices.dtype not in (torch.int64, torch.int32):
                return None
            rows = indices if rows is None else torch.index_select(indices, 0, rows)
            dataset = dataset.dataset
    except Exception:  # indices torch cannot gather with (negative, out of range, not ints)
        return None
    if type(dataset) is not TensorDataset:
        return None
    for t in dataset.tensors:
        if (type(t) is not torch.Tensor or t.layout is not torch.strided or t.device.type != "cpu"
                or t.requires_grad or not t.is_contiguous()):
            return None
    return tuple(dataset.tensors), rows


def _samples_in_order(loader: Any) -> bool:
    """Whether every batch's indices are a run of consecutive ascending ints (torch's
    BatchSampler over a SequentialSampler)."""
    from torch.utils.data import BatchSampler, SequentialSampler

    batches = loader.batch_sampler
    return type(batches) is BatchSampler and type(batches.sampler) is SequentialSampler


class TensorBatches:
    """One pass over a DataLoader of a TensorDataset (or a Subset of one: `rows` maps its items to
    dataset rows), each batch read with one call per tensor."""

    __slots__ = ("_loader_iter", "_next_index", "_tensors", "_rows", "_in_order")

    def __init__(self, loader_iter: Any, tensors: Sequence[torch.Tensor], rows: Optional[torch.Tensor],
                 in_order: bool) -> None:
        self._loader_iter = loader_iter
        self._next_index = loader_iter._next_index
        self._tensors = tuple(tensors)
        self._rows = rows
        self._in_order = in_order

    def __iter__(self) -> "TensorBatches":
        return self

    def __next__(self) -> List[torch.Tensor]:
        index = self._next_index()  # StopIteration ends the pass
        if torch.autograd._profiler_enabled():
            with torch.autograd.profiler.record_function(self._loader_iter._profile_name):
                return self._read(index)
        return self._read(index)

    def _read(self, index: Any) -> List[torch.Tensor]:
        try:
            if self._in_order:
                start, n = index[0], len(index)
                return [torch.narrow_copy(t, 0, start, n) for t in self._tensors]
            rows = torch.as_tensor(index)
            if self._rows is not None:
                rows = torch.index_select(self._rows, 0, rows)
            return [torch.index_select(t, 0, rows) for t in self._tensors]
        except Exception:
            # What the gather refuses (negative or out-of-range indices, other index types) the
            # loader reads per sample, and raises its own error when it fails too.
            return self._loader_iter._dataset_fetcher.fetch(index)
