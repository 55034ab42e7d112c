"""Synchronous `save` and `load`: turns tensors into `(data_ptr, nbytes)` for the Rust writer,
and the validated entries the Rust reader returns into zero-copy tensors over a private
memory map. Owns the torch side of file I/O (device moves, `map_location`); the byte layout,
checksums, atomic rename and header validation are the Rust core's (`ferrotrain._core`)."""

from __future__ import annotations

import mmap
import os
from typing import Any, Callable, Optional, Union

import torch

from .. import _core
from ..errors import CheckpointError, CorruptCheckpointError
from ._tree import NAME_TO_DTYPE, flatten, unflatten

#: Extra `__metadata__` entries of every file (the safetensors convention for torch files).
METADATA = {"format": "pt"}
_TREE_KEY = "ferrotrain.tree"

PathLike = Union[str, "os.PathLike[str]"]
MapLocation = Union[None, str, torch.device, dict, Callable[..., Any]]


def host_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor with the same values (the tensor itself when it already is one)."""
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.device.type != "cpu":
        t = t.to("cpu")
    return t.contiguous()


def save(path: PathLike, checkpoint: dict) -> None:
    """Write `checkpoint` to `path` atomically and durably; returns once it is on disk.

    `checkpoint` is a (Lightning-style) nested dict: see `ferrotrain.checkpoint` for what it may
    hold. The file is torch's own format (`torch.load(path)` returns the dict, with its default
    `weights_only=True`). Tensors are written from their own memory (CPU) or from a host copy
    (other devices), with the GIL released.

    Raises `CheckpointError` naming the key path of a value that cannot be saved (before any
    file is touched), or naming `path` when the file cannot be written (read-only folder, disk
    full...); the previous file at `path`, if any, is then left untouched.
    """
    _write(path, flatten(checkpoint))


def save_safetensors(path: PathLike, tensors: dict) -> None:
    """Write a flat `{name: tensor}` dict as a safetensors file (atomic, durable), for serving
    stacks that read that format; `safetensors.torch.load_file(path)` returns it."""
    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"a safetensors file holds str -> tensor entries only; {bad[0]!r} is not one")
    _write(path, flatten(dict(tensors), METADATA, format="safetensors"))


def _write(path: PathLike, flat: Any) -> None:
    path = os.fspath(path)
    sources = []
    host = []  # keeps the host copies alive while Rust reads their memory (`flat` holds the rest)
    for t, direct in zip(flat.tensors, flat.direct):
        if direct is None:
            t = host_contiguous(t)
            host.append(t)
            direct = (t.data_ptr(), t.numel() * t.element_size())
        sources.append(direct)
    _core.checkpoint_write(path, flat.layout, sources)


def _map_tensor(t: torch.Tensor, saved: str, map_location: MapLocation) -> torch.Tensor:
    """Apply torch.load-style `map_location` to a CPU tensor saved from device `saved`."""
    if map_location is None:
        target: Any = saved
    elif isinstance(map_location, (str, torch.device)):
        target = map_location
    elif isinstance(map_location, dict):
        target = map_location.get(saved, saved)
    elif callable(map_location):
        # torch.load's contract: fn(storage, location) -> a storage, or None for the default.
        out = map_location(t.untyped_storage(), saved)
        if out is None:
            target = saved
        elif isinstance(out, torch.Tensor):
            return out
        elif isinstance(out, (torch.UntypedStorage, torch.TypedStorage)):
            storage = out.untyped() if isinstance(out, torch.TypedStorage) else out
            return torch.empty(0, dtype=t.dtype, device=storage.device).set_(storage, 0, t.shape, t.stride())
        else:
            raise CheckpointError(f"map_location returned {type(out).__qualname__}, expected a storage or None")
    else:
        raise CheckpointError(f"unsupported map_location {map_location!r}")
    target = torch.device(target)
    if target.type == "cpu":
        return t
    return t.to(target)


def _tensors_from(path: str, f: Any, entries: list) -> dict:
    """Zero-copy tensors over a private (copy-on-write) map of the open file `f`."""
    tensors: dict = {}
    mm: Optional[mmap.mmap] = None
    for name, dtype_name, shape, offset, nbytes in entries:
        dtype = NAME_TO_DTYPE.get(dtype_name)
        if dtype is None:
            raise CheckpointError(f"checkpoint '{path}': dtype {dtype_name} is not supported by this torch")
        if nbytes == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        if mm is None:
            # ACCESS_COPY: the tensors are writable, and writes never reach the file.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if offset % itemsize == 0:
            flat = torch.frombuffer(mm, dtype=dtype, count=nbytes // itemsize, offset=offset)
        else:  # only in files from other writers: copy rather than build a misaligned tensor
            flat = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset).clone().view(dtype)
        tensors[name] = flat.view(shape)
    # Each tensor holds a reference to the map; it is unmapped when the last one is freed.
    return tensors


def load_legacy(path: PathLike, map_location: MapLocation = None, verify: bool = True) -> dict:
    """Read a checkpoint in ferrotrain's earlier format (safetensors with the tree as JSON).

    Tensors are memory-mapped without a copy (writable; writes stay private to this process and
    never reach the file). `map_location` works as in `torch.load`: None restores each tensor to
    the device it was saved from, a str / `torch.device` moves every tensor there, a dict maps
    saved device strings to new ones, a callable `fn(storage, location)` returns a storage (or
    None for the default). With `verify` (the default) every tensor's CRC-32 is checked first.

    Raises `CorruptCheckpointError` naming the file (and the tensor, for a checksum mismatch)
    when the file is truncated, damaged or not a ferrotrain checkpoint, and `CheckpointError`
    when it cannot be opened. Nothing is unpickled.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint '{path}': {e.strerror or e}") from e
    with f:
        entries, metadata = _core.checkpoint_read(f.fileno(), path, bool(verify))
        cpu = _tensors_from(path, f, entries)
    def place(name: str, saved: Optional[str]) -> torch.Tensor:
        saved = saved or "cpu"
        try:
            return _map_tensor(cpu[name], saved, map_location)
        except CheckpointError:
            raise
        except (RuntimeError, AssertionError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint '{path}': cannot place tensor '{name}' (saved on {saved}): {e}; "
                "pass map_location='cpu' to load it on the CPU"
            ) from e

    tree = metadata.get(_TREE_KEY)
    if tree is None:  # pragma: no cover - the Rust reader already requires it
        raise CorruptCheckpointError(f"corrupt checkpoint '{path}': no {_TREE_KEY} metadata")
    return unflatten(path, tree, cpu, place)


def _open(path: str) -> Any:
    try:
        return open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint '{path}': {e.strerror or e}") from e


def load(path: PathLike, map_location: MapLocation = None, verify: bool = True, mmap: bool = False) -> dict:
    """Read a torch-format checkpoint (written by `save`, the Trainer, or `torch.save` within
    the restricted subset) without running any pickle: the inverse of `save`.

    The native reader parses `data.pkl`'s opcodes itself and accepts only dicts, OrderedDicts,
    lists, tuples, str, int, float, bool, None, `torch.Size`, `torch.device`, dtypes, bytes,
    tensors and Parameters; anything else is a `CorruptCheckpointError` naming the file and
    what was refused (load such a file with `torch.load(weights_only=False)` if you trust it).
    With `verify` (the default) every entry's CRC-32 is checked: a damaged byte is an error
    naming the file and the entry, never a silent load.

    Tensors own their memory (as with `torch.load`), so the file may be rewritten or deleted
    at once. `mmap=True` maps the storages from the file instead (copy-on-write: writes to
    the tensors never reach the file). Rewriting the file through ferrotrain (which replaces it
    by a rename) is safe then, but a program that rewrites that same file in place (for example
    `torch.save` to the same path) while the tensors are alive crashes this process (SIGBUS).

    `map_location` works as in `torch.load`: None restores each tensor to the device it was
    saved from, a str / `torch.device` moves every tensor there, a dict maps saved device
    strings to new ones, a callable `fn(storage, location)` returns a storage (or None).
    """
    path = os.fspath(path)
    with _open(path) as f:
        fd = f.fileno()
        tree, storages = _core.torch_open(fd, path)
        ranges = [(at, nbytes, crc, name) for name, _, nbytes, _, at, crc in storages]
        if mmap:
            if verify:
                _core.torch_verify(fd, path, ranges)
            cpu = _mapped(f, storages)
        else:
            cpu = [torch.empty(nbytes, dtype=torch.uint8) for _, _, nbytes, _, _, _ in storages]
            _core.torch_read_storages(fd, path, ranges, [(t.data_ptr(), t.numel()) for t in cpu], bool(verify))
    placed: dict = {}

    def place(index: Any, _saved: Optional[str]) -> torch.Tensor:
        if type(index) is not int or not 0 <= index < len(cpu):
            raise ValueError(f"the tree refers to a storage {index!r} that the file does not hold")
        if index not in placed:
            name, _, _, location, _, _ = storages[index]
            try:
                placed[index] = _map_tensor(cpu[index], location, map_location)
            except CheckpointError:
                raise
            except (RuntimeError, AssertionError, ValueError) as e:
                raise CheckpointError(
                    f"checkpoint '{path}': cannot place storage '{name}' (saved on {location}): {e}; "
                    "pass map_location='cpu' to load it on the CPU"
                ) from e
        return placed[index]

    return unflatten(path, tree, {}, place)


def _mapped(f: Any, storages: list) -> list:
    out = []
    mm = None
    for _, _, nbytes, _, at, _ in storages:
        if nbytes == 0:
            out.append(torch.empty(0, dtype=torch.uint8))
            continue
        if mm is None:
            # ACCESS_COPY: the tensors are writable, and writes never reach the file.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        out.append(torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=at))
    return out
