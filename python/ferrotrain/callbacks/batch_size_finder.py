"""`BatchSizeFinder`: Lightning's batch size search as a callback. When the fit starts it tries
growing batch sizes for a few steps each, backs off on out-of-memory errors, and leaves the
largest size that fit in the model's (or datamodule's) `batch_arg_name` attribute for the rest of
the fit. The search itself lives in `ferrotrain.tuner.batch_size_scaling`."""

from __future__ import annotations

from typing import Any, Optional

from ferrotrain.callbacks.callback import Callback
from ferrotrain.tuner.batch_size_scaling import _check_margin


class BatchSizeFinder(Callback):
    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}")
        _check_margin(margin)
        self.optimal_batch_size: Optional[int] = init_val
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self._margin = margin
        self._max_val = max_val
        # Set by `Tuner.scale_batch_size`: the hosting call ends once the search is done.
        self._early_exit = False

    def setup(self, trainer: Any, pl_module: Any, stage: Optional[str] = None) -> None:
        from ferrotrain.errors import MisconfigurationException, NotSupportedYetError
        from ferrotrain.utilities.parsing import lightning_hasattr
        from ferrotrain.utilities.rank_zero import rank_zero_warn

        if trainer.world_size > 1:
            raise MisconfigurationException("The Batch size finder is not supported with distributed strategies.")
        if stage != "fit":
            prefix = {"validate": "val"}.get(stage, stage)
            from ferrotrain.trainer.data import as_loader_list, resolve_loaders

            loaders = resolve_loaders(prefix, None, trainer.datamodule, pl_module)
            if loaders is not None and len(as_loader_list(loaders, f"{prefix}_dataloaders")) > 1:
                # Lightning's check comes first: it holds whatever ferrotrain supports.
                raise MisconfigurationException(
                    f"The Batch size finder cannot be used with multiple {prefix} dataloaders."
                )
            raise NotSupportedYetError(
                f"The Batch size finder runs in `fit` only in ferrotrain (got stage={stage!r}); "
                "`validate`, `test` and `predict` are not supported yet"
            )
        if trainer._fit_sources[0] is not None:
            raise MisconfigurationException(
                "The Batch size finder cannot be used with dataloaders passed directly to `.fit()`. Please disable"
                " the feature or incorporate the dataloader into your LightningModule or LightningDataModule."
            )
        if not lightning_hasattr(pl_module, self._batch_arg_name):
            raise MisconfigurationException(
                f"Field {self._batch_arg_name} not found in `model`, `datamodule`, nor their `hparams` attributes."
            )
        if (hasattr(pl_module, self._batch_arg_name) and hasattr(pl_module, "hparams")
                and self._batch_arg_name in pl_module.hparams):
            rank_zero_warn(
                f"Field `model.{self._batch_arg_name}` and `model.hparams.{self._batch_arg_name}` are mutually"
                f" exclusive! `model.{self._batch_arg_name}` will be used as the initial batch size for scaling."
                " If this is not the intended behavior, please remove either one."
            )

    def scale_batch_size(self, trainer: Any, pl_module: Any) -> None:
        from ferrotrain.errors import _TunerExitException
        from ferrotrain.tuner.batch_size_scaling import _scale_batch_size

        self.optimal_batch_size = _scale_batch_size(
            trainer, self._mode, self._steps_per_trial, self._init_val, self._max_trials,
            self._batch_arg_name, self._margin, self._max_val,
        )
        if self._early_exit:
            raise _TunerExitException()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)
