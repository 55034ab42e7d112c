"""`Timer`: measure the time spent in training, validation and testing, and stop `fit` once a time
budget is used up (checked after every step or every epoch). Elapsed training time survives a
checkpoint round trip, so a resumed run keeps counting from where it stopped.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any, Dict, Optional, Union

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import ConfigTypeError, MisconfigurationException
from ferrotrain.utilities.rank_zero import rank_zero_info

# Lightning's RunningStage values.
_STAGES = ("train", "sanity_check", "validate", "test", "predict")
_INTERVALS = ("step", "epoch")


def parse_duration(duration: Union[None, str, timedelta, Dict[str, float]]) -> Optional[float]:
    """`"DD:HH:MM:SS"`, a `timedelta` or a dict of `timedelta` arguments -> seconds (None stays None)."""
    if duration is None:
        return None
    if isinstance(duration, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", duration.strip())
        if not match:
            raise MisconfigurationException(
                f"`Timer(duration={duration!r})` is not a valid duration. Expected a string in the format DD:HH:MM:SS."
            )
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif isinstance(duration, dict):
        try:
            duration = timedelta(**duration)
        except TypeError as err:
            raise MisconfigurationException(
                f"`Timer(duration={duration!r})`: the dict must hold `datetime.timedelta` arguments"
                " (weeks, days, hours, minutes, seconds, ...)."
            ) from err
    if not isinstance(duration, timedelta):
        raise ConfigTypeError(
            f"`Timer(duration=...)` takes a 'DD:HH:MM:SS' string, a datetime.timedelta or a dict,"
            f" got {type(duration).__name__}."
        )
    return duration.total_seconds()


class Timer(Callback):
    """Track time per stage and stop training when `duration` has elapsed (Lightning's `Timer`).

    Args:
        duration: `"DD:HH:MM:SS"`, a `timedelta`, or a dict such as `{"hours": 2}`; None only measures.
        interval: check the budget after every `"step"` or every `"epoch"`.
        verbose: say when the time limit stops training.

    Stages are Lightning's names: `"train"`, `"validate"`, `"test"` (also `"sanity_check"`, `"predict"`).
    """

    def __init__(
        self,
        duration: Union[None, str, timedelta, Dict[str, float]] = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        interval = getattr(interval, "value", interval)
        if interval not in _INTERVALS:
            raise MisconfigurationException(
                f"Unsupported parameter value `Timer(interval={interval!r})`. Possible choices are: {', '.join(_INTERVALS)}"
            )
        self._duration = parse_duration(duration)
        self._interval = interval
        self._verbose = verbose
        self._start_time: Dict[str, Optional[float]] = dict.fromkeys(_STAGES)
        self._end_time: Dict[str, Optional[float]] = dict.fromkeys(_STAGES)
        self._offset = 0.0

    @staticmethod
    def _stage(stage: Any) -> str:
        stage = getattr(stage, "value", stage)
        if stage not in _STAGES:
            raise ValueError(f"Unknown stage {stage!r}: use one of {', '.join(_STAGES)}.")
        return stage

    def start_time(self, stage: str = "train") -> Optional[float]:
        """When `stage` last started (a `time.monotonic()` value), or None."""
        return self._start_time[self._stage(stage)]

    def end_time(self, stage: str = "train") -> Optional[float]:
        """When `stage` last ended (a `time.monotonic()` value), or None."""
        return self._end_time[self._stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in `stage` (training time includes time restored from a checkpoint)."""
        stage = self._stage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        if end is None:
            return time.monotonic() - start + offset
        return end - start + offset

    def time_remaining(self, stage: str = "train") -> Optional[float]:
        """Seconds left of `duration`, or None without a duration."""
        if self._duration is None:
            return None
        return self._duration - self.time_elapsed(stage)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["train"] = time.monotonic()
        self._end_time["train"] = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["train"] = time.monotonic()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["validate"] = time.monotonic()
        self._end_time["validate"] = None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["validate"] = time.monotonic()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["test"] = time.monotonic()
        self._end_time["test"] = None

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["test"] = time.monotonic()

    def on_fit_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self._interval != "step" or self._duration is None:
            return
        self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self._interval != "epoch" or self._duration is None:
            return
        self._check_time_remaining(trainer)

    def state_dict(self) -> Dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in _STAGES}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))

    def _check_time_remaining(self, trainer: Any) -> None:
        assert self._duration is not None
        should_stop = self.time_elapsed() >= self._duration
        broadcast = getattr(getattr(trainer, "strategy", None), "broadcast", None)
        if broadcast is not None:
            should_stop = bool(broadcast(should_stop))
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            elapsed = timedelta(seconds=int(self.time_elapsed("train")))
            rank_zero_info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")
