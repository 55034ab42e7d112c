"""The data path: what sits between the user's loaders and the training step. It owns reading
batches ahead of the step (`Prefetcher`) and the direct read of a DataLoader over a TensorDataset
(`loader_batches`, which builds the batches torch's default collation would); datasets, samplers
and every other collation stay torch's."""

from __future__ import annotations

from .prefetch import Prefetcher

__all__ = ["Prefetcher"]
