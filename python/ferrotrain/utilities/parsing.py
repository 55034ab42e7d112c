"""Hyperparameter capture for `save_hyperparameters`: read the caller's `__init__` arguments from
its frame, as Lightning does, into an `AttributeDict`."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ferrotrain.utilities.rank_zero import rank_zero_warn


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


def clean_namespace(hparams: Any) -> None:
    """Drop the entries of `hparams` that cannot be pickled, warning for each (Lightning)."""
    for k in [k for k, v in hparams.items() if not is_picklable(v)]:
        rank_zero_warn(
            f"Attribute '{k}' removed from hparams because it cannot be pickled. You can suppress this warning by"
            f" setting `self.save_hyperparameters(ignore=['{k}'])`.",
        )
        del hparams[k]


def parse_class_init_keys(cls: type) -> Tuple[str, Optional[str], Optional[str]]:
    """The names `cls.__init__` gives to `self`, `*args` and `**kwargs` (None when absent)."""
    params = list(inspect.signature(cls.__init__).parameters.values())  # type: ignore[misc]
    var_args = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    var_kwargs = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    return params[0].name, var_args, var_kwargs


def _init_args_of(frame: types.FrameType) -> Tuple[Any, Dict[str, Any]]:
    """`(self, arguments)` of the `__init__` running in `frame`, `**kwargs` flattened in; `(None, {})`
    when the frame is not a class's `__init__` (only methods that use `super()`/`__class__` can be
    told apart, as in Lightning)."""
    local_vars = frame.f_locals
    if "__class__" not in local_vars or frame.f_code.co_name != "__init__":
        return None, {}
    cls = local_vars["__class__"]
    self_name, args_name, kwargs_name = parse_class_init_keys(cls)
    excluded = {n for n in (self_name, args_name, kwargs_name) if n} | {"__class__", "frame", "frame_args"}
    found = {k: local_vars[k] for k in inspect.signature(cls.__init__).parameters if k in local_vars}
    if kwargs_name:
        found.update(found.get(kwargs_name) or {})
    return local_vars.get(self_name), {k: v for k, v in found.items() if k not in excluded}


def get_init_args(frame: types.FrameType) -> Dict[str, Any]:
    """The arguments of the `__init__` running in `frame` (Lightning's helper of this name)."""
    return _init_args_of(frame)[1]


def collect_init_args(
    frame: types.FrameType, path_args: List[Dict[str, Any]], inside: bool = False, classes: Tuple[type, ...] = ()
) -> List[Dict[str, Any]]:
    """The arguments of each `__init__` up the call stack from `frame`, innermost first: the chain
    of `super().__init__` calls, and an enclosing module's `__init__` when one builds another
    (`classes` limits it to instances of those classes). Lightning's walk, step for step."""
    while isinstance(frame.f_back, types.FrameType):
        local_self, local_args = _init_args_of(frame)
        if "__class__" in frame.f_locals and (not classes or isinstance(local_self, classes)):
            path_args.append(local_args)
            inside = True
        elif inside:
            break
        frame = frame.f_back
    return path_args


def save_hyperparameters(
    obj: Any,
    *args: Any,
    ignore: Optional[Union[Sequence[str], str]] = None,
    frame: Optional[types.FrameType] = None,
    given_hparams: Optional[Dict[str, Any]] = None,
) -> None:
    """What `obj.save_hyperparameters(*args, ignore=..., frame=...)` stores (see the mixin). Repeated
    calls add to `obj.hparams`, as Lightning's do."""
    if len(args) == 1 and not args[0]:
        return  # an empty dict/Namespace-like: nothing to save (Lightning)
    if frame is None:
        current = inspect.currentframe()
        frame = current.f_back if current is not None else None
    if not isinstance(frame, types.FrameType):
        raise AttributeError("There is no `frame` available while being required.")

    if given_hparams is not None:
        init_args = dict(given_hparams)
    elif dataclasses.is_dataclass(obj):
        init_args = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    else:
        from ferrotrain.core.hparams import HyperparametersMixin

        init_args = {}
        for level in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
            init_args.update(level)

    if ignore is None:
        ignored: List[str] = []
    elif isinstance(ignore, str):
        ignored = [ignore]
    else:
        ignored = [k for k in ignore if isinstance(k, str)]
    init_args = {k: v for k, v in init_args.items() if k not in ignored}

    if not args:
        hp: Any = init_args
        obj._hparams_name = "kwargs" if hp else None
    else:
        objects = [a for a in args if not isinstance(a, str)]
        if len(objects) == 1:
            # One config object (dict, Namespace, DictConfig): it becomes the hparams, named after
            # the `__init__` argument that passed it.
            hp = objects[0]
            names = [k for k, v in init_args.items() if v is hp or _equal(v, hp)]
            obj._hparams_name = names[0] if names else None
        else:
            missing = [a for a in args if isinstance(a, str) and a not in init_args]
            if missing:
                raise KeyError(missing[0])
            hp = {a: init_args[a] for a in args if isinstance(a, str)}
            obj._hparams_name = "kwargs"

    obj._set_hparams(hp)
    for key in ignored:
        obj._hparams.pop(key, None)
    for k, v in obj._hparams.items():
        if isinstance(v, torch.nn.Module):
            rank_zero_warn(
                f"Attribute {k!r} is an instance of `nn.Module` and is already saved during checkpointing."
                f" It is recommended to ignore them using `self.save_hyperparameters(ignore=[{k!r}])`."
            )
    obj._hparams_initial = copy.deepcopy(obj._hparams)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # tensors and arrays compare elementwise
        return False


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
