"""`HyperparametersMixin`: `save_hyperparameters()` and `hparams`, shared by the module and the
datamodule (Lightning's mixin of the same name)."""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence, Union

from ferrotrain.utilities.parsing import AttributeDict, save_hyperparameters as _save_hparams


class HyperparametersMixin:
    # Loggers receive hyperparameters only once `save_hyperparameters(logger=True)` ran (Lightning).
    _log_hyperparams = False

    @property
    def hparams(self) -> AttributeDict:
        # Created on first use, per instance: works even before `save_hyperparameters`.
        if "_hparams" not in self.__dict__:
            self.__dict__["_hparams"] = AttributeDict()
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        return AttributeDict(dict(self.__dict__.get("_hparams_initial", {})))

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Optional[Union[Sequence[str], str]] = None,
        frame: Any = None,
        logger: bool = True,
    ) -> None:
        """Store the caller's `__init__` arguments (or the given names/dicts) in `self.hparams`;
        `logger=False` keeps them out of the loggers."""
        self._log_hyperparams = logger
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        _save_hparams(self, args, ignore, frame)
