"""`LambdaCallback`: build a callback from plain functions, one per hook (`on_train_start=f`, ...).
The functions become instance attributes, so the Trainer's table of overridden hooks sees exactly
the hooks that were given."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import ConfigTypeError

# Every hook of `Callback` a function may be given for (not state_dict/load_state_dict, which
# describe the callback's own state).
_HOOKS = tuple(
    name
    for name in vars(Callback)
    if (name.startswith("on_") or name in ("setup", "teardown")) and callable(vars(Callback)[name])
)


class LambdaCallback(Callback):
    """A callback whose hooks are the given functions (Lightning's `LambdaCallback`)::

        LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: print(trainer.current_epoch))

    Each function receives the hook's arguments. Hooks given as None are left out.
    """

    def __init__(self, **hooks: Optional[Callable[..., Any]]) -> None:
        unknown = sorted(set(hooks) - set(_HOOKS))
        if unknown:
            raise ConfigTypeError(
                f"LambdaCallback() got unknown hook name(s) {', '.join(map(repr, unknown))}."
                f" Hooks are: {', '.join(_HOOKS)}."
            )
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise ConfigTypeError(f"LambdaCallback({name}=...) must be callable, got {type(fn).__name__}.")
            setattr(self, name, fn)
