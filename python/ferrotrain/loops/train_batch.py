"""One training batch: automatic optimization (closure, zero_grad, backward, before-step hooks,
clipping, optimizer step) and manual optimization. This is the per-step path: everything that can
be decided once is decided in `__init__`, and hooks nobody overrode are not called.

Automatic order (Lightning's): optimizer_step( closure: training_step, on_before_zero_grad,
optimizer_zero_grad (first batch of an accumulation window), on_before_backward, backward,
on_after_backward ), on_before_optimizer_step, configure_gradient_clipping, the optimizer's step.
A batch inside an accumulation window runs the closure alone. When no hook, override, scaler,
clipping or accumulation sits between the parts, one plain closure runs them, and torch's own
optimizers (which call the closure first thing) get it called just before `step()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional

import torch
import torch.optim.optimizer as _torch_optimizer

from ferrotrain import _core
from ferrotrain.errors import MisconfigurationException
from ferrotrain.strategies.strategy import overrides_backward
from ferrotrain.trainer.optimization import LightningOptimizer, clip_gradients
from ferrotrain.loops.step_signature import takes_batch_idx, without_batch_idx

STEP = _core.FLAG_STEP
ZERO_GRAD = _core.FLAG_ZERO_GRAD

_RETURN_HELP = (
    "In automatic optimization, `training_step` must return a scalar loss Tensor, a dict with a "
    "'loss' key, or None (to skip the batch)"
)


class MockOptimizer(torch.optim.Optimizer):
    """Stands in when `configure_optimizers` returns None: backward still runs, steps do nothing."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


# torch's optimizers whose `step(closure)` calls the closure once, under `enable_grad`, before
# anything else it does (a graph-capture health check aside): calling the closure and then
# `step()` is the same sequence, without a grad-mode context per step. Others (LBFGS, user
# classes) always get the closure.
_CLOSURE_FIRST = frozenset(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta")
    if hasattr(torch.optim, name)
)
# Step pre-hooks registered for every optimizer (torch keeps them here); None on a torch that
# does not, which then always gets the closure.
_GLOBAL_STEP_PRE_HOOKS = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)


def _reads_batch_outputs(callback_hooks: Any, module_hook: Any) -> bool:
    """Whether any `on_train_batch_end` to call may read its `outputs`: the module's or a
    callback's, except ferrotrain's own progress bar, which never does (building the outputs
    costs a dict and a detach every step)."""
    from ferrotrain.callbacks.progress import TQDMProgressBar

    ignores = (TQDMProgressBar.on_train_batch_end,)
    return module_hook is not None or any(getattr(f, "__func__", f) not in ignores for f in callback_hooks)


def _loss_from_output(out: Any) -> Optional[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        loss = out
    elif out is None:
        return None
    elif isinstance(out, Mapping):
        loss = out.get("loss")
        if loss is None:
            raise MisconfigurationException(
                f"`training_step` returned a dict without a 'loss' key (keys: {sorted(map(str, out))}). {_RETURN_HELP}"
            )
        if not isinstance(loss, torch.Tensor):
            raise MisconfigurationException(f"`training_step` returned 'loss' of type {type(loss).__name__}. {_RETURN_HELP}")
    else:
        raise MisconfigurationException(f"`training_step` returned a {type(out).__name__}. {_RETURN_HELP}")
    if loss.numel() != 1:
        raise MisconfigurationException(
            f"`training_step` returned a loss of shape {tuple(loss.shape)}; it must be a scalar. {_RETURN_HELP}"
        )
    return loss


def _training_step_of(module: Any, trainer: Any) -> Any:
    """The strategy's `training_step` callable (the module's method, or routed through the DDP
    wrapper), checked for a finite loss only with `detect_anomaly=True`."""
    step = trainer.strategy.step_fn(module, "training_step")
    if not takes_batch_idx(module.training_step):
        step = without_batch_idx(step)
    if trainer._config.detect_anomaly:
        from ferrotrain.trainer.anomaly import checked_training_step

        return checked_training_step(step, trainer)
    return step


class AutomaticStep:
    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        module = trainer.lightning_module
        hooks = trainer._hooks
        self.module = module
        self.fx = module.__dict__
        self.training_step = _training_step_of(module, trainer)
        self.optimizer = trainer.optimizers[0] if trainer.optimizers else MockOptimizer()
        self.precision = trainer._precision
        self.mixed = self.precision.has_step_context
        self.scaler = self.precision.scaler
        self._accumulate = trainer.accumulate_grad_batches
        cb, mod, ov = hooks.cb, hooks.mod, hooks.overridden
        self.cb_zero, self.m_zero = cb["on_before_zero_grad"], mod["on_before_zero_grad"]
        self.cb_bb, self.m_bb = cb["on_before_backward"], mod["on_before_backward"]
        self.cb_ab, self.m_ab = cb["on_after_backward"], mod["on_after_backward"]
        self.cb_bos, self.m_bos = cb["on_before_optimizer_step"], mod["on_before_optimizer_step"]
        self.ov_step = ov["optimizer_step"]
        self.ov_zero = ov["optimizer_zero_grad"]
        self.ov_backward = ov["backward"]
        self.ov_clip = ov["configure_gradient_clipping"]
        self.clip_val = trainer.gradient_clip_val
        self.clip_algo = trainer.gradient_clip_algorithm
        self.wants_outputs = _reads_batch_outputs(cb["on_train_batch_end"], mod["on_train_batch_end"])
        self._out: Any = None
        self._loss: Optional[torch.Tensor] = None
        self._batch: Any = None
        self._batch_idx = 0
        self._zero = False
        self._lightning_optimizer = LightningOptimizer(self.optimizer, trainer) if self.ov_step else None
        self.count_step = trainer._schedule.count_optimizer_step
        # Batches that do not step skip the gradient all-reduce when the strategy can (DDP `no_sync`).
        self._no_sync = trainer.strategy.no_sync()
        # A strategy with its own `backward` gets every backward call (as in Lightning).
        self._strategy_backward = trainer.strategy.backward if overrides_backward(trainer.strategy) else None
        self._parts_timed = False
        self._select_closures()
        self._step_pre_hooks = getattr(self.optimizer, "_optimizer_step_pre_hooks", None)
        self._closure_first = (
            type(self.optimizer) in _CLOSURE_FIRST and self._step_pre_hooks is not None and _GLOBAL_STEP_PRE_HOOKS is not None
        )

    @property
    def accumulate(self) -> int:
        return self._accumulate

    @accumulate.setter
    def accumulate(self, value: int) -> None:
        # GradientAccumulationScheduler changes it between epochs: the closures follow.
        self._accumulate = value
        self._select_closures()

    def _select_closures(self) -> None:
        """With no hook, override, scaler, clipping or accumulation between them, a step is just
        training_step, zero_grad, backward and the optimizer's step: one closure does it all."""
        for name in ("closure", "closure_then_hooks"):
            self.__dict__.pop(name, None)  # back to the methods
        plain = (
            type(self) is AutomaticStep
            and not self._parts_timed
            and not self.mixed
            and self.scaler is None
            and self._accumulate == 1
            and self._no_sync is None
            and self._strategy_backward is None
            and not (self.ov_zero or self.ov_backward or self.ov_clip or self.clip_val)
            and not (self.cb_zero or self.cb_bb or self.cb_ab or self.cb_bos)
            and self.m_zero is None and self.m_bb is None and self.m_ab is None and self.m_bos is None
        )
        if plain:
            self.closure = self.closure_then_hooks = self._plain_closure  # type: ignore[method-assign]
        no_sync = self._no_sync
        self.accumulate_closure = self.closure if no_sync is None else self._closure_without_sync(no_sync)

    def time_with(self, wrap: Any) -> None:
        """Time the step's parts as profiler phases (`wrap(name, fn)`). Instance attributes shadow
        the methods, so the step's own calls go through the timed ones; the plain closure, which
        runs the parts inline, is then not used."""
        self.training_step = wrap(f"[LightningModule]{type(self.module).__name__}.training_step", self.training_step)
        self._zero_grad = wrap("[Strategy]zero_grad", self._zero_grad)  # type: ignore[method-assign]
        self._backward = wrap("[Strategy]backward", self._backward)  # type: ignore[method-assign]
        self.after_closure = wrap("[Strategy]clip_gradients", self.after_closure)  # type: ignore[method-assign]
        self._parts_timed = True
        self._select_closures()
        run, stepping = self.run, wrap("[Strategy]optimizer_step", self.run)

        def run_timed(batch: Any, batch_idx: int, flags: int) -> Any:
            # The optimizer step's phase covers the batches that step; the others run untimed.
            return stepping(batch, batch_idx, flags) if flags & STEP else run(batch, batch_idx, flags)

        self.run = run_timed  # type: ignore[method-assign]

    def _plain_closure(self) -> Optional[torch.Tensor]:
        """`closure_then_hooks` when there is nothing between its parts (`_select_closures`)."""
        self.fx["_current_fx_name"] = "training_step"
        out = self.training_step(self._batch, self._batch_idx)
        self._out = out
        loss = out if type(out) is torch.Tensor and out.numel() == 1 else _loss_from_output(out)
        self._loss = loss
        if self._zero:
            self.optimizer.zero_grad()
        if loss is not None:
            loss.backward()
        return loss

    def _optimizer_step(self) -> None:
        """`optimizer.step(closure)`; for torch's optimizers that run the closure first, the
        closure and then `step()`, unless a step pre-hook must run before the closure."""
        opt = self.optimizer
        if self._closure_first and not self._step_pre_hooks and not _GLOBAL_STEP_PRE_HOOKS and "step" not in opt.__dict__:
            self.closure_then_hooks()
            opt.step()
        else:
            opt.step(closure=self.closure_then_hooks)

    def _closure_without_sync(self, no_sync: Any) -> Any:
        def run() -> Optional[torch.Tensor]:
            with no_sync():
                return self.closure()

        return run

    # The closure reads the batch from `self` so no new function object is made per step.
    def _step_loss(self) -> Optional[torch.Tensor]:
        """`training_step` on the current batch, and its loss divided over the accumulation window."""
        self.fx["_current_fx_name"] = "training_step"
        if self.mixed:
            with self.precision.step_context():
                out = self.training_step(self._batch, self._batch_idx)
        else:
            out = self.training_step(self._batch, self._batch_idx)
        self._out = out
        loss = _loss_from_output(out)
        if loss is not None and self.accumulate > 1:
            loss = loss / self.accumulate
        self._loss = loss
        return loss

    def closure(self) -> Optional[torch.Tensor]:
        loss = self._step_loss()
        if self._zero:
            self._zero_grad()
        if loss is not None:
            self._backward(loss)
        return loss

    def closure_then_hooks(self) -> Optional[torch.Tensor]:
        """The closure handed to `optimizer.step` without a GradScaler: forward and backward,
        then the before-step hooks and clipping (Lightning's `_wrap_closure`)."""
        loss = self.closure()
        self.after_closure()
        return loss

    def _zero_grad(self) -> None:
        trainer, module, opt = self.trainer, self.module, self.optimizer
        if self.cb_zero or self.m_zero is not None:
            self.fx["_current_fx_name"] = "on_before_zero_grad"
            for f in self.cb_zero:
                f(trainer, module, opt)
            if self.m_zero is not None:
                self.m_zero(opt)
        if self.ov_zero:
            self.fx["_current_fx_name"] = "optimizer_zero_grad"
            module.optimizer_zero_grad(trainer.current_epoch, self._batch_idx, opt)
        else:
            opt.zero_grad()

    def _backward(self, loss: torch.Tensor) -> None:
        if self._strategy_backward is not None:
            self._strategy_backward(loss, self.optimizer)
            return
        trainer, module = self.trainer, self.module
        if self.cb_bb or self.m_bb is not None:
            self.fx["_current_fx_name"] = "on_before_backward"
            for f in self.cb_bb:
                f(trainer, module, loss)
            if self.m_bb is not None:
                self.m_bb(loss)
        self._backward_pass(loss)
        if self.cb_ab or self.m_ab is not None:
            self.fx["_current_fx_name"] = "on_after_backward"
            for f in self.cb_ab:
                f(trainer, module)
            if self.m_ab is not None:
                self.m_ab()


    def _backward_pass(self, loss: torch.Tensor) -> None:
        """The backward itself, between the backward hooks (a strategy's engine may own it)."""
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        if self.ov_backward:
            self.fx["_current_fx_name"] = "backward"
            self.module.backward(scaled)
        else:
            scaled.backward()
    def after_closure(self) -> None:
        """Before-step hooks and clipping, on the (unscaled) accumulated gradients."""
        trainer, module, opt = self.trainer, self.module, self.optimizer
        if self.cb_bos or self.m_bos is not None:
            self.fx["_current_fx_name"] = "on_before_optimizer_step"
            for f in self.cb_bos:
                f(trainer, module, opt)
            if self.m_bos is not None:
                self.m_bos(opt)
        if self.ov_clip:
            self.fx["_current_fx_name"] = "configure_gradient_clipping"
            module.configure_gradient_clipping(
                opt, gradient_clip_val=self.clip_val, gradient_clip_algorithm=self.clip_algo
            )
        elif self.clip_val:
            clip_gradients(module, opt, None, None)

    def run(self, batch: Any, batch_idx: int, flags: int) -> Any:
        self._batch = batch
        self._batch_idx = batch_idx
        self._zero = bool(flags & ZERO_GRAD)
        if flags & STEP:
            if self.ov_step:
                self.fx["_current_fx_name"] = "optimizer_step"
                self.module.optimizer_step(
                    self.trainer.current_epoch, batch_idx, self._lightning_optimizer, self.closure
                )
            elif self.scaler is None:
                self._optimizer_step()
            else:
                self.precision.optimizer_step(self.optimizer, self.closure, self.after_closure)
        else:
            self.accumulate_closure()
        if flags & STEP:
            # global_step moves on right after the step, before on_train_batch_end (Lightning).
            self.count_step()
        self._batch = None
        return self._batch_outputs(self._out, self._loss) if self.wants_outputs else None

    @staticmethod
    def _batch_outputs(out: Any, loss: Optional[torch.Tensor]) -> Any:
        """What `on_train_batch_end` receives as `outputs` (Lightning's): the step's dict with the
        loss detached, `{"loss": loss}` for a bare tensor, `{}` for a skipped batch."""
        if loss is None:
            return {}
        if type(out) is not torch.Tensor and isinstance(out, Mapping):
            return {**{k: v for k, v in out.items() if k != "loss"}, "loss": loss.detach()}
        return {"loss": loss.detach()}


class SkipBackwardStep(AutomaticStep):
    """Automatic optimization with no zero_grad and no backward (Lightning's
    `fit_loop._skip_backward`): `training_step` runs, and a batch the schedule steps on still
    calls the optimizer, on whatever gradients are left, as Lightning does."""

    def closure(self) -> Optional[torch.Tensor]:
        return self._step_loss()


class ManualStep:
    def __init__(self, trainer: Any) -> None:
        module = trainer.lightning_module
        self.fx = module.__dict__
        self.module = module
        self.training_step = _training_step_of(module, trainer)
        self.precision = trainer._precision

    def time_with(self, wrap: Any) -> None:
        """Time `training_step` as a profiler phase (`wrap(name, fn)`); the user's code does the rest."""
        self.training_step = wrap(f"[LightningModule]{type(self.module).__name__}.training_step", self.training_step)

    def run(self, batch: Any, batch_idx: int, flags: int) -> Dict[str, Any]:
        self.fx["_current_fx_name"] = "training_step"
        with self.precision.step_context():
            out = self.training_step(batch, batch_idx)
        if isinstance(out, Mapping):
            extra = dict(out)
        elif isinstance(out, torch.Tensor):
            extra = {"loss": out}
        elif out is None:
            extra = {}
        else:
            raise MisconfigurationException(
                f"In manual optimization, `training_step` must return a Tensor, a dict, or nothing; got {type(out).__name__}"
            )
        if isinstance(extra.get("loss"), torch.Tensor):
            extra["loss"] = extra["loss"].detach()
        return extra
