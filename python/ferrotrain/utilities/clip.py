"""Gradient clipping (placeholder until the native one-pass implementation lands)."""
from __future__ import annotations

from typing import Iterable

import torch


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type, error_if_nonfinite)


def clip_grad_value_(parameters: Iterable[torch.Tensor], clip_value: float) -> None:
    torch.nn.utils.clip_grad_value_(list(parameters), clip_value)
