"""The data path: what sits between the user's loaders and the training step. It owns reading
batches ahead of the step (`Prefetcher`); it does not own datasets, samplers or collation, which
stay torch's."""

from __future__ import annotations

from .prefetch import Prefetcher

__all__ = ["Prefetcher"]
