"""`ModelParallelStrategy` (Lightning's tensor parallelism over a 2-D device mesh): the name
exists so Lightning code imports; building one says it is not supported yet."""

from __future__ import annotations

from typing import Any

from ferrotrain.errors import NotSupportedYetError
from ferrotrain.strategies.parallel import ParallelStrategy


class ModelParallelStrategy(ParallelStrategy):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedYetError(
            "`ModelParallelStrategy` (tensor parallelism through `configure_model` and a device mesh) is not "
            "supported yet by ferrotrain; use strategy='ddp', 'fsdp' or 'deepspeed'"
        )
