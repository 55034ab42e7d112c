"""Walking nested batches (tensors inside dicts, lists, tuples, namedtuples, dataclasses):
mapping every tensor while keeping the container types, listing them, moving them to a device,
and inferring the batch size."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional

import torch


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor],
                other: Optional[Callable[[Any], Any]] = None) -> Any:
    """`fn` applied to every tensor in a nested batch (dicts, lists, tuples, namedtuples,
    dataclasses), keeping the container types; any other value goes through `other` when given,
    else unchanged. The one walker behind device moves, dtype casts and pinning."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        items = [(k, map_tensors(v, fn, other)) for k, v in batch.items()]
        return dict(items) if type(batch) is dict else type(batch)(items)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(map_tensors(v, fn, other) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(v, fn, other) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {f.name: map_tensors(getattr(batch, f.name), fn, other) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **changes)
    return other(batch) if other is not None else batch


def iter_tensors(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested batch, without rebuilding any container."""
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for v in batch.values():
            yield from iter_tensors(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from iter_tensors(v)
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        for f in dataclasses.fields(batch):
            yield from iter_tensors(getattr(batch, f.name))


def move_data_to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of `batch` on `device`; other objects with a `.to(device)` are moved too."""
    # non_blocking only pays off (and is only safe) from pinned memory to a GPU.
    cuda = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=cuda and t.is_pinned())

    def move_other(obj: Any) -> Any:
        if hasattr(obj, "to") and callable(obj.to):
            try:
                return obj.to(device)
            except TypeError:
                return obj
        return obj

    return map_tensors(batch, move, move_other)


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
