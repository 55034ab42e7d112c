"""`DeviceStatsMonitor`: logs the device's statistics around every train/validation/test batch on
logging steps (Lightning's): CPU load and memory through `psutil`, CUDA allocator statistics
through `torch.cuda.memory_stats`. Keys are `DeviceStatsMonitor.{hook}{separator}{stat}`, sent
straight to each logger at the training step count, as Lightning does."""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, Optional

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException

# Lightning's wording, which names the missing requirement as `lightning_utilities` prints it.
_PSUTIL_MISSING = "Requirement 'psutil' not met. HINT: Try running `pip install -U 'psutil'`"


def _psutil_available() -> bool:
    return importlib.util.find_spec("psutil") is not None


def get_cpu_stats() -> Dict[str, float]:
    if not _psutil_available():
        raise ModuleNotFoundError(f"Fetching CPU device stats requires `psutil` to be installed. {_PSUTIL_MISSING}")
    import psutil

    return {
        "cpu_vm_percent": psutil.virtual_memory().percent,
        "cpu_percent": psutil.cpu_percent(),
        "cpu_swap_percent": psutil.swap_memory().percent,
    }


def get_device_stats(device: Any) -> Dict[str, Any]:
    """The accelerator's statistics for `device` (Lightning's `accelerator.get_device_stats`)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_stats(device)
    return get_cpu_stats()


class DeviceStatsMonitor(Callback):
    """`cpu_stats`: None logs CPU stats only when training on CPU, True always, False never."""

    def __init__(self, cpu_stats: Optional[bool] = None) -> None:
        self._cpu_stats = cpu_stats
        self._eval_batches = 0

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException("Cannot use `DeviceStatsMonitor` callback with `Trainer(logger=False)`.")
        device = trainer.strategy.root_device
        if self._cpu_stats is None and device.type == "cpu" and not _psutil_available():
            raise ModuleNotFoundError(
                f"`DeviceStatsMonitor` cannot log CPU stats as `psutil` is not installed. {_PSUTIL_MISSING} "
            )

    def _should_log(self, trainer: Any) -> bool:
        """Lightning's `should_update_logs`: training looks at the step about to run, evaluation at
        the batches started in the running evaluation; a stopping fit always logs."""
        n = trainer.log_every_n_steps
        if n == 0:
            return False
        step = trainer._schedule.batches_that_stepped + 1 if trainer.training else self._eval_batches
        return step % n == 0 or trainer.should_stop

    def _log_stats(self, trainer: Any, key: str) -> None:
        if not self._should_log(trainer):
            return
        device = trainer.strategy.root_device
        if self._cpu_stats is False and device.type == "cpu":
            return
        stats = get_device_stats(device)
        if self._cpu_stats and device.type != "cpu":
            stats.update(get_cpu_stats())
        # The training step count, as Lightning's `_batches_that_stepped`: validation inside a fit
        # runs before the batch that triggered it is counted.
        fitting_val = trainer.validating and not trainer.sanity_checking and trainer.state.fn == "fit"
        step = trainer._eval_log_step if fitting_val else trainer._schedule.batches_that_stepped
        prefix = f"{type(self).__qualname__}.{key}"
        for lg in trainer.loggers:
            sep = lg.group_separator
            lg.log_metrics(metrics={prefix + sep + k: v for k, v in stats.items()}, step=step)

    # Evaluation batches started in the running evaluation (Lightning's `batch_progress.current.ready`).
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_batches = 0

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_batches = 0

    # Only the hooks Lightning's monitor uses: each costs a call per batch.
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._log_stats(trainer, "on_train_batch_start")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._log_stats(trainer, "on_train_batch_end")

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._eval_batches += 1
        self._log_stats(trainer, "on_validation_batch_start")

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._log_stats(trainer, "on_validation_batch_end")

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._eval_batches += 1
        self._log_stats(trainer, "on_test_batch_start")

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._log_stats(trainer, "on_test_batch_end")
