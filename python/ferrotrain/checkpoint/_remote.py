"""Checkpoints at remote (fsspec) paths. The native checkpoint writer and reader work on local
files (they write through file descriptors and read with mmap), so a remote checkpoint is staged
in a local temporary file: written there and then copied up through fsspec, or copied down
there and then read."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterator

from ferrotrain.utilities.cloud_io import get_filesystem


def write_via_local(path: str, write: Callable[[str], None]) -> None:
    """Run `write(local_file)`, then upload the file to the remote `path`."""
    fs = get_filesystem(path)
    staging = tempfile.mkdtemp(prefix="ferrotrain-ckpt-")
    try:
        local = os.path.join(staging, os.path.basename(path.rstrip("/")) or "checkpoint.ckpt")
        write(local)
        parent = os.path.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(local, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local copy of the remote checkpoint file `path`, removed on exit. An http(s) URL is
    downloaded with the standard library (as Lightning reads URLs through `torch.hub`), so it
    needs no fsspec backend."""
    staging = tempfile.mkdtemp(prefix="ferrotrain-ckpt-")
    try:
        local = os.path.join(staging, os.path.basename(path.rstrip("/")) or "checkpoint.ckpt")
        if path.split("://", 1)[0].lower() in ("http", "https"):
            _download(path, local)
        else:
            get_filesystem(path).get_file(path, local)
        yield local
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download(url: str, local: str) -> None:
    import urllib.error
    import urllib.request

    from ferrotrain.errors import CheckpointNotFoundError

    try:
        with urllib.request.urlopen(url) as response, open(local, "wb") as f:  # noqa: S310 - the user's URL
            shutil.copyfileobj(response, f, 1 << 20)
    except urllib.error.URLError as e:
        raise CheckpointNotFoundError(f"cannot download checkpoint {url!r}: {getattr(e, 'reason', e)}") from e
