"""The checkpoint tree: how a nested checkpoint dict becomes one JSON document plus a list of
named tensors, and back. Owns the type rules (what can be saved, how each type is tagged); does
not touch files (see `_io.py`).

Encoding (JSON values; every non-JSON type is an object with one tag key):

    None, bool, int, str, finite float -> themselves
    nan / inf / -inf                   -> {"float": "nan" | "inf" | "-inf"}
    list                               -> [...]
    tuple / torch.Size                 -> {"tuple": [...]} / {"size": [...]}
    dict / OrderedDict, str keys       -> {"dict": {k: v}} / {"odict": {k: v}, "meta": _metadata?}
    dict / OrderedDict, other keys     -> {"dict": [[k, v], ...]} (keys: None/bool/int/float/str/tuple)
    torch.Tensor / nn.Parameter        -> {"tensor": name, "device"?: "cuda:0", "param"?: requires_grad}
    numpy.ndarray / numpy scalar       -> {"ndarray": name} / {"np_scalar": name}
    bytes                              -> {"bytes": name}        (stored as a uint8 tensor)
    torch.dtype / torch.device         -> {"dtype": "bfloat16"} / {"device": "cuda:0"}

Subclasses of dict, list, tuple, str, int and float (enums, namedtuples, AttributeDict...) are
saved as their base type. Anything else raises `CheckpointError` naming its key path: nothing is
ever pickled. Tensors are named after their key path ("state_dict/" dropped, so the weights keep
their state_dict names in the file); views of the same memory are stored once.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..errors import CheckpointError, CorruptCheckpointError

try:  # numpy is optional: without it, no numpy value can appear in a checkpoint anyway.
    import numpy as _np
except ImportError:  # pragma: no cover - numpy ships with every supported torch
    _np = None

_DTYPE_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.complex64: "C64",
}
for _attr, _name in [
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
]:
    if hasattr(torch, _attr):
        _DTYPE_NAMES[getattr(torch, _attr)] = _name
#: torch dtype -> safetensors dtype name, and back.
DTYPE_TO_NAME = dict(_DTYPE_NAMES)
NAME_TO_DTYPE = {v: k for k, v in DTYPE_TO_NAME.items()}

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def key_path(path: tuple) -> str:
    """`("callbacks", "EarlyStopping", 0)` -> `checkpoint['callbacks']['EarlyStopping'][0]`."""
    return "checkpoint" + "".join(f"[{k!r}]" for k in path)


@dataclass
class Flattened:
    """A checkpoint split into its JSON tree and its tensors (in first-seen order)."""

    tree: str
    names: list = field(default_factory=list)
    tensors: list = field(default_factory=list)


def _utf8(s: str) -> str:
    # Tensor names travel to Rust as UTF-8: escape lone surrogates instead of failing.
    if s.isascii():  # nearly every key: no round trip
        return s
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


class _Encoder:
    def __init__(self) -> None:
        self.out = Flattened(tree="")
        self._taken: set = set()
        self._by_memory: dict = {}
        self._open: set = set()  # ids of the containers on the current path (cycle check)

    def fail(self, path: tuple, what: str) -> CheckpointError:
        return CheckpointError(f"cannot save {key_path(path)}: {what}")

    def _name(self, path: tuple) -> str:
        parts = [str(p) for p in path]
        if len(parts) > 1 and parts[0] == "state_dict":
            parts = parts[1:]
        base = _utf8("/".join(parts)) or "tensor"
        name, n = base, 0
        while name in self._taken or name == "__metadata__":
            n += 1
            name = f"{base}~{n}"
        self._taken.add(name)
        return name

    def _add(self, t: torch.Tensor, path: tuple) -> str:
        """Register a detached strided tensor; returns its name (shared views are stored once)."""
        memory = None
        if t.numel() > 0:
            memory = (
                t.device,
                t.dtype,
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                t.stride(),
                t.is_conj(),
                t.is_neg(),
            )
            if memory in self._by_memory:
                return self._by_memory[memory]
        name = self._name(path)
        self.out.names.append(name)
        self.out.tensors.append(t)
        if memory is not None:
            self._by_memory[memory] = name
        return name

    def tensor(self, t: torch.Tensor, path: tuple) -> dict:
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            raise self.fail(path, f"tensor subclass {type(t).__qualname__} is not supported")
        if t.layout != torch.strided or t.is_quantized:
            raise self.fail(path, f"only dense tensors are supported, got layout {t.layout}")
        if t.device.type == "meta":
            raise self.fail(path, "a meta tensor has no data")
        if t.dtype not in DTYPE_TO_NAME:
            raise self.fail(path, f"dtype {t.dtype} is not supported")
        entry: dict = {"tensor": self._add(t.detach(), path)}
        if t.device.type != "cpu":
            entry["device"] = str(t.device)
        if type(t) is torch.nn.Parameter:
            entry["param"] = bool(t.requires_grad)
        return entry

    def numpy(self, a: Any, path: tuple, tag: str) -> dict:
        try:
            # (not ascontiguousarray: it turns 0-dim arrays into 1-dim ones)
            t = torch.from_numpy(a if a.flags.c_contiguous else a.copy(order="C"))
        except (TypeError, ValueError) as e:
            raise self.fail(path, f"numpy dtype {a.dtype} is not supported ({e})") from None
        return {tag: self._add(t, path)}

    def key(self, k: Any, path: tuple) -> Any:
        if k is None or isinstance(k, (bool, int, float, str, tuple)):
            return self.value(k, path)
        raise self.fail(path, f"dict key {k!r} of type {type(k).__qualname__} is not supported")

    def mapping(self, d: dict, path: tuple, ordered: bool) -> dict:
        if all(type(k) is str or isinstance(k, str) for k in d):
            value = self.value
            body: Any = {_utf8(str.__str__(k)): value(v, path + (k,)) for k, v in d.items()}
        else:
            body = [[self.key(k, path + (k,)), self.value(v, path + (k,))] for k, v in d.items()]
        if not ordered:
            return {"dict": body}
        out = {"odict": body}
        meta = getattr(d, "_metadata", None)  # nn.Module.state_dict() keeps module versions here
        if meta is not None:
            out["meta"] = self.value(meta, path + ("_metadata",))
        return out

    def value(self, obj: Any, path: tuple) -> Any:
        t = type(obj)
        if t is str:
            return obj if obj.isascii() else _utf8(obj)
        if obj is None or t is bool or t is int:
            return obj
        if t is float:
            return obj if math.isfinite(obj) else {"float": repr(obj)}
        if t is dict or t is list:  # the common containers first (same rules as below)
            if id(obj) in self._open:
                raise self.fail(path, "the checkpoint contains itself (a cycle)")
            self._open.add(id(obj))
            try:
                if t is dict:
                    return self.mapping(obj, path, ordered=False)
                return [self.value(v, path + (i,)) for i, v in enumerate(obj)]
            finally:
                self._open.discard(id(obj))
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, path)
        if t is torch.dtype:
            return {"dtype": str(obj)[len("torch."):]}
        if t is torch.device:
            return {"device": str(obj)}
        if t is torch.Size:
            return {"size": [int(d) for d in obj]}
        if t is bytes:
            return {"bytes": self._add(torch.frombuffer(bytearray(obj), dtype=torch.uint8) if obj else torch.empty(0, dtype=torch.uint8), path)}
        if _np is not None and isinstance(obj, _np.ndarray):
            return self.numpy(obj, path, "ndarray")
        if _np is not None and isinstance(obj, _np.generic):
            return self.numpy(_np.asarray(obj), path, "np_scalar")
        if isinstance(obj, (dict, list, tuple)):
            if id(obj) in self._open:
                raise self.fail(path, "the checkpoint contains itself (a cycle)")
            self._open.add(id(obj))
            try:
                if isinstance(obj, dict):
                    return self.mapping(obj, path, ordered=t is OrderedDict)
                items = [self.value(v, path + (i,)) for i, v in enumerate(obj)]
                return items if isinstance(obj, list) else {"tuple": items}
            finally:
                self._open.discard(id(obj))
        if isinstance(obj, bool):  # pragma: no cover - bool cannot be subclassed
            return bool(obj)
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return self.value(float(obj), path)
        if isinstance(obj, str):
            return _utf8(str.__str__(obj))
        raise self.fail(
            path,
            f"values of type {t.__module__}.{t.__qualname__} cannot be saved (supported: tensors, "
            "numpy arrays, None/bool/int/float/str/bytes, dicts, lists, tuples, torch.dtype/device); "
            "nothing is pickled",
        )


def flatten(checkpoint: Any) -> Flattened:
    """Split `checkpoint` into a JSON tree and its tensors; raises `CheckpointError` naming the
    key path of the first value that cannot be saved."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__qualname__}")
    enc = _Encoder()
    try:
        tree = enc.value(checkpoint, ())
    except RecursionError:
        raise CheckpointError("cannot save the checkpoint: it is nested too deeply") from None
    enc.out.tree = json.dumps(tree, allow_nan=False, separators=(",", ":"))
    return enc.out


class _Decoder:
    def __init__(self, tensors: dict, place: Callable[[str, Optional[str]], torch.Tensor]) -> None:
        self.tensors = tensors
        self.place = place
        self.placed: dict = {}

    def tensor(self, name: str, device: Optional[str]) -> torch.Tensor:
        key = (name, device)
        if key not in self.placed:
            if name not in self.tensors:
                raise ValueError(f"the tree refers to a tensor '{name}' that the file does not hold")
            self.placed[key] = self.place(name, device)
        return self.placed[key]

    def raw(self, name: Any) -> torch.Tensor:
        if type(name) is not str or name not in self.tensors:
            raise ValueError(f"the tree refers to a tensor {name!r} that the file does not hold")
        return self.tensors[name]

    def mapping(self, body: Any, ordered: bool) -> dict:
        out: dict = OrderedDict() if ordered else {}
        if type(body) is dict:
            for k, v in body.items():
                out[k] = self.value(v)
        elif type(body) is list:
            for k, v in body:
                out[self.value(k)] = self.value(v)
        else:
            raise ValueError("a dict body must be an object or a list of pairs")
        return out

    def value(self, x: Any) -> Any:
        t = type(x)
        if x is None or t is bool or t is int or t is float or t is str:
            return x
        if t is list:
            return [self.value(v) for v in x]
        if t is not dict or not x:
            raise ValueError(f"unexpected {t.__name__} in the tree")
        if "tensor" in x:
            device = x.get("device")
            if device is not None and type(device) is not str:
                raise ValueError("a tensor's device must be a string")
            tensor = self.tensor(x["tensor"], device)
            if "param" in x:
                return torch.nn.Parameter(tensor, requires_grad=bool(x["param"]))
            return tensor
        if "dict" in x:
            return self.mapping(x["dict"], ordered=False)
        if "odict" in x:
            out = self.mapping(x["odict"], ordered=True)
            if "meta" in x:
                out._metadata = self.value(x["meta"])  # type: ignore[attr-defined]
            return out
        if "tuple" in x:
            return tuple(self.value(v) for v in x["tuple"])
        if "size" in x:
            return torch.Size([int(d) for d in x["size"]])
        if "float" in x:
            return _NONFINITE[x["float"]]
        if "dtype" in x:
            dtype = getattr(torch, x["dtype"]) if type(x["dtype"]) is str else None
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {x['dtype']!r}")
            return dtype
        if "device" in x:
            return torch.device(x["device"])
        if "ndarray" in x:
            return self.raw(x["ndarray"]).numpy()
        if "np_scalar" in x:
            return self.raw(x["np_scalar"]).numpy()[()]
        if "bytes" in x:
            return self.raw(x["bytes"]).numpy().tobytes()
        raise ValueError(f"unknown tag {next(iter(x))!r} in the tree")


def unflatten(path: str, tree: str, tensors: dict, place: Callable[[str, Optional[str]], torch.Tensor]) -> Any:
    """Rebuild the checkpoint from its JSON `tree`; `tensors` maps names to CPU tensors and
    `place(name, saved_device)` returns the tensor where the caller wants it. A malformed tree
    is a `CorruptCheckpointError` naming `path`."""
    try:
        return _Decoder(tensors, place).value(json.loads(tree))
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as e:
        raise CorruptCheckpointError(f"corrupt checkpoint '{path}': malformed ferrotrain.tree ({e})") from None
