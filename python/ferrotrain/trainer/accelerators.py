"""Choosing the hardware: `Trainer(accelerator=..., devices=...)` resolved against what is present.

It owns which accelerator `"auto"` and `"gpu"` mean, the errors for an accelerator that is not
available (naming what was looked for and what is missing), and checking `devices` against the
devices present. It does not own the argument's syntax (`config` checked it already: `devices`
arrives as an int >= 1, -1, "auto" or a list of indices) nor strategies: a selection of more than
one device is a distributed run, which `ferrotrain.strategies.connector` builds from these answers.

Resolution, as in Lightning: `"auto"` picks a TPU (when `torch_xla` is installed and sees one),
else MPS, else CUDA, else the CPU (MPS and CUDA are never both present); `"gpu"` is MPS or CUDA.
`devices="auto"` means one device here (Lightning takes every GPU, which needs a strategy). On
the CPU, `-1` ("all devices") and `[0]` select the one CPU (Lightning rejects any list and -1 there).
"""

from __future__ import annotations

import importlib.util
from typing import Any, List

import torch

from ferrotrain.errors import MisconfigurationException


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _tpu_available() -> bool:
    if importlib.util.find_spec("torch_xla") is None:
        return False
    try:  # only where torch_xla is installed; its API moved between releases
        import torch_xla.runtime as xr  # type: ignore[import-not-found]

        return xr.device_type() == "TPU"
    except Exception:
        return False


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    return "no CUDA device is visible (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"


def _no_mps_reason() -> str:
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_built():
        return f"this torch build ({torch.__version__}) has no MPS support"
    return "MPS needs macOS 12.3 or later on Apple silicon or an AMD GPU"


def resolve_accelerator(accelerator: str) -> str:
    """The concrete accelerator ('cpu', 'cuda', 'mps' or 'tpu') for a checked `accelerator`."""
    if accelerator == "auto":
        if _tpu_available():
            return "tpu"
        if _mps_available():
            return "mps"
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if accelerator == "gpu":
        if _mps_available():
            return "mps"
        if torch.cuda.is_available():
            return "cuda"
        raise MisconfigurationException(
            "`Trainer(accelerator='gpu')` looked for a CUDA GPU and Apple's Metal (MPS) and found neither: "
            f"{_no_cuda_reason()}; {_no_mps_reason()}. Use accelerator='cpu' or 'auto'"
        )
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise MisconfigurationException(
            f"`Trainer(accelerator='cuda')` needs a CUDA GPU, but `torch.cuda.is_available()` is False: "
            f"{_no_cuda_reason()}. Use accelerator='cpu' or 'auto'"
        )
    if accelerator == "mps" and not _mps_available():
        raise MisconfigurationException(
            "`Trainer(accelerator='mps')` needs Apple's Metal (MPS) backend, but "
            f"`torch.backends.mps.is_available()` is False: {_no_mps_reason()}. Use accelerator='cpu' or 'auto'"
        )
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise MisconfigurationException(
            "`Trainer(accelerator='tpu')` needs the `torch_xla` package, which is not installed"
        )
    return accelerator


def device_ids(devices: Any, available: int, what: str) -> List[int]:
    """The device indices `devices` selects among `available` devices of kind `what`."""
    if devices == "auto":
        ids = [0]
    elif devices == -1:
        ids = list(range(available))
    elif isinstance(devices, int):
        ids = list(range(devices))
    else:
        ids = list(devices)
    present = list(range(available))
    if not ids or any(i not in present for i in ids):
        raise MisconfigurationException(
            f"`Trainer(devices={devices!r})` asks for {what} device(s) {ids}, but this machine has "
            f"{available}: {present}"
        )
    return ids
