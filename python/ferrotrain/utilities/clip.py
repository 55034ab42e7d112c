"""Gradient norms and clipping: drop-in versions of `torch.nn.utils.clip_grad_norm_`,
`torch.nn.utils.clip_grad_value_` and Lightning's `grad_norm`.

What this module owns: sorting gradients into the two paths and every torch call. Contiguous
CPU gradients of float32/float64/float16/bfloat16 go to the native core, which reads where
each one's memory starts and ends through torch's DLPack exchange table: one pass over their memory computes the total norm
(accumulated in float64), and the scale (or clamp) happens in place, skipped when no clipping
is needed. Every other gradient (on an accelerator, strided, sparse, a tensor subclass, another
dtype) takes torch's `_foreach` path, whose norm and clip coefficient stay on the device.

What it does not own: the arithmetic (`ferrotrain._core`, from `rust/core/src/clip.rs`).
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Dict, Iterable, List, Tuple, Union

import torch

from ferrotrain import _core
from ferrotrain._dtypes import GRAD_DTYPES
from ferrotrain.errors import MisconfigurationException, NonFiniteNormError

__all__ = ["clip_grad_norm_", "clip_grad_value_", "grad_norm", "total_grad_norm_and_clip"]

Parameters = Union[torch.Tensor, Iterable[torch.Tensor]]

# The native clip math's dtypes, indexed by their code.
_DTYPES = GRAD_DTYPES
# Result dtype for each set of dtypes (a bit mask over the codes): what torch gets when it
# stacks per-dtype norms, so our returned norm has torch's dtype.
_MASK_DTYPE = {
    mask: reduce(torch.promote_types, [dt for code, dt in enumerate(_DTYPES) if mask >> code & 1])
    for mask in range(1, 16)
}
_Tensor = torch.Tensor


def _grads(parameters: Parameters) -> List[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [g for p in parameters if (g := p.grad) is not None]


def _split(grads: List[torch.Tensor]) -> Tuple["_core.GradBufs", List[torch.Tensor]]:
    """The native buffers (as one checked `GradBufs`) and the gradients left to torch, sorted in
    one native call. With torch's DLPack exchange table each gradient is described by one C call
    (no Python attribute reads); older torch builds get the same sort through the attributes."""
    fast, slow_idx = _core.split_grads(grads, _Tensor, _DTYPES)
    return fast, [grads[i] for i in slow_idx]


def _group(tensors: List[torch.Tensor]) -> Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]]:
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def _norm_order(norm_type: Union[float, int, str]) -> float:
    """`norm_type` as a float (`'inf'` allowed); anything not positive is a configuration error."""
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        p = math.nan
    if not p > 0:
        raise MisconfigurationException(
            f"`norm_type` must be a positive number or 'inf' (infinity norm), got {norm_type!r}"
        )
    return p


def _non_negative(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not v >= 0:
        raise MisconfigurationException(f"`{name}` must be a non-negative number (or inf), got {value!r}")
    return v


def _non_finite(norm_type: float, norm: object) -> NonFiniteNormError:
    return NonFiniteNormError(
        f"The total norm of order {norm_type} for gradients from `parameters` is non-finite ({norm}), "
        "so it cannot be clipped. To disable this error and scale the gradients by the non-finite "
        "norm anyway, set `error_if_nonfinite=False`"
    )


def clip_grad_norm_(
    parameters: Parameters,
    max_norm: float,
    norm_type: Union[float, int, str] = 2.0,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Scale the gradients in place so that their total norm is at most `max_norm`; as
    `torch.nn.utils.clip_grad_norm_`, including its 0-dim return value (the norm before
    clipping, in the promoted gradient dtype, on the first gradient's device) and its
    coefficient `max_norm / (norm + 1e-6)`. Gradients are untouched when no clipping is needed.

    Raises `MisconfigurationException` for a negative `max_norm` or a non-positive
    `norm_type`, and `NonFiniteNormError` (a `RuntimeError`) for a NaN/inf norm when
    `error_if_nonfinite` is set, before anything is scaled.
    """
    max_norm = _non_negative("max_norm", max_norm)
    p = _norm_order(norm_type)
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    fast, slow = _split(grads)
    if not slow:
        norm, _, mask = _core.clip_grad_norm_bufs(fast, max_norm, p, error_if_nonfinite)
        if error_if_nonfinite and not math.isfinite(norm):
            raise _non_finite(p, norm)
        return torch.scalar_tensor(norm, dtype=_MASK_DTYPE.get(mask, torch.float32))
    return _clip_mixed(grads, fast, slow, max_norm, p, error_if_nonfinite)


@torch.no_grad()
def _clip_mixed(
    grads: List[torch.Tensor],
    fast: "_core.GradBufs",
    slow: List[torch.Tensor],
    max_norm: float,
    p: float,
    error_if_nonfinite: bool,
) -> torch.Tensor:
    """Some gradients stay on torch: combine their per-group norms with the native partial norm
    exactly as torch combines per-device norms, keeping the norm and coefficient on the device."""
    first_device = grads[0].device
    groups = _group(slow)
    norms: List[torch.Tensor] = []
    if fast:
        part, mask = _core.grad_norm_bufs(fast, p)
        # `full` on a device is a fill kernel with the value as an argument: no copy, no sync.
        norms.append(torch.full((), part, dtype=_MASK_DTYPE.get(mask, torch.float32), device=first_device))
    for ts in groups.values():
        norms.extend(torch._foreach_norm(ts, p))
    total = torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), p)
    # A host sync, only when asked for (torch does the same).
    if error_if_nonfinite and bool(torch.logical_or(total.isnan(), total.isinf())):
        raise _non_finite(p, total.item())
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for (device, _), ts in groups.items():
        torch._foreach_mul_(ts, coef.to(device))
    if fast:
        # CPU memory needs the coefficient on the host: a sync when the norm lives on an
        # accelerator, as in torch's own `coef.to("cpu")` for CPU gradients.
        c = float(coef)
        if not c >= 1.0:
            _core.scale_bufs(fast, c)
    return total


def total_grad_norm_and_clip(
    parameters: Parameters, max_norm: float, norm_type: Union[float, int, str] = 2.0
) -> torch.Tensor:
    """Clip, and return the total norm computed while clipping, so logging it costs no second
    pass over the gradients."""
    return clip_grad_norm_(parameters, max_norm, norm_type)


def clip_grad_value_(parameters: Parameters, clip_value: float) -> None:
    """Clamp every gradient element to `[-clip_value, clip_value]` in place, as
    `torch.nn.utils.clip_grad_value_` (NaN stays NaN; the bound is rounded to each dtype)."""
    clip_value = _non_negative("clip_value", clip_value)
    grads = _grads(parameters)
    if not grads:
        return
    fast, slow = _split(grads)
    if fast:
        _core.clamp_bufs(fast, clip_value)
    if slow:
        with torch.no_grad():
            for ts in _group(slow).values():
                torch._foreach_clamp_min_(ts, -clip_value)
                torch._foreach_clamp_max_(ts, clip_value)


@torch.no_grad()
def grad_norm(
    module: torch.nn.Module, norm_type: Union[float, int, str], group_separator: str = "/"
) -> Dict[str, torch.Tensor]:
    """Each parameter's gradient norm and their total norm, with the keys and value dtypes of
    `lightning.pytorch.utilities.grad_norm`: `grad_{p}_norm{sep}{name}` per parameter (in the
    gradient's dtype) and `grad_{p}_norm_total`. The per-parameter norms and the total come
    from one native pass over contiguous CPU gradients; others use `Tensor.norm`. Unlike
    Lightning, the total is computed from the unrounded values (more exact, same dtype)."""
    p = _norm_order(norm_type)
    named = [(name, g) for name, param in module.named_parameters() if (g := param.grad) is not None]
    if not named:
        return {}
    grads = [g for _, g in named]
    fast, slow = _split(grads)
    values: List[torch.Tensor]
    if not slow:
        each, total = _core.grad_norms_bufs(fast, p)
        values = _as_tensors(each, [g.dtype for g in grads])
    else:
        values = [g.norm(p) for g in grads]
        total = None
    norms = {f"grad_{p}_norm{group_separator}{name}": v for (name, _), v in zip(named, values)}
    # Lightning builds the total with `torch.tensor(list_of_norms)`, which promotes their dtypes.
    total_dtype = reduce(torch.promote_types, {g.dtype for g in grads})
    if total is None:
        total_t = torch.stack([v.to(total_dtype) for v in values]).norm(p)
    else:
        total_t = torch.full((), total, dtype=total_dtype)
    norms[f"grad_{p}_norm_total"] = total_t
    return norms


def _as_tensors(values: List[float], dtypes: List[torch.dtype]) -> List[torch.Tensor]:
    """One 0-dim tensor per value, each rounded once from float64 to its dtype, built with one
    tensor per dtype (then unbound) rather than one per value."""
    first = dtypes[0]
    if all(dt is first for dt in dtypes):
        return list(torch.tensor(values, dtype=first).unbind(0))
    out: List[torch.Tensor] = [torch.empty(())] * len(values)
    by_dtype: Dict[torch.dtype, List[int]] = {}
    for i, dt in enumerate(dtypes):
        by_dtype.setdefault(dt, []).append(i)
    for dt, idx in by_dtype.items():
        for i, t in zip(idx, torch.tensor([values[i] for i in idx], dtype=dt).unbind(0)):
            out[i] = t
    return out
