"""Moving nested batches (tensors inside dicts, lists, tuples, namedtuples, dataclasses) to a
device, recursively, keeping the container types."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def move_data_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        # non_blocking only pays off (and is only safe) from pinned memory to a GPU.
        return batch.to(device, non_blocking=batch.is_pinned() and device.type == "cuda")
    if isinstance(batch, dict):
        return type(batch)((k, move_data_to_device(v, device)) for k, v in batch.items()) if type(batch) is not dict else {
            k: move_data_to_device(v, device) for k, v in batch.items()
        }
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_data_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_data_to_device(v, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {f.name: move_data_to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **changes)
    if hasattr(batch, "to") and callable(batch.to):
        try:
            return batch.to(device)
        except TypeError:
            return batch
    return batch


def extract_batch_size(batch: Any) -> int:
    """The size of the first dimension of the first tensor found, as Lightning infers it."""
    if isinstance(batch, torch.Tensor):
        return 1 if batch.ndim == 0 else int(batch.size(0))
    if isinstance(batch, (str, bytes)):
        return 1
    if isinstance(batch, dict):
        for v in batch.values():
            n = extract_batch_size(v)
            if n is not None:
                return n
        return None  # type: ignore[return-value]
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = extract_batch_size(v)
            if n is not None:
                return n
        return None  # type: ignore[return-value]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        for f in dataclasses.fields(batch):
            n = extract_batch_size(getattr(batch, f.name))
            if n is not None:
                return n
    return None  # type: ignore[return-value]
