"""Strategies: how a run is laid out over devices and processes (`Trainer(strategy=...)`).

    Trainer(strategy="ddp", accelerator="cpu", devices=2)       # starts the second process itself
    Trainer(strategy=DDPStrategy(find_unused_parameters=True))
    Trainer(strategy=FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="sharded"), devices=2)
    torchrun --nproc_per_node 2 train.py                        # the Trainer reads the ranks

`strategy` is the base class and the one-process layout, `parallel` what the multi-process
strategies share (ranks, process group, samplers, collectives), `ddp` DDP, `fsdp` FSDP, `deepspeed`
DeepSpeed (needs the package), `launcher` starts processes by re-running the script, `spawn` runs
each Trainer call in spawned processes (ddp_spawn), `environment` reads ranks, `connector`
resolves the Trainer's arguments into a strategy.
"""

from __future__ import annotations

from typing import Any

from ferrotrain.strategies.strategy import Strategy

__all__ = ["DDPStrategy", "DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "ParallelStrategy", "SingleDeviceStrategy", "Strategy"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import ferrotrain` must not pay for torch.distributed.
    if name == "DDPStrategy":
        from ferrotrain.strategies.ddp import DDPStrategy as cls
    elif name == "FSDPStrategy":
        from ferrotrain.strategies.fsdp import FSDPStrategy as cls
    elif name == "ParallelStrategy":
        from ferrotrain.strategies.parallel import ParallelStrategy as cls
    elif name == "DeepSpeedStrategy":
        from ferrotrain.strategies.deepspeed import DeepSpeedStrategy as cls
    elif name == "ModelParallelStrategy":
        from ferrotrain.strategies.model_parallel import ModelParallelStrategy as cls
    elif name == "SingleDeviceStrategy":
        from ferrotrain.strategies.single_device import SingleDeviceStrategy as cls
    else:
        raise AttributeError(f"module 'ferrotrain.strategies' has no attribute {name!r}")
    globals()[name] = cls
    return cls
