"""When fit asks for the validation loaders, as in Lightning: when a validation first runs (the
sanity check, or the first validation epoch), so after `on_fit_start`, and with
`reload_dataloaders_every_n_epochs` again once at least N epochs have passed since the last request. A sanity check
on an epoch that does not validate leaves the count where it was."""

from __future__ import annotations

from typing import Any

from ferrotrain.core.module import LightningModule
from ferrotrain.callbacks.callback import is_overridden


def defer(trainer: Any, model: Any, given: Any) -> None:
    """Validation is planned when it is defined; its loaders are requested by `request`."""
    trainer._last_val_reload_epoch = float("-inf")
    trainer._val_requested = False
    trainer._val_loaders, trainer.num_val_batches = [], []
    trainer._val_given = given
    trainer._has_validation = bool(
        trainer._val_source_defined and is_overridden(model, LightningModule, "validation_step")
        and trainer._config.limit_val_batches != 0
    )


def due(trainer: Any) -> bool:
    if not trainer._val_requested:
        return True
    every = trainer._config.reload_dataloaders_every_n_epochs
    return bool(every) and trainer.current_epoch - trainer._last_val_reload_epoch >= every


def request(trainer: Any, sanity: bool) -> None:
    """Ask for the validation loaders again, and note the epoch unless this sanity check's epoch
    does not validate (Lightning then asks once more at the first validation epoch)."""
    trainer._setup_val_data(trainer.lightning_module, trainer.datamodule, trainer._val_given, for_fit=True)
    trainer._val_requested = True
    every = trainer._config.check_val_every_n_epoch
    validates_now = every is None or (trainer.current_epoch + 1) % every == 0
    if not sanity or validates_now:
        trainer._last_val_reload_epoch = trainer.current_epoch
