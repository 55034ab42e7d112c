"""Precision: what Lightning's precision plugins do, for one resolved `precision` string.

What it owns, per setting (Lightning's plugin in brackets):

- "32-true" [Precision]: nothing. `convert_input` is None, so the loops skip the input cast
  entirely, and the step runs without any context.
- "64-true" [DoublePrecision], "16-true" / "bf16-true" [HalfPrecision]: `convert_module` casts
  the model, `convert_input` casts the floating tensors of every batch (before
  `on_before_batch_transfer`, as Lightning), and the steps run with that dtype as torch's
  default dtype, so tensors made inside a step match the model.
- "bf16-mixed" / "16-mixed" [MixedPrecision]: the steps run under `torch.autocast` (with
  `cache_enabled=False`, as Lightning). "16-mixed" adds a GradScaler: the loss is scaled before
  backward, the gradients are unscaled before the before-step hooks and clipping, and
  `scaler.step` skips the optimizer step when a gradient is inf/NaN (then lowers the scale).
  Its state is what the checkpoint keeps under "MixedPrecision".

Device checks happen here, when the Trainer is built: a setting this torch build or device
cannot run is a `MisconfigurationException` saying why. `Trainer(precision="16-mixed")` on the
CPU runs as "bf16-mixed" with Lightning's warning (`resolve_for_accelerator`); float16 autocast
with a CPU GradScaler runs only when asked for with the plugin, `MixedPrecision("16-mixed",
"cpu")`, as in Lightning (and is a clear error on a torch build without it).

It does not own the loops: `loops/train_batch.py` and `trainer.py` call `step_context`,
`optimizer_step` and `backward_loss`; `checkpointing.py` calls `state_dict`/`load_state_dict`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch

from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.apply_func import map_tensors
from ferrotrain.utilities.rank_zero import rank_zero_info, rank_zero_warn

_TRUE_DTYPES = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}
_MIXED_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def cpu_float16_amp_available() -> bool:
    """Whether this torch build runs float16 autocast on the CPU and has a CPU GradScaler."""
    try:
        with warnings.catch_warnings():
            # Builds without it warn and turn autocast off instead of raising.
            warnings.simplefilter("ignore")
            with torch.autocast("cpu", dtype=torch.float16):
                enabled = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
            scaler = torch.amp.GradScaler("cpu")
        return bool(enabled and scaler.is_enabled())
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return False


def resolve_for_accelerator(precision: str, accelerator: str, as_given: bool) -> str:
    """The precision a Trainer runs: "16-mixed" on the CPU becomes "bf16-mixed", with Lightning's
    warning, unless it is to be kept `as_given` (a precision plugin set it, or the strategy runs
    its own precision: Lightning keeps both). Mixed precision is announced as Lightning does."""
    if as_given:
        return precision
    if precision == "16-mixed" and accelerator == "cpu":
        rank_zero_warn(
            "You passed `Trainer(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is not supported on "
            "CPU. Using `precision='bf16-mixed'` instead."
        )
        precision = "bf16-mixed"
    if precision in _MIXED_DTYPES:
        rank_zero_info(f"Using {'16bit' if precision == '16-mixed' else 'bfloat16'} Automatic Mixed Precision (AMP)")
    return precision


def convert_floats(data: Any, dtype: torch.dtype) -> Any:
    """Cast every floating tensor inside `data` (dicts, lists, tuples, namedtuples, dataclasses)
    to `dtype`; other values are returned unchanged (Lightning's `_convert_fp_tensor`)."""
    return map_tensors(data, lambda t: t.to(dtype) if t.is_floating_point() else t)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to `dtype` for the block (Lightning's `_DtypeContextManager`)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _optimizer_handles_unscaling(optimizer: Any) -> bool:
    """Fused optimizers unscale inside `step()`: unscaling before would do it twice (Lightning)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class Precision:
    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        self.scaler: Optional[Any] = None
        # The autocast dtype ("*-mixed") and the dtype the model and inputs are cast to ("*-true").
        self._dtype: Optional[torch.dtype] = _MIXED_DTYPES.get(precision)
        self._true_dtype: Optional[torch.dtype] = _TRUE_DTYPES.get(precision)
        # None at "32-true" and "*-mixed": the loops test it once, at plan time, not per batch.
        self.convert_input: Optional[Callable[[Any], Any]] = None
        if self._true_dtype is not None:
            dtype = self._true_dtype
            self.convert_input = lambda data: convert_floats(data, dtype)
        self._check_device()
        if precision == "16-mixed":
            self.scaler = torch.amp.GradScaler(device.type)

    def _check_device(self) -> None:
        kind = self.device.type
        if self.precision == "16-mixed" and kind == "cpu" and not cpu_float16_amp_available():
            raise MisconfigurationException(
                f"`Trainer(accelerator='cpu', precision='16-mixed')`: this torch build ({torch.__version__}) has no "
                "float16 autocast or GradScaler on the CPU; use `precision='bf16-mixed'` instead"
            )
        if self._dtype is not None and kind not in ("cpu", "cuda", "mps"):
            raise MisconfigurationException(
                f"`Trainer(precision={self.precision!r})`: autocast is not available on the {kind!r} device"
            )
        if self._dtype is not None and not torch.amp.is_autocast_available(kind):
            raise MisconfigurationException(
                f"`Trainer(precision={self.precision!r})`: this torch build has no autocast for {kind!r}"
            )
        uses_bf16 = torch.bfloat16 in (self._dtype, self._true_dtype)
        if uses_bf16 and kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise MisconfigurationException(
                f"`Trainer(precision={self.precision!r})`: this GPU does not support bfloat16; use "
                "`precision='16-mixed'` instead"
            )

    @property
    def mixed(self) -> bool:
        """Autocast around the steps ("*-mixed")."""
        return self._dtype is not None

    @property
    def has_step_context(self) -> bool:
        """Whether `step_context()` does anything (all settings but "32-true")."""
        return self._dtype is not None or self._true_dtype is not None

    def step_context(self) -> ContextManager[Any]:
        """Lightning's `forward_context`: autocast ("*-mixed"), the default dtype ("*-true")."""
        if self._dtype is not None:
            return torch.autocast(self.device.type, dtype=self._dtype, cache_enabled=False)
        if self._true_dtype is not None:
            return default_dtype(self._true_dtype)
        return contextlib.nullcontext()

    def init_context(self) -> ContextManager[Any]:
        """Where a model is built (`Trainer.init_module`): the "*-true" dtype as torch's default,
        so parameters are created in it; nothing for the other precisions."""
        if self._true_dtype is not None:
            return default_dtype(self._true_dtype)
        return contextlib.nullcontext()

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Cast the model's floating parameters and buffers ("*-true"); a no-op otherwise."""
        if self._true_dtype is not None:
            module.to(dtype=self._true_dtype)
        return module

    def backward_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def optimizer_step(self, optimizer: Any, closure: Callable[[], Any], after_closure: Callable[[], None],
                       automatic: bool = True, **kwargs: Any) -> Any:
        """Run `closure` (forward and backward), then `after_closure` (before-step hooks and
        clipping), then the optimizer's step (Lightning's `MixedPrecision.optimizer_step`)."""
        if self.scaler is None:
            def wrapped() -> Any:
                result = closure()
                after_closure()
                return result

            return optimizer.step(closure=wrapped, **kwargs)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise MisconfigurationException("AMP and the LBFGS optimizer are not compatible.")
        result = closure()
        # The closure returned no loss in automatic optimization: backward did not run.
        skip = result is None and automatic
        if not skip and not _optimizer_handles_unscaling(optimizer):
            # Unscaled before the before-step hooks, so clipping and logged norms see true values.
            self.scaler.unscale_(optimizer)
        after_closure()
        if skip:
            return result
        # `scaler.step` skips `optimizer.step` when a gradient is inf/NaN; `update` lowers the scale.
        out = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return out

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
