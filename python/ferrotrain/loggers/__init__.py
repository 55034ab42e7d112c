"""Loggers with Lightning 2.x's API: the `Logger` base class, `CSVLogger` (no extra dependency)
and `TensorBoardLogger` (needs the `tensorboard` package, imported only when used)."""

from ferrotrain.loggers.csv_logs import CSVLogger
from ferrotrain.loggers.logger import Logger, rank_zero_experiment
from ferrotrain.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "rank_zero_experiment"]
