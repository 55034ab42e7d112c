"""`trainer.predict_loop`: what Lightning's `_PredictionLoop` exposes to callbacks (the cached
predictions, the sample indices of each batch), and the loader rewrite that records those indices.

The batches themselves run in `evaluation_loop.run_predict`; this module only owns the state a
`BasePredictionWriter` reads. Sample indices are recorded, as in Lightning, by putting a
recording wrapper around the predict loader's batch sampler (the loader is rebuilt with it, and
with `drop_last=False` so every sample is predicted). The rebuild only happens when a prediction
writer is attached: nothing else reads the indices.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, List, Optional


class IndexBatchSampler:
    """Wraps a batch sampler and keeps every batch of indices it hands out (Lightning's
    `_IndexBatchSamplerWrapper`); the list restarts with each new iteration."""

    def __init__(self, batch_sampler: Any) -> None:
        # Keep the wrapped sampler's attributes (batch_size, drop_last, sampler) visible.
        self.__dict__ = {k: v for k, v in batch_sampler.__dict__.items()
                         if k not in ("__next__", "__iter__", "__len__", "__getstate__")}
        self.seen_batch_indices: List[List[int]] = []
        self._batch_sampler = batch_sampler
        self._iterator: Optional[Iterator[List[int]]] = None

    def __iter__(self) -> "IndexBatchSampler":
        self.seen_batch_indices = []
        self._iterator = iter(self._batch_sampler)
        return self

    def __next__(self) -> List[int]:
        assert self._iterator is not None
        batch = next(self._iterator)
        self.seen_batch_indices.append(batch)
        return batch

    def __len__(self) -> int:
        return len(self._batch_sampler)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_iterator"] = None  # generators do not pickle (worker processes)
        return state


def with_index_tracking(loader: Any) -> Any:
    """`loader` rebuilt around an `IndexBatchSampler`, or as it is when it cannot be (not a
    DataLoader, an iterable dataset, no batch sampler): the writer then gets no indices."""
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    batch_sampler = loader.batch_sampler
    if batch_sampler is None:
        return loader
    if type(batch_sampler) is BatchSampler:
        batch_sampler = BatchSampler(loader.sampler, batch_size=batch_sampler.batch_size, drop_last=False)
    elif hasattr(batch_sampler, "batch_size") and hasattr(batch_sampler, "drop_last"):
        # Lightning rebuilds a BatchSampler look-alike the same way, around the loader's sampler.
        batch_sampler = type(batch_sampler)(loader.sampler, batch_size=batch_sampler.batch_size, drop_last=False)
    else:
        warnings.warn(
            f"You are using a custom batch sampler `{type(batch_sampler).__qualname__}` for prediction."
            " Lightning would normally set `drop_last=False` to ensure all samples are returned, but for"
            " custom samplers it can't guarantee this. Make sure your sampler is configured correctly to return"
            " all indices.",
            stacklevel=2,
        )
    from ferrotrain.trainer.data import rebuild_loader

    try:
        return rebuild_loader(loader, batch_sampler=IndexBatchSampler(batch_sampler))
    except TypeError as exc:
        warnings.warn(f"Could not rebuild the predict loader ({type(loader).__name__}) to record batch indices ({exc})",
                      stacklevel=2)
        return loader


class PredictLoop:
    """The predict loop's state, as `trainer.predict_loop` (Lightning's attribute names)."""

    def __init__(self) -> None:
        self.epoch_batch_indices: List[List[List[int]]] = []  # dataloaders x batches x samples
        self.current_batch_indices: List[int] = []  # the batch being written
        self.max_batches: List[Any] = []
        self._predictions: List[List[Any]] = []  # dataloaders x batches
        self._return_predictions = True
        self._num_dataloaders = 0

    @property
    def return_predictions(self) -> bool:
        return self._return_predictions

    @return_predictions.setter
    def return_predictions(self, value: Optional[bool]) -> None:
        self._return_predictions = True if value is None else bool(value)

    @property
    def num_dataloaders(self) -> int:
        return self._num_dataloaders

    @property
    def predictions(self) -> List[Any]:
        """The predictions kept so far: one list per dataloader, or the only one's list."""
        if self._predictions == []:
            return self._predictions
        return self._predictions[0] if self._num_dataloaders == 1 else self._predictions


def batch_indices_of(loader: Any) -> Optional[List[List[int]]]:
    sampler = getattr(loader, "batch_sampler", None)
    return sampler.seen_batch_indices if isinstance(sampler, IndexBatchSampler) else None
