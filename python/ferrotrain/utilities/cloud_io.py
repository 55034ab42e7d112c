"""Paths through fsspec, as Lightning accepts them: `memory://`, `s3://`, `https://`, ... next to
plain local paths. Local paths keep the native fast paths; only a path with a non-local protocol
goes through fsspec (which torch already depends on)."""

from __future__ import annotations

import os
from typing import Any, Tuple, Union

_LOCAL_PROTOCOLS = ("file", "local")


def _protocol(path: Union[str, "os.PathLike[str]"]) -> str:
    text = os.fspath(path)
    if isinstance(text, bytes) or "://" not in text:
        return "file"
    return text.split("://", 1)[0]


def is_remote(path: Union[str, "os.PathLike[str]", None]) -> bool:
    """Whether `path` names a non-local fsspec protocol (`memory://...`, `s3://...`)."""
    return path is not None and _protocol(path) not in _LOCAL_PROTOCOLS


def get_filesystem(path: Union[str, "os.PathLike[str]"], **kwargs: Any) -> Any:
    """The fsspec filesystem for `path`; a clear error naming the protocol when its backend is
    not installed (e.g. `s3fs` for `s3://`)."""
    fs, _ = url_to_fs(path, **kwargs)
    return fs


def url_to_fs(path: Union[str, "os.PathLike[str]"], **kwargs: Any) -> Tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(os.fspath(path), **kwargs)
    except (ImportError, ValueError) as err:
        raise ImportError(
            f"path {os.fspath(path)!r}: no fsspec backend is installed for the protocol "
            f"{_protocol(path)!r} ({err})"
        ) from err
