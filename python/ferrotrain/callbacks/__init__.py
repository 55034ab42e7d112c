"""Callbacks with Lightning 2.x's API. `Callback` is the base class; the rest are the everyday
callbacks Lightning ships. (`ModelCheckpoint` is imported here too, from its own module.)"""

from ferrotrain.callbacks.callback import Callback
from ferrotrain.callbacks.checkpoint import Checkpoint
from ferrotrain.callbacks.early_stopping import EarlyStopping
from ferrotrain.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from ferrotrain.callbacks.lambda_function import LambdaCallback
from ferrotrain.callbacks.lr_monitor import LearningRateMonitor
from ferrotrain.callbacks.model_summary import ModelSummary
from ferrotrain.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from ferrotrain.callbacks.progress import ProgressBar, RichProgressBar, TQDMProgressBar
from ferrotrain.callbacks.timer import Timer

from ferrotrain.callbacks.model_checkpoint import ModelCheckpoint

__all__ = [
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "GradientAccumulationScheduler",
    "LambdaCallback",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "RichProgressBar",
    "TQDMProgressBar",
    "Timer",
]
