"""Callbacks with Lightning 2.x's API. `Callback` is the base class; the rest are the everyday
callbacks Lightning ships, each imported on first use so `import ferrotrain` stays light."""

from __future__ import annotations

from ferrotrain._lazy import lazy_getattr
from ferrotrain.callbacks.callback import Callback
from ferrotrain.callbacks.checkpoint import Checkpoint

_LAZY = {
    "BackboneFinetuning": "finetuning",
    "BaseFinetuning": "finetuning",
    "BasePredictionWriter": "prediction_writer",
    "BatchSizeFinder": "batch_size_finder",
    "DeviceStatsMonitor": "device_stats_monitor",
    "EarlyStopping": "early_stopping",
    "GradientAccumulationScheduler": "gradient_accumulation_scheduler",
    "LambdaCallback": "lambda_function",
    "LearningRateFinder": "lr_finder",
    "LearningRateMonitor": "lr_monitor",
    "ModelCheckpoint": "model_checkpoint",
    "ModelSummary": "model_summary",
    "OnExceptionCheckpoint": "on_exception_checkpoint",
    "ModelPruning": "pruning",
    "ProgressBar": "progress",
    "RichProgressBar": "progress",
    "TQDMProgressBar": "progress",
    "RichModelSummary": "rich_model_summary",
    "SpikeDetection": "spike",
    "StochasticWeightAveraging": "stochastic_weight_avg",
    "ThroughputMonitor": "throughput_monitor",
    "Timer": "timer",
    "EMAWeightAveraging": "weight_averaging",
    "WeightAveraging": "weight_averaging",
}

__all__ = ["Callback", "Checkpoint", *sorted(_LAZY)]


__getattr__ = lazy_getattr("ferrotrain.callbacks", _LAZY, globals())


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
