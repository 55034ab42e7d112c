"""`LearningRateFinder`: the learning rate range test as a callback (Lightning's). It runs the test
when the fit starts (override `on_fit_start`/`on_train_epoch_start` and call `lr_find` to run it
elsewhere) and, with `update_attr`, sets the suggested rate on the model before training. The
test itself lives in `ferrotrain.tuner.lr_finder`."""

from __future__ import annotations

from typing import Any, Optional

from ferrotrain.callbacks.callback import Callback


class LearningRateFinder(Callback):
    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: Optional[float] = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}")
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        # Set by `Tuner.lr_find`: the hosting `fit` ends once the test is done.
        self._early_exit = False
        self.optimal_lr: Any = None  # the `_LRFinder` of the last test

    def lr_find(self, trainer: Any, pl_module: Any) -> None:
        from ferrotrain.errors import _TunerExitException
        from ferrotrain.tuner.lr_finder import _lr_find
        from ferrotrain.utilities.seed import isolate_rng

        # The test's batches must not shift the random draws of the real training.
        with isolate_rng():
            self.optimal_lr = _lr_find(
                trainer,
                pl_module,
                min_lr=self._min_lr,
                max_lr=self._max_lr,
                num_training=self._num_training_steps,
                mode=self._mode,
                early_stop_threshold=self._early_stop_threshold,
                update_attr=self._update_attr,
                attr_name=self._attr_name,
            )
        if self._early_exit:
            raise _TunerExitException()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.lr_find(trainer, pl_module)
