"""Lightning's `core.mixins` path for `HyperparametersMixin` (plain classes and datamodules use it)."""

from ferrotrain.core.hparams import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
