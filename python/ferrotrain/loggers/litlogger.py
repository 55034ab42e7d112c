"""`LitLogger` exists so Lightning code imports; it logs to Lightning AI's hosted service."""

from __future__ import annotations

from typing import Any

from ferrotrain.errors import NotSupportedYetError
from ferrotrain.loggers.logger import Logger


class LitLogger(Logger):
    def __new__(cls, *args: Any, **kwargs: Any) -> "LitLogger":  # before the abstract-method check
        raise NotSupportedYetError(
            "`LitLogger` (Lightning AI's hosted experiment tracking, the `litlogger` package) is not supported by "
            "ferrotrain; use CSVLogger, TensorBoardLogger, MLFlowLogger, WandbLogger or CometLogger"
        )
