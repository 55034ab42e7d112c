"""Lightning's `core.mixins.hparams_mixin` path: the mixin lives in `ferrotrain.core.hparams`."""

from ferrotrain.core.hparams import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
