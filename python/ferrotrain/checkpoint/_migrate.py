"""Reading checkpoints written by Lightning (`torch.save` files) and converting them to
ferrotrain's format. Owns the format detection, the restricted `torch.load` and the translation
of Lightning's loop progress into ferrotrain's; it does not restore objects (that is
`ferrotrain.trainer.checkpointing`).

A `torch.save` file is read with `torch.load(weights_only=True)` only: torch's restricted
unpickler, which builds tensors, containers and primitive values and refuses every other global
(the refusal is a `CheckpointError` naming the file and the refused type). Nothing from the file
is ever run. Types a user trusts can be allowed with `torch.serialization.add_safe_globals`.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Dict, Optional

import torch

from ..errors import CheckpointError
from ._io import MapLocation, PathLike, load, save

_ZIP_MAGIC = b"PK\x03\x04"


def is_torch_file(path: PathLike) -> bool:
    """True for a file written by `torch.save` (zip archive or legacy pickle), False otherwise
    (ferrotrain's files, and anything else, go to the native reader, which validates them)."""
    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if head.startswith(_ZIP_MAGIC):
        return True
    # Legacy torch files start with a pickle protocol byte; ferrotrain's start with an 8-byte
    # header length followed by the JSON header's '{'.
    return head[:1] == b"\x80" and head[8:9] != b"{"


def torch_load(path: PathLike, map_location: MapLocation = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
    """`torch.load(path, weights_only=True)`, with every refusal or read error raised as
    `CheckpointError` naming the file. `weights_only=False` is the caller's explicit trust in the
    file (Lightning's argument of the same name): torch then unpickles whatever it holds."""
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing a file; the refusal below is the
            # message that matters, so the warning is not passed on.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=weights_only is not False)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' holds objects that are not loaded without running code from the "
            f"file (torch.load(weights_only=True) refused them): {str(e).strip()}\n"
            "ferrotrain never unpickles arbitrary objects unless told to. If you trust this file, allow "
            "the listed types with torch.serialization.add_safe_globals([...]), or pass weights_only=False."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read the torch checkpoint '{path}': {e}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(ckpt).__qualname__}, not a checkpoint dict")
    return ckpt


def from_lightning(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """Add ferrotrain's loop progress (`ckpt["loops"]["progress"]`) to a Lightning checkpoint
    dict, computed from Lightning's fit-loop counters; other entries are kept as they are (the
    two libraries share the rest of the layout). A dict that already has it is returned as is."""
    loops = ckpt.get("loops")
    if not isinstance(loops, dict) or "progress" in loops or "fit_loop" not in loops:
        return ckpt
    fit = loops["fit_loop"]
    try:
        epochs = fit["epoch_progress"]["current"]
        batches = fit["epoch_loop.batch_progress"]
        stepped = fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", ckpt.get("global_step", 0))
        # A save from on_train_batch_end comes after `processed` and before `completed` is
        # counted: the batch was trained on, so `processed` is the position.
        in_epoch = max(int(batches["current"]["processed"]), int(batches["current"]["completed"]))
        progress = {
            # The epoch the batch counters belong to: the last one started (Lightning's
            # `current_epoch` has moved past it when the save came after the fit ended).
            "epoch": max(int(epochs["started"]) - 1, 0),
            "epochs_processed": int(epochs["processed"]),
            "batches_in_epoch": in_epoch,
            "total_batches": max(int(batches["total"]["processed"]), int(batches["total"]["completed"])),
            "global_step": int(ckpt.get("global_step", 0)),
            "batches_that_stepped": int(stepped),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot read the loop progress of this Lightning checkpoint (missing {e})") from None
    out = dict(ckpt)
    out["loops"] = dict(loops, progress=progress)
    return out


def load_any(path: PathLike, map_location: MapLocation = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
    """Load a ferrotrain checkpoint (never pickled), or a Lightning one (restricted `torch.load`
    unless `weights_only=False`, translated by `from_lightning`)."""
    if is_torch_file(path):
        return from_lightning(torch_load(path, map_location, weights_only))
    return load(path, map_location=map_location)


def convert(src: PathLike, dst: PathLike) -> Dict[str, Any]:
    """Convert the Lightning (or ferrotrain) checkpoint `src` into ferrotrain's format at `dst`
    (atomic, durable). Returns the checkpoint dict that was written."""
    ckpt = load_any(src, map_location="cpu")
    save(dst, ckpt)
    return ckpt
