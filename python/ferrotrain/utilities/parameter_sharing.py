"""Tied parameters (one Parameter reachable under several names), found and restored by name:
moving a module to another device or loading weights can untie them."""

from __future__ import annotations

from typing import Dict, List

import torch


def find_shared_parameters(module: torch.nn.Module) -> List[List[str]]:
    """Groups of parameter names that refer to the same Parameter object, in registration order."""
    names: Dict[int, List[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _owner(module: torch.nn.Module, name: str) -> "tuple[torch.nn.Module, str]":
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def set_shared_parameters(module: torch.nn.Module, shared_params: List[List[str]]) -> torch.nn.Module:
    """Tie each group again: every name in a group gets the group's first Parameter."""
    for group in shared_params:
        first_owner, first_leaf = _owner(module, group[0])
        param = getattr(first_owner, first_leaf)
        for name in group[1:]:
            owner, leaf = _owner(module, name)
            setattr(owner, leaf, param)
    return module
