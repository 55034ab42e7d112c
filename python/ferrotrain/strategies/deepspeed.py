"""`DeepSpeedStrategy`: accepted only when the `deepspeed` package is installed. Without it,
building one is a clear error naming the package; with it, it is not implemented yet."""

from __future__ import annotations

import importlib.util
from typing import Any

from ferrotrain.errors import MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies.strategy import Strategy

_STAGES = {
    "deepspeed": (2, False), "deepspeed_stage_1": (1, False), "deepspeed_stage_2": (2, False),
    "deepspeed_stage_2_offload": (2, True), "deepspeed_stage_3": (3, False), "deepspeed_stage_3_offload": (3, True),
}


class DeepSpeedStrategy(Strategy):
    strategy_name = "deepspeed"

    def __init__(self, stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False, **kwargs: Any) -> None:
        if importlib.util.find_spec("deepspeed") is None:
            raise MisconfigurationException(
                "`DeepSpeedStrategy` needs the `deepspeed` package, which is not installed (`pip install deepspeed`)"
            )
        raise NotSupportedYetError(f"`DeepSpeedStrategy(stage={stage})` is not supported yet by ferrotrain")

    @classmethod
    def from_name(cls, name: str) -> "DeepSpeedStrategy":
        stage, offload = _STAGES[name]
        return cls(stage=stage, offload_optimizer=offload, offload_parameters=offload and stage == 3)
