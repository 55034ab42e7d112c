"""`ModelSummary`: the layer table Lightning prints when `fit` starts, and `summarize()` which
returns it as a string::

      | Name | Type       | Params | Mode
    --------------------------------------------
    0 | net  | Sequential | 132 K  | train
    --------------------------------------------
    132 K     Trainable params
    0         Non-trainable params
    132 K     Total params
    0.530     Total estimated model params size (MB)
    3         Modules in train mode
    0         Modules in eval mode

When the module has an `example_input_array`, it is run once (no grad, eval mode, then the modes
are restored) to add `In sizes` / `Out sizes` columns. FLOPs are not counted.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

from ferrotrain.callbacks.callback import Callback
from ferrotrain.utilities.rank_zero import rank_zero_info

PARAMETER_NUM_UNITS = [" ", "K", "M", "B", "T"]
UNKNOWN_SIZE = "?"
LEFTOVER_PARAMS_NAME = "other params"
NOT_APPLICABLE = "n/a"
_PRECISION_BITS = {"64": 64, "64-true": 64, "32": 32, "32-true": 32, "16": 16, "16-true": 16, "bf16": 16, "bf16-true": 16}


def get_human_readable_count(number: float) -> str:
    """`123` -> `'123  '`, `1234` -> `'1.2 K'`, `2e6` -> `'2.0 M'`, `5e15` -> `'5,000 T'`."""
    if number < 0:
        raise ValueError(f"get_human_readable_count needs a number >= 0, got {number}")
    num_digits = int(math.floor(math.log10(number)) + 1 if number > 0 else 1)
    num_groups = min(int(math.ceil(num_digits / 3)), len(PARAMETER_NUM_UNITS))
    number = number * (10 ** (-3 * (num_groups - 1)))
    index = num_groups - 1
    if index < 1 or number >= 100:
        return f"{int(number):,d} {PARAMETER_NUM_UNITS[index]}"
    return f"{number:,.1f} {PARAMETER_NUM_UNITS[index]}"


def _num_params(module: Any) -> int:
    from torch.nn.parameter import UninitializedParameter

    return sum(p.numel() for p in module.parameters() if not isinstance(p, UninitializedParameter))


def _shape_of(value: Any) -> Any:
    if hasattr(value, "shape"):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [_shape_of(v) for v in value]
    return UNKNOWN_SIZE


def _layers(module: Any, max_depth: int) -> List[Tuple[str, Any]]:
    if max_depth == 0:
        return []
    if max_depth == 1:
        return list(module.named_children())
    layers = list(module.named_modules())[1:]  # not the root
    if max_depth > 1:
        layers = [(name, m) for name, m in layers if name.count(".") < max_depth]
    return layers


def _run_example_input(module: Any, layers: List[Tuple[str, Any]]) -> Dict[str, Tuple[Any, Any]]:
    """Run `example_input_array` once and record each layer's first input and output shapes."""
    import torch

    sizes: Dict[str, Tuple[Any, Any]] = {}
    handles = []
    for name, layer in layers:
        if isinstance(layer, torch.jit.ScriptModule):
            continue

        def hook(_: Any, args: Any, kwargs: Any, out: Any, name: str = name) -> None:
            if name not in sizes:
                inp = (*args, *kwargs.values()) if kwargs else args
                sizes[name] = (_shape_of(inp[0] if len(inp) == 1 else inp), _shape_of(out))

        handles.append(layer.register_forward_hook(hook, with_kwargs=True))

    example = module.example_input_array
    param = next(iter(module.parameters()), None)
    if param is not None:
        device = param.device

        def move(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.to(device)
            if isinstance(x, (list, tuple)):
                return type(x)(move(v) for v in x)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        example = move(example)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            if isinstance(example, (list, tuple)):
                module(*example)
            elif isinstance(example, dict):
                module(**example)
            else:
                module(example)
    finally:
        for m, training in modes.items():
            m.training = training
        for handle in handles:
            handle.remove()
    return sizes


def _summary_columns(module: Any, max_depth: int) -> List[Tuple[str, List[str]]]:
    layers = _layers(module, max_depth)
    has_example = getattr(module, "example_input_array", None) is not None
    sizes = _run_example_input(module, layers) if has_example and layers else {}
    params = [_num_params(layer) for _, layer in layers]
    columns: List[Tuple[str, List[str]]] = [
        (" ", [str(i) for i in range(len(layers))]),
        ("Name", [name for name, _ in layers]),
        ("Type", [type(layer).__name__ for _, layer in layers]),
        ("Params", [get_human_readable_count(n) for n in params]),
        ("Mode", ["train" if layer.training else "eval" for _, layer in layers]),
    ]
    if has_example:
        columns.append(("In sizes", [str(sizes.get(name, (UNKNOWN_SIZE,))[0]) for name, _ in layers]))
        columns.append(("Out sizes", [str(sizes.get(name, (None, UNKNOWN_SIZE))[1]) for name, _ in layers]))
    # Parameters registered directly on the root (not inside a listed child), as Lightning does
    # for depth 1; deeper tables already list every module.
    leftover = _num_params(module) - sum(p for (name, _), p in zip(layers, params) if "." not in name)
    if leftover > 0 and layers:
        values = dict(columns)
        values[" "].append(" ")
        values["Name"].append(LEFTOVER_PARAMS_NAME)
        values["Type"].append(NOT_APPLICABLE)
        values["Params"].append(get_human_readable_count(leftover))
        values["Mode"].append(NOT_APPLICABLE)
        for key in ("In sizes", "Out sizes"):
            if key in values:
                values[key].append(NOT_APPLICABLE)
    return columns


def _format_table(columns: List[Tuple[str, List[str]]], totals: Dict[str, Any]) -> str:
    n_rows = len(columns[0][1])
    widths = [max([len(header)] + [len(v) for v in values]) for header, values in columns]
    total_width = sum(widths) + 3 * (len(columns) + 1)
    lines = [" | ".join(f"{header:<{w}}" for (header, _), w in zip(columns, widths)), "-" * total_width]
    for i in range(n_rows):
        lines.append(" | ".join(f"{values[i]:<{w}}" for (_, values), w in zip(columns, widths)))
    lines.append("-" * total_width)
    trainable, total = totals["trainable"], totals["total"]
    lines += [
        f"{get_human_readable_count(trainable):<10}Trainable params",
        f"{get_human_readable_count(total - trainable):<10}Non-trainable params",
        f"{get_human_readable_count(total):<10}Total params",
        f"{totals['size_mb']:<10,.3f}Total estimated model params size (MB)",
        f"{totals['train_modules']:<10}Modules in train mode",
        f"{totals['eval_modules']:<10}Modules in eval mode",
    ]
    return "\n".join(lines)


def summarize(module: Any, max_depth: int = 1, precision: Any = "32-true") -> str:
    """The summary table of `module` as a string.

    Args:
        module: any `torch.nn.Module` (a LightningModule included).
        max_depth: how deep nested modules are listed: 1 the direct children, -1 all, 0 no layer
            rows (the totals only).
        precision: the Trainer's precision setting, used for the size estimate: "16-true"/"bf16-true"
            count 2 bytes a parameter, "64-true" 8, anything else (mixed precision keeps float32
            weights) 4.
    """
    if not isinstance(max_depth, int) or isinstance(max_depth, bool) or max_depth < -1:
        raise ValueError(f"`max_depth` can be -1, 0 or > 0, got {max_depth!r}.")
    columns = _summary_columns(module, max_depth)
    from torch.nn.parameter import UninitializedParameter

    params = [p for p in module.parameters() if not isinstance(p, UninitializedParameter)]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    bits = _PRECISION_BITS.get(str(precision), 32)
    modes = [m.training for m in list(module.modules())[1:]]
    totals = {
        "trainable": trainable,
        "total": total,
        "size_mb": total * bits / 8 * 1e-6,
        "train_modules": modes.count(True),
        "eval_modules": modes.count(False),
    }
    return _format_table(columns, totals)


class ModelSummary(Callback):
    """Print the model's summary table when `fit` starts (on global rank 0).

    Args:
        max_depth: as in `summarize`; 0 turns the summary off.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._max_depth:
            return
        if not getattr(trainer, "is_global_zero", True):
            return
        table = summarize(pl_module, self._max_depth, getattr(trainer, "precision", "32-true"))
        self.summarize_table(table)

    @staticmethod
    def summarize_table(table: str) -> None:
        """Show the table (override to send it elsewhere)."""
        rank_zero_info("\n" + table)


__all__ = ["ModelSummary", "get_human_readable_count", "summarize"]
