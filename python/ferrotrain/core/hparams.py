"""`HyperparametersMixin`: `save_hyperparameters()` and `hparams`, shared by the module and the
datamodule and usable on any class (Lightning's mixin of the same name, at its path
`core.mixins.hparams_mixin` too)."""

import copy
import inspect
from argparse import Namespace
from collections.abc import MutableMapping
from typing import Any, Optional, Sequence, Tuple, Union

from ferrotrain.utilities.parsing import AttributeDict, save_hyperparameters as _save_hparams

_PRIMITIVE_TYPES = (bool, int, float, str)


def _allowed_config_types() -> Tuple[type, ...]:
    # An omegaconf config is kept as it is (Lightning), when omegaconf is installed.
    try:
        from omegaconf import Container
    except ImportError:
        return (AttributeDict, MutableMapping, Namespace)
    return (AttributeDict, MutableMapping, Namespace, Container)


class HyperparametersMixin:
    # Loggers receive hyperparameters only once `save_hyperparameters(logger=True)` ran (Lightning).
    _log_hyperparams = False

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Optional[Union[Sequence[str], str]] = None,
        frame: Any = None,
        logger: bool = True,
    ) -> None:
        """Store the `__init__` arguments (of this class and the `__init__`s that called it), or
        the given names, or one config object (dict, Namespace, omegaconf config) in `self.hparams`.
        A second call adds to what the first stored; `ignore` leaves names out; `logger=False`
        keeps them out of the loggers; `frame` is the `__init__` frame to read instead of the caller's."""
        self._log_hyperparams = logger
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        _save_hparams(self, *args, ignore=ignore, frame=frame)

    def _set_hparams(self, hp: Any) -> None:
        hp = self._to_hparams_dict(hp)
        if isinstance(hp, dict) and isinstance(self.hparams, dict):
            self.hparams.update(hp)
        else:
            self._hparams = hp

    def remove_ignored_hparams(self, ignore_list: Sequence[str]) -> None:
        """Drop names a base class saved (a subclass's `ignore=`)."""
        for key in ignore_list:
            self._hparams.pop(key, None)

    @staticmethod
    def _to_hparams_dict(hp: Any) -> Any:
        if isinstance(hp, Namespace):
            hp = vars(hp)
        if isinstance(hp, dict):
            return AttributeDict(hp)
        if isinstance(hp, _PRIMITIVE_TYPES):
            raise ValueError(f"Primitives {_PRIMITIVE_TYPES} are not allowed.")
        if not isinstance(hp, _allowed_config_types()):
            raise ValueError(f"Unsupported config type of {type(hp)}.")
        return hp

    @property
    def hparams(self) -> Union[AttributeDict, MutableMapping]:
        # Created on first use, per instance: works even before `save_hyperparameters`.
        if "_hparams" not in self.__dict__:
            self.__dict__["_hparams"] = AttributeDict()
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of what `save_hyperparameters` stored (later edits to `hparams` do not show)."""
        if "_hparams_initial" not in self.__dict__:
            return AttributeDict()
        return copy.deepcopy(self.__dict__["_hparams_initial"])
