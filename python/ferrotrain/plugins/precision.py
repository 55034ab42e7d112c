"""Precision plugins: each names one of the Trainer's precision settings, which the Trainer
then runs (autocast, GradScaler, dtype casts live in `ferrotrain.trainer.precision`)."""

from __future__ import annotations

from typing import Any, Optional

from ferrotrain.errors import NotSupportedYetError


class Precision:
    """Full float32 precision (Lightning's base precision plugin)."""

    precision: str = "32-true"


class DoublePrecision(Precision):
    precision = "64-true"


class HalfPrecision(Precision):
    """The whole model in float16 or bfloat16 ("16-true", "bf16-true")."""

    def __init__(self, precision: str = "16-true") -> None:
        if precision not in ("16-true", "bf16-true"):
            raise ValueError(f"`HalfPrecision(precision=...)` must be '16-true' or 'bf16-true', got {precision!r}")
        self.precision = precision


class MixedPrecision(Precision):
    """Autocast ("16-mixed" with a GradScaler, "bf16-mixed")."""

    def __init__(self, precision: str, device: str, scaler: Optional[Any] = None) -> None:
        if precision not in ("16-mixed", "bf16-mixed"):
            raise ValueError(f"`MixedPrecision(precision=...)` must be '16-mixed' or 'bf16-mixed', got {precision!r}")
        if scaler is not None:
            raise NotSupportedYetError("`MixedPrecision(scaler=...)`: a custom GradScaler is not supported yet; "
                                       "the Trainer makes its own for '16-mixed'")
        self.precision = precision
        self.device = device
        self.scaler = scaler


class FSDPPrecision(Precision):
    """The precision of an FSDP run; FSDP's own mixed-precision policy follows it."""

    def __init__(self, precision: str, scaler: Optional[Any] = None) -> None:
        if scaler is not None:
            raise NotSupportedYetError("`FSDPPrecision(scaler=...)` is not supported yet")
        self.precision = precision


class DeepSpeedPrecision(Precision):
    """The precision of a DeepSpeed run (DeepSpeed's config takes it)."""

    def __init__(self, precision: str) -> None:
        self.precision = precision


class _Unavailable(Precision):
    _needs = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedYetError(f"`{type(self).__name__}` is not supported by ferrotrain: it needs {self._needs}")


class XLAPrecision(_Unavailable):
    _needs = "TPUs through torch_xla"


class BitsandbytesPrecision(_Unavailable):
    _needs = "bitsandbytes' quantized layers"


class TransformerEnginePrecision(_Unavailable):
    _needs = "NVIDIA Transformer Engine"
