"""Lightning's type aliases (`lightning.pytorch.utilities.types`), which libraries use in their
signatures: what a step returns, what `configure_optimizers` may return, what the loaders are."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ferrotrain.trainer.optimization import LRSchedulerConfig

_NUMBER = Union[int, float]
_METRIC = Union[Tensor, _NUMBER, Any]  # a torchmetrics Metric too, when installed
STEP_OUTPUT = Optional[Union[Tensor, Mapping[str, Any]]]
_EVALUATE_OUTPUT = List[Mapping[str, float]]  # one dict per dataloader
_PREDICT_OUTPUT = Union[List[Any], List[List[Any]]]
TRAIN_DATALOADERS = Any  # any iterable or collection of iterables
EVAL_DATALOADERS = Any
_PATH = Union[str, "os.PathLike[str]"]
_MAP_LOCATION_TYPE = Optional[Union[str, torch.device, Dict[Union[str, torch.device], Union[str, torch.device]], Any]]

LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = Union[LRScheduler, ReduceLROnPlateau]
LRSchedulerType = Union[type, type]
LRSchedulerPLType = Union[LRScheduler, ReduceLROnPlateau]
LRSchedulerConfigType = Dict[str, Any]
OptimizerConfig = Dict[str, Any]
OptimizerLRSchedulerConfig = Dict[str, Any]
OptimizerLRScheduler = Optional[
    Union[
        Optimizer,
        Sequence[Optimizer],
        Sequence[Union[Sequence[Optimizer], Sequence[Union[LRScheduler, ReduceLROnPlateau, LRSchedulerConfig]]]],
        Dict[str, Any],
        Sequence[Dict[str, Any]],
    ]
]

__all__ = [
    "STEP_OUTPUT", "TRAIN_DATALOADERS", "EVAL_DATALOADERS", "LRSchedulerConfig", "LRSchedulerTypeTuple",
    "LRSchedulerTypeUnion", "LRSchedulerType", "LRSchedulerPLType", "LRSchedulerConfigType", "OptimizerConfig",
    "OptimizerLRSchedulerConfig", "OptimizerLRScheduler",
]

import os  # noqa: E402  (for the `_PATH` forward reference)
