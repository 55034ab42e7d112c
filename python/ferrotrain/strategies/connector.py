"""From the Trainer's `accelerator`, `devices`, `strategy` and `num_nodes` to a configured
`Strategy`: which accelerator runs, which devices this node uses, and which strategy (Lightning's
rules: several devices or nodes with `strategy='auto'` mean DDP). Called once, by the Trainer's
constructor; every check about device counts lives here.
"""

from __future__ import annotations

import importlib.util
from typing import Any, List, Tuple

import torch

from ferrotrain.errors import MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies.strategy import Strategy


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_accelerator(accelerator: str) -> str:
    if accelerator == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise MisconfigurationException(
                f"`Trainer(accelerator={accelerator!r})` needs a CUDA GPU, but `torch.cuda.is_available()` is False "
                "(no NVIDIA driver or no GPU found); use accelerator='cpu' or 'auto'"
            )
        return "cuda"
    if accelerator == "mps":
        if not _mps_available():
            raise MisconfigurationException("`Trainer(accelerator='mps')` needs Apple's Metal (MPS) backend, which is not available here")
        return "mps"
    if accelerator == "tpu":
        if importlib.util.find_spec("torch_xla") is None:
            raise MisconfigurationException(
                "`Trainer(accelerator='tpu')` needs the `torch_xla` package, which is not installed"
            )
        raise NotSupportedYetError("`Trainer(accelerator='tpu')` is not supported yet by ferrotrain")
    return "cpu"


def resolve_devices(accelerator: str, devices: Any) -> List[torch.device]:
    """The devices of this node, one per process."""
    if accelerator == "cuda":
        available = torch.cuda.device_count()
        if isinstance(devices, list):
            indices = devices
        elif devices in ("auto", -1):
            indices = list(range(available))
        else:
            indices = list(range(int(devices)))
        bad = [i for i in indices if i >= available]
        if bad:
            raise MisconfigurationException(
                f"`Trainer(devices={devices!r})` asks for CUDA device {bad[0]}, but only {available} are available"
            )
        return [torch.device("cuda", i) for i in indices]
    if accelerator == "mps":
        if isinstance(devices, list) and (len(devices) != 1 or devices[0] != 0) or isinstance(devices, int) and devices > 1:
            raise MisconfigurationException(f"`Trainer(accelerator='mps', devices={devices!r})`: there is one MPS device")
        return [torch.device("mps")]
    # CPU: `devices` is the number of processes ("auto" and -1: one).
    if isinstance(devices, list):
        n = len(devices)
    elif devices in ("auto", -1):
        n = 1
    else:
        n = int(devices)
    return [torch.device("cpu")] * n


def _strategy_from_name(name: str, n_processes: int) -> Strategy:
    from ferrotrain.strategies.ddp import DDPStrategy
    from ferrotrain.strategies.single_device import SingleDeviceStrategy

    if name == "auto":
        return DDPStrategy() if n_processes > 1 else SingleDeviceStrategy()
    if name == "single_device":
        if n_processes > 1:
            raise MisconfigurationException(
                f"`Trainer(strategy='single_device')` runs one process, but the devices and nodes given make "
                f"{n_processes}; use strategy='ddp' or 'auto'"
            )
        return SingleDeviceStrategy()
    if name in ("ddp", "ddp_find_unused_parameters_false"):
        return DDPStrategy()
    if name == "ddp_find_unused_parameters_true":
        return DDPStrategy(find_unused_parameters=True)
    if name == "ddp_spawn":
        return DDPStrategy(start_method="spawn")
    if name in ("ddp_fork", "ddp_notebook"):
        return DDPStrategy(start_method="fork")
    if name == "fsdp":
        raise NotSupportedYetError("`Trainer(strategy='fsdp')` is valid but not supported yet by ferrotrain")
    if name.startswith("deepspeed"):
        from ferrotrain.strategies.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy.from_name(name)
    raise MisconfigurationException(f"Unknown strategy {name!r}")


def resolve(accelerator: str, devices: Any, strategy: Any, num_nodes: int) -> Tuple[str, Strategy]:
    """(accelerator name, configured strategy) for the Trainer's arguments."""
    from ferrotrain.strategies.single_device import SingleDeviceStrategy

    if isinstance(strategy, SingleDeviceStrategy) and accelerator == "auto":
        dev = strategy.root_device
        accelerator = "cuda" if dev.type == "cuda" else dev.type
    name = resolve_accelerator(accelerator)
    devs = resolve_devices(name, devices)
    chosen = strategy if isinstance(strategy, Strategy) else _strategy_from_name(strategy, len(devs) * num_nodes)
    if isinstance(chosen, SingleDeviceStrategy):
        if len(devs) * num_nodes > 1:
            raise MisconfigurationException(
                f"`SingleDeviceStrategy` runs one process, but `devices={devices!r}, num_nodes={num_nodes}` make "
                f"{len(devs) * num_nodes}; use strategy='ddp' or 'auto'"
            )
        if strategy is chosen:
            devs = [chosen.root_device]
    chosen._configure(name, devs, num_nodes)
    return name, chosen
