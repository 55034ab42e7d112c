"""Hyperparameter capture for `save_hyperparameters`: read the caller's `__init__` arguments from
its frame, as Lightning does, into an `AttributeDict`."""

from __future__ import annotations

import inspect
import types
from typing import Any, Dict, Optional, Sequence, Union


class AttributeDict(dict):
    """A dict whose keys are also attributes (`hparams.lr`)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(f"'AttributeDict' object has no attribute '{key}'") from exc

    def __setattr__(self, key: str, val: Any) -> None:
        self[key] = val

    def __delattr__(self, item: str) -> None:
        if item not in self:
            raise AttributeError(item)
        del self[item]


def collect_init_args(frame: types.FrameType, obj: Any) -> Dict[str, Any]:
    """The arguments of the `__init__` running in `frame`, by name (`*args`/`**kwargs` flattened)."""
    code = frame.f_code
    local_vars = frame.f_locals
    n_args = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:n_args])
    found: Dict[str, Any] = {}
    for name in names:
        if name in ("self", "__class__"):
            continue
        if name in local_vars and local_vars[name] is not obj:
            found[name] = local_vars[name]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kw_name = code.co_varnames[n_args + (1 if code.co_flags & inspect.CO_VARARGS else 0)]
        extra = local_vars.get(kw_name)
        if isinstance(extra, dict):
            found.update(extra)
    return found


def save_hyperparameters(
    obj: Any,
    args: Sequence[Any],
    ignore: Optional[Union[Sequence[str], str]],
    frame: Optional[types.FrameType],
) -> None:
    if frame is None:
        raise RuntimeError("save_hyperparameters() must be called from the object's __init__")
    init_args = collect_init_args(frame, obj)
    if isinstance(ignore, str):
        ignore = [ignore]
    ignored = set(ignore or ())
    if len(args) == 1 and isinstance(args[0], (dict,)) and not isinstance(args[0], str):
        hp: Dict[str, Any] = dict(args[0])
    elif args:
        hp = {}
        for a in args:
            if isinstance(a, str):
                if a in init_args:
                    hp[a] = init_args[a]
            elif isinstance(a, dict):
                hp.update(a)
            else:
                # A Namespace or similar object: take its public attributes.
                hp.update({k: v for k, v in vars(a).items() if not k.startswith("_")})
    else:
        hp = {k: v for k, v in init_args.items()}
    for k in ignored:
        hp.pop(k, None)
    obj._hparams = AttributeDict(hp)
    obj._hparams_initial = AttributeDict(dict(hp))


# ---------------------------------------------------------------------- Lightning's attribute lookup
# The tuners read and write a hyperparameter (`lr`, `batch_size`) wherever the user keeps it: on the
# module, in `module.hparams`, on the datamodule or in its `hparams` (Lightning's `lightning_*attr`).
def _attr_holders(model: Any, attribute: str) -> list:
    holders: list = []
    if hasattr(model, attribute):
        holders.append(model)
    if hasattr(model, "hparams") and attribute in model.hparams:
        holders.append(model.hparams)
    trainer = getattr(model, "_trainer", None)
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    if dm is not None:
        if hasattr(dm, attribute):
            holders.append(dm)
        if hasattr(dm, "hparams") and attribute in dm.hparams:
            holders.append(dm.hparams)
    return holders


def lightning_hasattr(model: Any, attribute: str) -> bool:
    return bool(_attr_holders(model, attribute))


def _missing(attribute: str) -> AttributeError:
    return AttributeError(
        f"{attribute} is neither stored in the model namespace nor the `hparams` namespace/dict, nor the datamodule."
    )


def lightning_getattr(model: Any, attribute: str) -> Any:
    """The value from the last holder (Lightning's order: module, hparams, datamodule, its hparams)."""
    holders = _attr_holders(model, attribute)
    if not holders:
        raise _missing(attribute)
    holder = holders[-1]
    return holder[attribute] if isinstance(holder, dict) else getattr(holder, attribute)


def lightning_setattr(model: Any, attribute: str, value: Any) -> None:
    """Set the value in every holder."""
    holders = _attr_holders(model, attribute)
    if not holders:
        raise _missing(attribute)
    for holder in holders:
        if isinstance(holder, dict):
            holder[attribute] = value
        else:
            setattr(holder, attribute, value)


def is_picklable(obj: object) -> bool:
    """Whether `pickle` can serialize `obj` (hyperparameters that cannot are left out of checkpoints)."""
    import pickle

    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True
