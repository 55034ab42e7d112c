"""Where each loop's data comes from and how many batches it yields.

It resolves loaders from the arguments of fit/validate/test/predict, the datamodule, or the
module's `*_dataloader` hooks (in Lightning's order of precedence), applies `limit_*_batches`,
and hands the loops a fetcher that yields `(batch, is_last)`. It does not move batches to a
device: the loops call the transfer hooks.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ferrotrain.callbacks.callback import is_overridden
from ferrotrain.core.datamodule import LightningDataModule
from ferrotrain.core.module import LightningModule
from ferrotrain.data.tensor_batches import loader_batches
from ferrotrain.errors import ConfigTypeError, MisconfigurationException

INF = float("inf")


def sequential_for_overfit(loaders: List[Any], prefix: str) -> List[Any]:
    """`Trainer(overfit_batches=...)`: the same first batches every epoch, so a shuffling loader
    is rebuilt with a `SequentialSampler`, with Lightning's warning (fit only)."""
    from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

    if all(isinstance(getattr(dl, "sampler", None), SequentialSampler) for dl in loaders if hasattr(dl, "sampler")):
        return loaders
    from ferrotrain.utilities.rank_zero import rank_zero_warn

    rank_zero_warn(
        f"You requested to overfit but enabled {prefix} dataloader shuffling."
        f" We are turning off the {prefix} dataloader shuffling for you."
    )
    out = []
    for dl in loaders:
        rebuildable = (isinstance(dl, DataLoader) and not isinstance(dl.dataset, IterableDataset)
                       and dl.batch_size is not None and not isinstance(dl.sampler, SequentialSampler))
        out.append(rebuild_loader(dl, sampler=SequentialSampler(dl.dataset), batch_size=dl.batch_size,
                                  drop_last=dl.drop_last) if rebuildable else dl)
    return out


def rebuild_loader(loader: Any, **sampling: Any) -> Any:
    """A new `type(loader)` over the same dataset with the same worker, collation and memory
    settings, and the given sampling arguments (`sampler`, `batch_size`, `drop_last`, or
    `batch_sampler`) instead of its own: how a DistributedSampler, a sequential sampler for
    `overfit_batches` or index tracking for prediction writers goes in front of a user's loader.
    Raises TypeError when the class does not take DataLoader's arguments."""
    kwargs = dict(
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
        persistent_workers=loader.persistent_workers, **sampling,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return type(loader)(loader.dataset, **kwargs)


def _check_iterable(source: Any, what: str) -> None:
    if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
        raise ConfigTypeError(
            f"`{what}` must be a DataLoader or another iterable of batches, got {source!r} ({type(source).__name__})"
        )


def as_loader_list(source: Any, what: str) -> List[Any]:
    """Validation/test/predict accept one loader, a list/tuple, or a dict of loaders."""
    if isinstance(source, dict):
        loaders = list(source.values())
    elif isinstance(source, (list, tuple)) and source and all(_is_loader_like(s) for s in source):
        loaders = list(source)
    else:
        loaders = [source]
    for loader in loaders:
        _check_iterable(loader, what)
    return loaders


def _is_loader_like(obj: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(obj, DataLoader)


def resolve_loaders(stage: str, given: Any, datamodule: Optional[LightningDataModule],
                    module: LightningModule) -> Optional[Any]:
    """The loader(s) for `stage` ('train', 'val', 'test', 'predict'): the argument, else the
    datamodule's hook, else the module's hook; None when nobody provides one."""
    if given is not None:
        return _seed_workers(given)
    hook = f"{stage}_dataloader"
    if datamodule is not None and is_overridden(datamodule, LightningDataModule, hook):
        return _seed_workers(getattr(datamodule, hook)())
    if is_overridden(module, LightningModule, hook):
        return _seed_workers(getattr(module, hook)())
    return None


def _seed_workers(loaders: Any) -> Any:
    """`seed_everything(..., workers=True)`: loaders without a `worker_init_fn` get Lightning's."""
    from ferrotrain.trainer.reproducibility import auto_add_worker_init_fn

    auto_add_worker_init_fn(loaders)
    return loaders


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader's sampler, and its batch sampler's sampler, which epoch this is, as
    Lightning does before every training, evaluation and prediction pass: samplers that
    shuffle per epoch (DistributedSampler, user samplers) draw from it."""
    samplers = []
    sampler = getattr(loader, "sampler", None)
    if sampler is not None:
        samplers.append(sampler)
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if inner is not None and all(inner is not s for s in samplers):
        samplers.append(inner)
    for s in samplers:
        set_epoch = getattr(s, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def sized_len(loader: Any) -> Union[int, float]:
    """`len(loader)`, or inf when the loader has no length."""
    try:
        return len(loader)
    except (TypeError, NotImplementedError):
        return INF


def limited_batches(loader: Any, limit: Union[int, float], name: str) -> Union[int, float]:
    n = sized_len(loader)
    if isinstance(limit, int):
        return min(n, limit)
    if n == INF:
        if limit not in (0.0, 1.0):
            prefix = name[len("limit_"):-len("_batches")] if name.startswith("limit_") else "train"
            raise MisconfigurationException(
                f"When using an `IterableDataset`, `Trainer(limit_{prefix}_batches)` must be `1.0` or an int. An int "
                f"specifies `num_{prefix}_batches` to use. (`Trainer({name}={limit})`: the loader has no length)"
            )
        return 0 if limit == 0.0 else INF
    return int(n * limit)



def reported_batch_counts(loaders: List[Any], counts: List[Union[int, float]], limit: Union[int, float],
                          name: str) -> List[Union[int, float]]:
    """`trainer.num_{val,test}_batches` as Lightning reports them: a `CombinedLoader` that zips
    its iterables (every mode but "sequential") counts each iterable, limited, though the loop
    runs the combined batches; any other loader counts as run (`counts`)."""
    from ferrotrain.utilities.combined_loader import CombinedLoader

    out: List[Union[int, float]] = []
    for loader, count in zip(loaders, counts):
        if isinstance(loader, CombinedLoader) and loader.mode != "sequential":
            out += [limited_batches(it, limit, name) for it in loader.flattened]
        else:
            out.append(count)
    return out

class Fetcher:
    """Yields `(batch, is_last)` from a loader, at most `limit` batches.

    With a known count the last batch is known from the count; without one, the fetcher reads
    one batch ahead (order unchanged) to learn whether the current batch is the last.
    """

    __slots__ = ("_it", "_remaining", "_sized", "_next", "_exhausted")

    def __init__(self, loader: Iterable[Any], num_batches: Union[int, float]) -> None:
        self._it: Iterator[Any] = loader_batches(loader)
        self._sized = num_batches != INF
        self._remaining = num_batches
        self._exhausted = False
        self._next: Any = _MISSING
        if not self._sized:
            self._advance()

    def _advance(self) -> None:
        try:
            self._next = next(self._it)
        except StopIteration:
            self._next = _MISSING
            self._exhausted = True
        except Exception as exc:  # raised when the loop reaches this batch, not one batch early
            self._next = _ReadError(exc)

    def fetch(self) -> Optional[Tuple[Any, bool]]:
        if self._remaining <= 0:
            return None
        if self._sized:
            try:
                batch = next(self._it)
            except StopIteration:
                return None
            self._remaining -= 1
            return batch, self._remaining == 0
        if self._next is _MISSING:
            return None
        batch = self._next
        if type(batch) is _ReadError:
            self._next = _MISSING
            raise batch.exc
        self._advance()
        return batch, self._exhausted

    def rest(self) -> Iterator[Any]:
        """The batches not fetched yet (a batch already read ahead first), for a prefetcher to
        take over from here."""
        if self._next is _MISSING:
            return self._it
        return itertools.chain(_replay(self._next), self._it)

    def close(self) -> None:
        self._remaining = 0
        self._next = _MISSING


_MISSING = object()


class _ReadError:
    """An exception raised while reading a batch ahead, kept until the loop reaches that batch."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _replay(item: Any) -> Iterator[Any]:
    if type(item) is _ReadError:
        raise item.exc
    yield item
