"""From the Trainer's `accelerator`, `devices`, `strategy` and `num_nodes` to a configured
`Strategy`: which accelerator runs, which devices this node uses, and which strategy (Lightning's
rules: several devices or nodes with `strategy='auto'` mean DDP). Called once, by the Trainer's
constructor; every check about device counts lives here.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from ferrotrain.errors import MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies.strategy import Strategy
from ferrotrain.trainer.accelerators import device_ids, resolve_accelerator


def resolve_devices(accelerator: str, devices: Any) -> List[torch.device]:
    """The devices of this node, one per process."""
    if accelerator == "tpu":
        raise NotSupportedYetError("`Trainer(accelerator='tpu')` selects a TPU (`torch_xla`), which is not supported yet by ferrotrain")
    if accelerator == "cuda":
        return [torch.device("cuda", i) for i in device_ids(devices, torch.cuda.device_count(), "CUDA")]
    if accelerator == "mps":
        return [torch.device("mps") for _ in device_ids(devices, 1, "MPS")]
    # CPU: `devices` is the number of processes ("auto", -1 and [0]: one).
    if isinstance(devices, list):
        if devices != [0]:
            raise MisconfigurationException(
                f"`Trainer(accelerator='cpu', devices={devices!r})`: the CPU is one device; pass an int "
                "(the number of processes) or 'auto'"
            )
        return [torch.device("cpu")]
    n = 1 if devices in ("auto", -1) else int(devices)
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
    if name in ("fsdp", "fsdp_cpu_offload"):
        from ferrotrain.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(cpu_offload=name == "fsdp_cpu_offload")
    if name.startswith("deepspeed"):
        from ferrotrain.strategies.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy.from_name(name)
    raise MisconfigurationException(f"Unknown strategy {name!r}")


def resolve(accelerator: str, devices: Any, strategy: Any, num_nodes: int,
            cluster_environment: Optional[Any] = None) -> Tuple[str, Strategy]:
    """(accelerator name, configured strategy) for the Trainer's arguments; `cluster_environment`
    is the one from `Trainer(plugins=...)`. A one-process strategy has no cluster environment
    and ignores it, as Lightning does."""
    from ferrotrain.strategies.single_device import SingleDeviceStrategy

    if isinstance(strategy, SingleDeviceStrategy) and accelerator == "auto":
        dev = strategy.root_device
        accelerator = "cuda" if dev.type == "cuda" else dev.type
    name = resolve_accelerator(accelerator)
    devs = resolve_devices(name, devices)
    chosen = strategy if isinstance(strategy, Strategy) else _strategy_from_name(strategy, len(devs) * num_nodes)
    if cluster_environment is not None and hasattr(chosen, "cluster_environment"):
        if strategy is chosen and chosen.cluster_environment is not None:
            raise MisconfigurationException(
                "cluster_environment set through both strategy class and plugins, choose one")
        chosen.cluster_environment = cluster_environment
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
