"""The checkpoint tree: how a nested checkpoint dict becomes one JSON document plus a list of
named tensors, and back. States the type rules (what can be saved, how each type is tagged);
does not touch files (see `_io.py`). The encoding walk itself is native
(`_core.encode_checkpoint`, rust/src/checkpoint_tree.rs: it runs at every checkpoint, on
the training thread) and comes back here for rare values and for every error; decoding is here.

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

from .. import _core
from .._dtypes import FILE_NAMES
from ..errors import CheckpointError, CorruptCheckpointError

try:  # numpy is optional: without it, no numpy value can appear in a checkpoint anyway.
    import numpy as _np
except ImportError:  # pragma: no cover - numpy ships with every supported torch
    _np = None

#: torch dtype -> safetensors dtype name, and back.
DTYPE_TO_NAME = dict(FILE_NAMES)
NAME_TO_DTYPE = {v: k for k, v in DTYPE_TO_NAME.items()}

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def key_path(path: tuple) -> str:
    """`("callbacks", "EarlyStopping", 0)` -> `checkpoint['callbacks']['EarlyStopping'][0]`."""
    return "checkpoint" + "".join(f"[{k!r}]" for k in path)


@dataclass
class Flattened:
    """A checkpoint split into its JSON tree and its tensors (in first-seen order), with the file
    layout and, per tensor, `(address, nbytes)` when its memory can be written as it is
    (a contiguous CPU tensor) or None (torch makes a host copy)."""

    tree: str
    names: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    layout: Any = None
    direct: list = field(default_factory=list)


def _utf8(s: str) -> str:
    # Tensor names travel to Rust as UTF-8: escape lone surrogates instead of failing.
    if s.isascii():  # nearly every key: no round trip
        return s
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


# The encoder is the native core's (`_core.encode_checkpoint`): it walks the tree, writes the
# JSON and describes plain CPU tensors itself, and calls the helpers below for the rare values
# and for every error, so the messages and type rules stay stated here.


def _fail(path: tuple, what: str) -> CheckpointError:
    return CheckpointError(f"cannot save {key_path(path)}: {what}")


def _tensor_info(t: torch.Tensor, path: tuple) -> tuple:
    """A tensor the native walk does not describe itself (another device, a Parameter, complex
    or float8, a lazily negated view) or refuses: `(tensor to store, dtype name, shape, saved
    device or None, requires_grad of a Parameter or None, memory key or None, address when its
    memory can be written as it is or None)`."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise _fail(path, f"tensor subclass {type(t).__qualname__} is not supported")
    if t.layout != torch.strided or t.is_quantized:
        raise _fail(path, f"only dense tensors are supported, got layout {t.layout}")
    if t.device.type == "meta":
        raise _fail(path, "a meta tensor has no data")
    if t.dtype not in DTYPE_TO_NAME:
        raise _fail(path, f"dtype {t.dtype} is not supported")
    d = t.detach()
    on_cpu = d.device.type == "cpu"
    lazy = d.is_conj() or d.is_neg()
    key = (str(d.device), d.data_ptr(), list(d.stride()), d.is_conj(), d.is_neg()) if d.numel() > 0 else None
    direct = d.data_ptr() if on_cpu and not lazy and d.is_contiguous() else None
    device = None if on_cpu else str(d.device)
    param = bool(t.requires_grad) if type(t) is torch.nn.Parameter else None
    return d, DTYPE_TO_NAME[d.dtype], list(d.shape), device, param, key, direct


def _numpy_tensor(a: Any, path: tuple, scalar: bool) -> torch.Tensor:
    if scalar:
        a = _np.asarray(a)
    try:
        # (not ascontiguousarray: it turns 0-dim arrays into 1-dim ones)
        return torch.from_numpy(a if a.flags.c_contiguous else a.copy(order="C"))
    except (TypeError, ValueError) as e:
        raise _fail(path, f"numpy dtype {a.dtype} is not supported ({e})") from None


def _bytes_tensor(b: bytes, path: tuple) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.empty(0, dtype=torch.uint8)


# What `torch.load(weights_only=True)` accepts without allowlisting: numpy values and bytes are
# refused in torch-format checkpoints (before any file is touched), naming the key path.
def _no_numpy(a: Any, path: tuple, scalar: bool) -> torch.Tensor:
    what = "numpy scalar" if scalar else "numpy array"
    raise _fail(
        path,
        f"a {what} is not loadable by torch.load(weights_only=True); store it as a tensor "
        "(torch.from_numpy) or a Python value (.tolist() / .item())",
    )


def _no_bytes(b: bytes, path: tuple) -> torch.Tensor:
    raise _fail(path, "bytes are not stored in torch-format checkpoints; store a uint8 tensor (torch.frombuffer)")


_ENCODING = (
    torch.Tensor,
    torch.dtype,
    torch.device,
    torch.Size,
    OrderedDict,
    None if _np is None else _np.ndarray,
    None if _np is None else _np.generic,
    _tensor_info,
    _numpy_tensor,
    _bytes_tensor,
    _fail,
    _utf8,
)


_ENCODING_TORCH = _ENCODING[:8] + (_no_numpy, _no_bytes) + _ENCODING[10:]


def flatten(checkpoint: Any, metadata: Optional[dict] = None, format: str = "torch") -> Flattened:
    """Split `checkpoint` into a JSON tree and its tensors, and place them in a file layout:
    torch's zip archive (`format="torch"`, the tree as `data.pkl`) or safetensors (the tree
    and `metadata` in its header). Raises `CheckpointError` naming the key path of the first
    value that cannot be saved."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__qualname__}")
    encoding = _ENCODING_TORCH if format == "torch" else _ENCODING
    tree, names, tensors, layout, direct = _core.encode_checkpoint(checkpoint, encoding, metadata or {}, format)
    return Flattened(tree, names, tensors, layout, direct)


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

    def view(self, body: Any) -> torch.Tensor:
        storage, offset, size, stride, dtype_name, requires_grad = body
        dtype = NAME_TO_DTYPE.get(dtype_name)
        if dtype is None:
            raise ValueError(f"dtype {dtype_name} is not supported by this torch")
        st = self.place(storage, None)
        t = torch.empty(0, dtype=dtype, device=st.device).set_(st.untyped_storage(), offset, size, stride)
        if requires_grad:
            t.requires_grad_(True)
        return t

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
        if "view" in x:
            return self.view(x["view"])
        if "of" in x:  # a tensor or Parameter that may be referenced again
            obj = self.value(x["of"])
            self.placed[("id", x["id"])] = obj
            return obj
        if "ref" in x:
            return self.placed[("id", x["ref"])]
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
        if "param" in x:
            inner, requires_grad = x["param"]
            return torch.nn.Parameter(self.value(inner), requires_grad=bool(requires_grad))
        if "bytes_hex" in x:
            return bytes.fromhex(x["bytes_hex"])
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
