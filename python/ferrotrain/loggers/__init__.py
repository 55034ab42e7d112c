"""Loggers with Lightning 2.x's API: the `Logger` base class, `CSVLogger` (no extra dependency)
`TensorBoardLogger` (needs the `tensorboard` package, imported only when used), and the trackers
`MLFlowLogger`, `WandbLogger`, `CometLogger`, each importing its client only when constructed."""

from ferrotrain.loggers.comet import CometLogger
from ferrotrain.loggers.csv_logs import CSVLogger
from ferrotrain.loggers.litlogger import LitLogger
from ferrotrain.loggers.logger import Logger, rank_zero_experiment
from ferrotrain.loggers.mlflow import MLFlowLogger
from ferrotrain.loggers.tensorboard import TensorBoardLogger
from ferrotrain.loggers.wandb import WandbLogger

__all__ = ["CometLogger", "CSVLogger", "LitLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger", "rank_zero_experiment"]
