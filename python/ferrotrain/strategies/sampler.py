"""Putting a `DistributedSampler` in front of a loader, as Lightning does for train/val/test.

A plain `torch.utils.data.DataLoader` (or a subclass taking the same arguments) is rebuilt with
the same settings and a `DistributedSampler` that keeps its shuffle (a `RandomSampler` shuffles,
anything else does not; evaluation never shuffles) and seeds from `seed_everything`'s seed. The
fit loop calls `set_epoch` each epoch. Loaders it cannot rebuild faithfully (iterable datasets,
custom batch samplers, other iterables) are left as they are, with a warning for DataLoaders.

Predicting uses `UnrepeatedDistributedSampler` (Lightning's choice): no shuffle and no padding, so
every sample is predicted exactly once, by one rank (rank r gets samples r, r + world, ...); the
ranks may then get one batch more or less than each other, which predict (no collectives) allows.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import DistributedSampler

from ferrotrain.utilities.rank_zero import rank_zero_warn


def with_distributed_sampler(loader: Any, stage: str, num_replicas: int, rank: int) -> Any:
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler

    if num_replicas <= 1 or not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader  # the user placed one already
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        rank_zero_warn(
            f"The {stage} DataLoader has a custom batch sampler ({type(batch_sampler).__name__}); it is used as "
            "is, so every process reads the same batches. Shard it yourself or pass `use_distributed_sampler=False`"
        )
        return loader
    if loader.batch_size is None and batch_sampler is not None:
        batch_size, drop_last, inner = batch_sampler.batch_size, batch_sampler.drop_last, batch_sampler.sampler
    else:
        batch_size, drop_last, inner = loader.batch_size, loader.drop_last, loader.sampler
    shuffle = stage == "train" and isinstance(inner, RandomSampler)
    cls = UnrepeatedDistributedSampler if stage == "predict" else DistributedSampler
    sampler = cls(
        loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
        seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
    )
    from ferrotrain.trainer.data import rebuild_loader

    try:
        return rebuild_loader(loader, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    except TypeError as exc:
        rank_zero_warn(
            f"Could not rebuild the {stage} loader ({type(loader).__name__}) with a DistributedSampler ({exc}); "
            "it is used as is, so every process reads the same batches"
        )
        return loader



class UnrepeatedDistributedSampler(DistributedSampler):
    """A `DistributedSampler` that does not pad or shuffle: rank r reads samples r, r + world, ..."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n = len(self.dataset)  # type: ignore[arg-type]
        self.num_samples = len(range(self.rank, n, self.num_replicas))
        self.total_size = n

    def __iter__(self) -> Any:
        return iter(range(self.rank, self.total_size, self.num_replicas))
