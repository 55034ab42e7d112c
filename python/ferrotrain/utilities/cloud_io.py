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


def resolve_dir(path: Union[str, "os.PathLike[str]"]) -> str:
    """A folder as Lightning keeps it: local paths expanded (`~`) and made real (absolute, links
    resolved); a remote URL unchanged, since `realpath` would turn `memory://x` into `./memory:/x`."""
    text = os.fspath(path)
    return text if is_remote(text) else os.path.realpath(os.path.expanduser(text))


def path_exists(path: str) -> bool:
    """`os.path.exists` for local paths, the fsspec filesystem's `exists` for remote ones."""
    return get_filesystem(path).exists(path) if is_remote(path) else os.path.exists(path)
