"""Precision: what runs the step in "32-true", "bf16-mixed" or "16-mixed".

`step_context()` is the autocast region around the steps (a no-op context for full precision),
and `optimizer_step` applies the optimizer around the user's closure, with a GradScaler for
"16-mixed" on CUDA (unscale before the before-step hooks and clipping, as Lightning does)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional

import torch

from ferrotrain.errors import MisconfigurationException


class Precision:
    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        self.scaler: Optional[Any] = None
        self._dtype: Optional[torch.dtype] = None
        if precision == "bf16-mixed":
            self._dtype = torch.bfloat16
        elif precision == "16-mixed":
            if device.type == "cpu":
                raise MisconfigurationException(
                    "`Trainer(accelerator='cpu', precision='16-mixed')`: AMP with float16 is not supported "
                    "on the CPU; use `precision='bf16-mixed'` instead"
                )
            self._dtype = torch.float16
            if device.type == "cuda":
                self.scaler = torch.amp.GradScaler("cuda")

    @property
    def mixed(self) -> bool:
        return self._dtype is not None

    def step_context(self) -> ContextManager[Any]:
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def backward_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def optimizer_step(self, optimizer: Any, closure: Callable[[], Any], after_closure: Callable[[], None],
                       **kwargs: Any) -> Any:
        """Run `closure` (forward and backward), then `after_closure` (before-step hooks and
        clipping), then the optimizer's step."""
        if self.scaler is None:
            def wrapped() -> Any:
                result = closure()
                after_closure()
                return result

            return optimizer.step(closure=wrapped, **kwargs)
        result = closure()
        self.scaler.unscale_(optimizer)
        after_closure()
        out = None
        if result is not None:
            out = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return out

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
