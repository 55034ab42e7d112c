"""Lightning's accelerator classes at `ferrotrain.accelerators`. An instance passed as
`Trainer(accelerator=CPUAccelerator())` selects the same device as its name ('cpu', 'cuda', ...);
the hot loop places tensors itself, so these classes carry the choice and the device queries."""

from __future__ import annotations

from typing import Any, List, Union

import torch

__all__ = ["Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "XLAAccelerator",
           "find_usable_cuda_devices"]


class Accelerator:
    """Base class; `name` is the `Trainer(accelerator=...)` string this instance stands for."""

    name = ""

    @staticmethod
    def is_available() -> bool:
        raise NotImplementedError

    @staticmethod
    def auto_device_count() -> int:
        raise NotImplementedError

    def setup_device(self, device: torch.device) -> None:
        """Nothing to prepare: the trainer moves the model and batches."""

    def teardown(self) -> None:
        """Nothing to release."""


class CPUAccelerator(Accelerator):
    name = "cpu"

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def auto_device_count() -> int:
        return 1


class CUDAAccelerator(Accelerator):
    name = "cuda"

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    @staticmethod
    def auto_device_count() -> int:
        return torch.cuda.device_count()


class MPSAccelerator(Accelerator):
    name = "mps"

    @staticmethod
    def is_available() -> bool:
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())

    @staticmethod
    def auto_device_count() -> int:
        return 1 if MPSAccelerator.is_available() else 0


class XLAAccelerator(Accelerator):
    """Named so Lightning code imports; TPU/XLA training is not supported."""

    name = "tpu"

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def auto_device_count() -> int:
        return 0


def find_usable_cuda_devices(num_devices: int = -1) -> List[int]:
    """Indices of CUDA devices that accept an allocation; `num_devices=-1` means all of them."""
    if not isinstance(num_devices, int) or isinstance(num_devices, bool) or num_devices < -1:
        raise ValueError(f"num_devices must be an int >= -1 (-1 = all), got {num_devices!r}")
    usable: List[int] = []
    for index in range(torch.cuda.device_count()):
        if num_devices != -1 and len(usable) == num_devices:
            break
        try:
            torch.empty(1, device=f"cuda:{index}")
        except RuntimeError:
            continue
        usable.append(index)
    if num_devices != -1 and len(usable) < num_devices:
        raise RuntimeError(f"asked for {num_devices} usable CUDA devices, found {len(usable)}: {usable}")
    return usable


def accelerator_name(value: Union[str, Accelerator, Any]) -> Any:
    """`Trainer(accelerator=...)`: an Accelerator instance stands for its name."""
    return value.name if isinstance(value, Accelerator) else value
