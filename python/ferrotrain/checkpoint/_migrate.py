"""Reading checkpoints of every origin: torch zip archives (ferrotrain's own and Lightning's,
read by the native reader without unpickling), legacy torch pickle files (`torch.load(weights_only=True)`),
and ferrotrain's earlier safetensors-based format; and the translation between Lightning's loop
progress and ferrotrain's. It does not restore objects (that is `ferrotrain.trainer.checkpointing`).

Nothing from a file is ever run unless the caller passes `weights_only=False` (Lightning's
argument of the same name): that is the explicit trust `torch.load(weights_only=False)` needs for
files holding other objects than the restricted tree.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Dict, Optional

import torch

from ..errors import CheckpointError
from ._io import MapLocation, PathLike, load, load_legacy, save

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


def _is_zip(path: PathLike) -> bool:
    try:
        with open(os.fspath(path), "rb") as f:
            return f.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def load_any(path: PathLike, map_location: MapLocation = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
    """Load a checkpoint of any origin into ferrotrain's dict (loop progress added by
    `from_lightning` when only Lightning's is there). Torch zip archives go to the native
    reader (never unpickled); `weights_only=False` hands them to `torch.load(weights_only=False)`
    instead, the caller's explicit trust in the file."""
    if weights_only is False and is_torch_file(path):
        return from_lightning(torch_load(path, map_location, weights_only))
    if _is_zip(path):
        ckpt = load(path, map_location=map_location)
    elif is_torch_file(path):  # a legacy (pre-zip) torch.save file
        ckpt = torch_load(path, map_location, weights_only)
    else:  # ferrotrain's earlier format
        ckpt = load_legacy(path, map_location=map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint '{os.fspath(path)}' holds a {type(ckpt).__qualname__}, not a checkpoint dict")
    return from_lightning(ckpt)


def convert(src: PathLike, dst: PathLike) -> Dict[str, Any]:
    """Rewrite the checkpoint `src` (any origin `load_any` reads: ferrotrain's earlier format
    above all) as a torch-format checkpoint at `dst` (atomic, durable). Returns the dict written."""
    ckpt = load_any(src, map_location="cpu")
    save(dst, ckpt)
    return ckpt


def _counts(n: int, started: bool = True, processed: bool = True) -> Dict[str, int]:
    out = {"ready": n, "completed": n}
    if started:
        out["started"] = n
    if processed:
        out["processed"] = n
    return out


def _progress(total: int, current: int, started: bool = True, processed: bool = True) -> Dict[str, Any]:
    return {"total": _counts(total, started, processed), "current": _counts(current, started, processed)}


def _batches(total: int, current: int, last: bool) -> Dict[str, Any]:
    return dict(_progress(total, current), is_last_batch=last)


def to_lightning_loops(progress: Dict[str, int], manual: bool, last_batch: bool) -> Dict[str, Any]:
    """Lightning's `checkpoint["loops"]` for ferrotrain's loop progress, so Lightning resumes a
    fit from a ferrotrain checkpoint at the same epoch, batch and global step (`from_lightning`
    reads it back). Lightning's global step is its optimizer-step count, kept under the
    automatic or the manual optimization loop."""
    epoch = int(progress["epoch"])
    processed = int(progress["epochs_processed"])
    in_epoch = int(progress["batches_in_epoch"])
    total = int(progress["total_batches"])
    step = int(progress["global_step"])
    epoch_progress = {
        "total": {"ready": epoch + 1, "started": epoch + 1, "processed": processed, "completed": processed},
        "current": {"ready": epoch + 1, "started": epoch + 1, "processed": processed, "completed": processed},
    }
    auto = 0 if manual else step
    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": int(progress["batches_that_stepped"])},
        "epoch_loop.batch_progress": _batches(total, in_epoch, last_batch),
        "epoch_loop.scheduler_progress": _progress(0, 0, started=False, processed=False),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {
                "step": _progress(auto, auto, started=False, processed=False),
                "zero_grad": _progress(auto, auto, processed=False),
            }
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _progress(
            step - auto, step - auto, started=False, processed=False
        ),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": _batches(0, 0, False),
        "epoch_progress": epoch_progress,
    }
    return {
        "fit_loop": fit_loop,
        "validate_loop": {"state_dict": {}, "batch_progress": _batches(0, 0, False)},
        "test_loop": {"state_dict": {}, "batch_progress": _batches(0, 0, False)},
        "predict_loop": {"state_dict": {}, "batch_progress": _progress(0, 0)},
        "progress": dict(progress),
    }
