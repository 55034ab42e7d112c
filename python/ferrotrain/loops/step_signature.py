"""Which arguments a step or batch hook takes, read from its signature as Lightning does.

`batch_idx` is passed only to a step that can take it (a second positional parameter, a
parameter of that name, or `*args`); `dataloader_idx` must be declared exactly when there are
several evaluation dataloaders (a default value makes it optional)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence


def _positional(fn: Callable[..., Any]) -> "tuple[list[str], bool]":
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: assume it takes everything
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    return names, has_varargs


def takes_param(fn: Callable[..., Any], name: str, min_args: "int | None" = None) -> bool:
    names, has_varargs = _positional(fn)
    return name in names or has_varargs or (min_args is not None and len(names) >= min_args)


def takes_batch_idx(fn: Callable[..., Any]) -> bool:
    return takes_param(fn, "batch_idx", min_args=2)


def without_batch_idx(step: Callable[..., Any]) -> Callable[..., Any]:
    """`step(batch, batch_idx, *rest)` for a step declared as `step(batch, *rest)`."""
    def call(batch: Any, batch_idx: int, *rest: Any) -> Any:
        return step(batch, *rest)

    return call


def check_dataloader_idx(module: Any, hooks: Sequence[str], expected: bool, prefix: str) -> None:
    """Lightning's check: `dataloader_idx` declared without a default for a single dataloader, or
    missing for several, is a RuntimeError naming the hook."""
    for hook in hooks:
        fx = getattr(module, hook, None)
        if fx is None:
            continue
        present = takes_param(fx, "dataloader_idx")
        where = f"`{type(module).__name__}.{hook}()`"
        if not expected:
            if present:
                params = inspect.signature(fx).parameters
                if "dataloader_idx" in params and params["dataloader_idx"].default is inspect.Parameter.empty:
                    raise RuntimeError(
                        f"You provided only a single `{prefix}_dataloader`, but have included `dataloader_idx` in"
                        f" {where}. Either remove the argument or give it a default value i.e. `dataloader_idx=0`."
                    )
        elif not present:
            raise RuntimeError(
                f"You provided multiple `{prefix}_dataloader`, but no `dataloader_idx` argument in {where}."
                " Try adding `dataloader_idx=0` to its signature."
            )
