"""`XLAProfiler` exists so Lightning code imports; it needs TPUs through torch_xla."""

from __future__ import annotations

from typing import Any

from ferrotrain.errors import NotSupportedYetError
from ferrotrain.profilers.profiler import Profiler


class XLAProfiler(Profiler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedYetError("`XLAProfiler` is not supported by ferrotrain: it needs TPUs through torch_xla")
