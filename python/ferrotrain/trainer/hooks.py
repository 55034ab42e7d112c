"""The hook table: which hooks each callback and the module really override, built once per run.

The loops never call a hook nobody overrode: for each hook the table holds a tuple of the bound
methods to call, in Lightning's order (callbacks in list order, then the module), and the hot
loop checks an empty tuple and moves on. Module hooks whose defaults do real work (`backward`,
`optimizer_step`, the eval/train switches, batch transfer) are flagged as overridden or not, so
the loop can run the default inline when the user kept it.

Lightning's order, as the loops use it (`callbacks` then `module` unless noted):

    setup(stage)               callbacks, then module (after datamodule.setup)
    on_fit_start .. on_fit_end
      on_sanity_check_start
        on_validation_* (model_eval, start, epoch_start, [batch hooks], epoch_end, end, model_train)
      on_sanity_check_end
      on_train_start
        on_train_epoch_start
          per batch: on_before_batch_transfer, transfer_batch_to_device, on_after_batch_transfer
                     (the datamodule's when it overrides them, else the module's),
                     on_train_batch_start, optimizer_step( closure: training_step,
                     on_before_zero_grad, optimizer_zero_grad, on_before_backward, backward,
                     on_after_backward ), on_before_optimizer_step, configure_gradient_clipping,
                     on_train_batch_end
          validation when scheduled (on_validation_model_zero_grad first)
        on_train_epoch_end     callbacks, module, then monitoring callbacks
                               (checkpointing and early stopping see the module's last logs)
      on_train_end
    on_fit_end
    teardown(stage)            callbacks, then module
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ferrotrain.callbacks.callback import Callback, is_overridden
from ferrotrain.core.datamodule import LightningDataModule
from ferrotrain.core.module import LightningModule
from ferrotrain.utilities.rank_zero import rank_zero_warn

CALLBACK_HOOKS = tuple(
    name for name in vars(Callback) if (name.startswith("on_") or name in ("setup", "teardown")) and callable(vars(Callback)[name])
)

# Module hooks with a no-op default: skipped entirely unless overridden.
MODULE_NOOP_HOOKS = (
    "setup", "teardown", "prepare_data", "configure_model",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_validation_start", "on_validation_end", "on_test_start", "on_test_end",
    "on_predict_start", "on_predict_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_train_epoch_start", "on_train_epoch_end",
    "on_validation_epoch_start", "on_validation_epoch_end",
    "on_test_epoch_start", "on_test_epoch_end",
    "on_predict_epoch_start", "on_predict_epoch_end",
    "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_save_checkpoint", "on_load_checkpoint",
)

# Module hooks whose default does work: the loop runs the default inline unless overridden.
MODULE_WORK_HOOKS = (
    "backward", "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping",
    "lr_scheduler_step", "on_validation_model_zero_grad", "on_validation_model_eval",
    "on_validation_model_train", "on_test_model_eval", "on_test_model_train", "on_predict_model_eval",
)

TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def _is_monitoring(cb: Callback) -> bool:
    # Checkpointing and early stopping run after the module's epoch-end hook, as in Lightning.
    from ferrotrain.callbacks.checkpoint import Checkpoint

    try:
        from ferrotrain.callbacks.early_stopping import EarlyStopping
    except ImportError:  # pragma: no cover - the module always ships
        EarlyStopping = ()  # type: ignore[assignment,misc]
    return isinstance(cb, (Checkpoint, EarlyStopping))


def _idle(cb: Callback, name: str) -> bool:
    """True when `cb` says its `name` hook does nothing in its configuration (`_idle_hooks()`),
    so the per-batch loop does not call it."""
    idle = getattr(cb, "_idle_hooks", None)
    return idle is not None and name in idle()


class HookTable:
    """Bound hook methods to call, per hook name. Build it once per run."""

    def __init__(self, module: LightningModule, callbacks: Sequence[Callback],
                 datamodule: Optional[LightningDataModule] = None) -> None:
        self.module = module
        self.callbacks = list(callbacks)
        self.cb: Dict[str, Tuple[Callable[..., Any], ...]] = {}
        for name in CALLBACK_HOOKS:
            self.cb[name] = tuple(
                getattr(c, name) for c in self.callbacks if is_overridden(c, Callback, name) and not _idle(c, name))
        # on_train_epoch_end is split: plain callbacks before the module, monitoring after.
        ordinary = [c for c in self.callbacks if not _is_monitoring(c)]
        monitoring = [c for c in self.callbacks if _is_monitoring(c)]
        self.cb_train_epoch_end_first = tuple(
            c.on_train_epoch_end for c in ordinary if is_overridden(c, Callback, "on_train_epoch_end"))
        self.cb_train_epoch_end_last = tuple(
            c.on_train_epoch_end for c in monitoring if is_overridden(c, Callback, "on_train_epoch_end"))
        self.mod: Dict[str, Optional[Callable[..., Any]]] = {}
        for name in MODULE_NOOP_HOOKS:
            self.mod[name] = getattr(module, name) if is_overridden(module, LightningModule, name) else None
        self.overridden = {name: is_overridden(module, LightningModule, name) for name in MODULE_WORK_HOOKS}
        # Batch transfer: the datamodule's hook wins when it overrides one (Lightning's selector).
        self.transfer: Dict[str, Optional[Callable[..., Any]]] = {}
        for name in TRANSFER_HOOKS:
            on_module = is_overridden(module, LightningModule, name)
            if datamodule is not None and is_overridden(datamodule, LightningDataModule, name):
                if on_module:
                    rank_zero_warn(f"You have overridden `{name}` in both `LightningModule` and `LightningDataModule`."
                                   " It will use the implementation from `LightningDataModule` instance.")
                self.transfer[name] = getattr(datamodule, name)
            elif on_module:
                if datamodule is not None:
                    rank_zero_warn(f"You have overridden `{name}` in `LightningModule` but have passed in a"
                                   " `LightningDataModule`. It will use the implementation from `LightningModule` instance.")
                self.transfer[name] = getattr(module, name)
            else:
                self.transfer[name] = None

    def callbacks_then_module(self, name: str, trainer: Any, *args: Any) -> None:
        """Call `name` on every overriding callback, then on the module if it overrides it."""
        module = self.module
        for fn in self.cb.get(name, ()):
            fn(trainer, module, *args)
        mfn = self.mod.get(name)
        if mfn is not None:
            mfn(*args)

    def callbacks_only(self, name: str, trainer: Any, *args: Any) -> None:
        module = self.module
        for fn in self.cb.get(name, ()):
            fn(trainer, module, *args)

    def has(self, name: str) -> bool:
        return bool(self.cb.get(name)) or self.mod.get(name) is not None
