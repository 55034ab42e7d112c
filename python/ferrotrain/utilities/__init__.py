"""Utilities users import as in Lightning (`from ferrotrain.utilities import grad_norm,
CombinedLoader`). Loaded on first use, so importing a submodule (the seed helpers, at
`import ferrotrain`) stays cheap."""

from __future__ import annotations

from ferrotrain._lazy import lazy_getattr

_LAZY = {
    "grad_norm": "clip",
    "CombinedLoader": "combined_loader",
    "AttributeDict": "parsing",
    "move_data_to_device": "apply_func",
    "rank_zero_info": "rank_zero",
    "rank_zero_only": "rank_zero",
    "rank_zero_warn": "rank_zero",
    "GradClipAlgorithmType": "enums",
    "LightningEnum": "enums",
    "disable_possible_user_warnings": "warnings",
    "find_shared_parameters": "parameter_sharing",
    "set_shared_parameters": "parameter_sharing",
    "is_picklable": "parsing",
    "is_shared_filesystem": "system",
    "suggested_max_num_workers": "system",
    "measure_flops": "flops",
    "rank_zero_deprecation": "rank_zero",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("ferrotrain.utilities", _LAZY, globals())
