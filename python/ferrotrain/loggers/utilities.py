"""Helpers shared by the loggers: turning hyperparameters into plain dicts, the `version_N` folder
numbering, and writing `hparams.yaml`. It owns no logger state.

`hparams.yaml` is written with PyYAML when it is installed, else with the small block-style emitter
below, which handles what hyperparameters usually are: scalars, strings, lists/tuples and nested
dicts. Either output loads back with `yaml.safe_load`.
"""

from __future__ import annotations

import json
import math
import os
import re
from argparse import Namespace
from dataclasses import asdict, is_dataclass
from enum import Enum
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Union


def _convert_params(params: Optional[Union[Mapping[str, Any], Namespace]]) -> Dict[str, Any]:
    """`Namespace`, any mapping (e.g. an `AttributeDict`) or None -> a plain dict."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    if is_dataclass(params) and not isinstance(params, type):
        return asdict(params)
    return dict(params)


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    if not prefix:
        return metrics
    return {f"{prefix}{separator}{k}": v for k, v in metrics.items()}


def _flatten_dict(params: Mapping[Any, Any], delimiter: str = "/", parent_key: str = "") -> Dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a/b': 1}`; lists of dicts are flattened with their index."""
    result: Dict[str, Any] = {}
    for k, v in params.items():
        key = f"{parent_key}{delimiter}{k}" if parent_key else str(k)
        if is_dataclass(v) and not isinstance(v, type):
            v = asdict(v)
        elif isinstance(v, Namespace):
            v = vars(v)
        if isinstance(v, MutableMapping):
            result.update(_flatten_dict(v, delimiter, key))
        elif isinstance(v, list) and v and all(isinstance(item, MutableMapping) for item in v):
            for i, item in enumerate(v):
                result.update(_flatten_dict(item, delimiter, f"{key}{delimiter}{i}"))
        else:
            result[key] = v
    return result


def _sanitize_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """Keep bool/int/float/str (and tensors) as they are, turn anything else into its `str`."""
    import torch

    out: Dict[str, Any] = {}
    for k, v in params.items():
        if hasattr(v, "item") and not isinstance(v, torch.Tensor) and getattr(v, "ndim", 1) == 0:
            v = v.item()  # numpy scalars
        if isinstance(v, torch.Tensor):
            out[k] = str(v) if v.ndim > 1 else v
        elif type(v) in (bool, int, float, str):
            out[k] = v
        else:
            out[k] = str(v)
    return out


def _version(loggers: List[Any], separator: str = "_") -> Union[int, str]:
    """The version shown as `v_num`: one logger's version, or several joined without duplicates."""
    if len(loggers) == 1:
        return loggers[0].version
    return separator.join(dict.fromkeys(str(logger.version) for logger in loggers))


def _next_version(versions_root: str) -> int:
    """One more than the largest `version_N` folder in `versions_root`, or 0."""
    from ferrotrain.utilities.cloud_io import get_filesystem

    fs = get_filesystem(versions_root)
    try:
        listing = fs.ls(versions_root, detail=True)
    except OSError:
        return 0
    found = []
    for info in listing:
        entry = os.path.basename(str(info["name"]).rstrip("/"))
        if entry.startswith("version_") and info.get("type") == "directory":
            number = entry.split("_", 1)[1]
            if number.isdigit():
                found.append(int(number))
    return max(found) + 1 if found else 0


# --- hparams.yaml ---------------------------------------------------------------------------------


def _yaml_ready(value: Any) -> Any:
    """Reduce `value` to dicts, lists and scalars that a safe YAML dumper accepts; anything else
    becomes its `str` (so the file always loads back with `yaml.safe_load`)."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, Namespace):
        value = vars(value)
    elif is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _yaml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _yaml_ready(value.item())  # 0-d tensors and numpy scalars
    for base in (bool, int, float, str):  # subclasses such as numpy.float64 -> the base type
        if isinstance(value, base):
            return base(value)
    return str(value)


def save_hparams_to_yaml(path: str, hparams: Union[Mapping[str, Any], Namespace]) -> None:
    """Write `hparams` to `path` as YAML (sorted keys, block style, as Lightning writes it)."""
    from ferrotrain.utilities.cloud_io import get_filesystem

    fs = get_filesystem(path)
    folder = os.path.dirname(path)
    if folder and not fs.isdir(folder):
        raise RuntimeError(f"Missing folder: {folder}.")
    data = _yaml_ready(_convert_params(hparams))
    try:
        import yaml
    except ImportError:
        text = dump_yaml(data)
    else:
        text = yaml.safe_dump(data, default_flow_style=False)
    with fs.open(path, "w", encoding="utf-8", newline="") as fp:
        fp.write(text)


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text:
            text = text.replace("e", ".0e")  # YAML 1.1 floats need a dot: 1e-08 -> 1.0e-08
        return text
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(text)


def dump_yaml(data: Any, indent: int = 0) -> str:
    """A block-style YAML emitter for dicts of scalars, lists and nested dicts (keys sorted)."""
    lines: List[str] = []
    _emit(_yaml_ready(data), indent, lines)
    return "\n".join(lines) + "\n"


def _emit(data: Any, indent: int, lines: List[str]) -> None:
    pad = " " * indent
    if isinstance(data, dict):
        if not data:
            lines.append(pad + "{}")
            return
        for key in sorted(data, key=str):
            value = data[key]
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(value, dict) and value:
                lines.append(head)
                _emit(value, indent + 2, lines)
            elif isinstance(value, list) and value:
                lines.append(head)
                _emit(value, indent, lines)  # PyYAML does not indent a list under its key
            else:
                lines.append(f"{head} {_inline(value)}")
    elif isinstance(data, list):
        if not data:
            lines.append(pad + "[]")
            return
        for item in data:
            if isinstance(item, (dict, list)) and item:
                sub: List[str] = []
                _emit(item, indent + 2, sub)
                # The first line of the nested block goes on the dash's line.
                lines.append(f"{pad}- {sub[0][indent + 2:]}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(pad + _scalar(data))


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)
