"""`ThroughputMonitor`: times the train/validation/test/predict batches and logs Lightning's
throughput metrics (`{stage}/time`, `batches`, `samples`, `lengths`, `device/batches_per_sec`,
`device/samples_per_sec`, `device/items_per_sec`, the global `*_per_sec` when the world size is
above 1, and FLOPs/MFU when the module has `flops_per_batch`) on the Trainer's logging steps.

It owns `Throughput`, a minimal reimplementation of `lightning.fabric.utilities.throughput.Throughput`
(rolling windows over the last `window_size` updates), and the stage bookkeeping of Lightning's
callback: training time excludes the validation runs inside a fit, evaluation counters restart
with every fit validation and keep counting across standalone `validate`/`test`/`predict` calls.
Per batch it only reads the clock and calls `batch_size_fn`/`length_fn`: no host sync on CPU (CUDA
is synchronised, as Lightning does, or the clock would not measure the work)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Union

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException
from ferrotrain.trainer.states import RunningStage, TrainerFn
from ferrotrain.utilities.rank_zero import rank_zero_warn

# Theoretical FLOPs of a few data-centre GPUs (vendor figures, as Lightning's table); other chips give None.
_CUDA_FLOPS: Dict[str, Dict[str, float]] = {
    "h200": {"float64": 3.4e13, "float32": 6.7e13, "tfloat32": 9.9e14, "bfloat16": 2.0e15, "float16": 2.0e15},
    "h100": {"float64": 33.5e12, "float32": 66.9e12, "tfloat32": 494.7e12, "bfloat16": 989.4e12, "float16": 989.4e12},
    "a100": {"float64": 9.7e12, "float32": 19.5e12, "tfloat32": 156e12, "bfloat16": 312e12, "float16": 312e12},
}


def _compute_dtype(precision: str) -> str:
    if precision.startswith("64"):
        return "float64"
    if precision.startswith("bf16"):
        return "bfloat16"
    if precision.startswith("16"):
        return "float16"
    return "float32"


def get_available_flops(device: Any, dtype: str) -> Optional[int]:
    """The device's theoretical FLOPs for `dtype`, when known (CUDA A100/H100/H200 only); else None."""
    if device.type != "cuda":
        return None
    import torch

    chip = torch.cuda.get_device_name(device).lower()
    name = next((k for k in _CUDA_FLOPS if k in chip), None)
    if name is None:
        rank_zero_warn(f"FLOPs not found for {chip!r}")
        return None
    if dtype == "float32" and torch.get_float32_matmul_precision() != "highest":
        dtype = "tfloat32"
    return int(_CUDA_FLOPS[name][dtype])


class _MonotonicWindow(List[Any]):
    """The last `maxlen` values, each larger than the one before (Lightning's check on the user's counters)."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def append(self, x: Any) -> None:
        if self and self[-1] >= x:
            raise ValueError(f"Expected the value to increase, last: {self[-1]}, current: {x}")
        list.append(self, x)
        if len(self) > self.maxlen:
            del self[0]


class Throughput:
    """Throughput over a rolling window of the `window_size` latest `update`s (Lightning's keys)."""

    def __init__(self, available_flops: Optional[float] = None, world_size: int = 1, window_size: int = 100,
                 separator: str = "/") -> None:
        self.available_flops = available_flops
        self.separator = separator
        if not world_size > 0:
            raise MisconfigurationException(f"`Throughput(world_size={world_size!r})` must be an int >= 1")
        self.world_size = world_size
        # Rates are differences between the window's first and last values: two at least.
        if not window_size > 1:
            raise MisconfigurationException(f"`Throughput(window_size={window_size!r})` must be an int >= 2")
        self._time = _MonotonicWindow(window_size)
        self._batches = _MonotonicWindow(window_size)
        self._samples = _MonotonicWindow(window_size)
        self._lengths = _MonotonicWindow(window_size)
        self._flops: Deque[float] = deque(maxlen=window_size)

    def update(self, *, time: float, batches: int, samples: int, lengths: Optional[int] = None,
               flops: Optional[float] = None) -> None:
        self._time.append(time)
        if samples < batches:
            raise ValueError(f"Expected samples ({samples}) to be greater or equal than batches ({batches})")
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            if lengths < samples:
                raise ValueError(f"Expected lengths ({lengths}) to be greater or equal than samples ({samples})")
            self._lengths.append(lengths)
            if len(self._samples) != len(self._lengths):
                raise RuntimeError(f"If lengths are passed ({len(self._lengths)}), there needs to be the same number"
                                   f" of samples ({len(self._samples)})")
        if flops is not None:
            self._flops.append(flops * self.world_size)  # summed over ranks

    def compute(self) -> Dict[str, Union[int, float]]:
        sep, ws = self.separator, self.world_size
        metrics: Dict[str, Union[int, float]] = {"time": self._time[-1], "batches": self._batches[-1],
                                                 "samples": self._samples[-1]}
        if self._lengths:
            metrics["lengths"] = self._lengths[-1]
        many = ws > 1
        if len(self._time) == self._time.maxlen:
            elapsed = self._time[-1] - self._time[0]
            batches_ps = (self._batches[-1] - self._batches[0]) / elapsed
            samples_ps = (self._samples[-1] - self._samples[0]) / elapsed
            metrics[f"device{sep}batches_per_sec"] = batches_ps
            metrics[f"device{sep}samples_per_sec"] = samples_ps
            if many:
                metrics["batches_per_sec"] = batches_ps * ws
                metrics["samples_per_sec"] = samples_ps * ws
            if len(self._lengths) == self._lengths.maxlen:
                items_ps = (self._lengths[-1] - self._lengths[0]) / elapsed
                metrics[f"device{sep}items_per_sec"] = items_ps
                if many:
                    metrics["items_per_sec"] = items_ps * ws
        if len(self._flops) == self._flops.maxlen:
            flops_ps = (sum(self._flops) - self._flops[0]) / (self._time[-1] - self._time[0])
            if many:
                metrics["flops_per_sec"] = flops_ps
            metrics[f"device{sep}flops_per_sec"] = flops_ps / ws
            if self.available_flops:
                metrics[f"device{sep}mfu"] = flops_ps / ws / self.available_flops
        return metrics

    def reset(self) -> None:
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()


class ThroughputMonitor(Callback):
    """`batch_size_fn(batch)`: the samples in a batch; `length_fn(batch)`: the items in it (tokens,
    ...). `**kwargs` go to `Throughput` (`window_size`, `separator`). Assumes a fixed batch size."""

    def __init__(self, batch_size_fn: Callable[[Any], int], length_fn: Optional[Callable[[Any], int]] = None,
                 **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.available_flops: Optional[int] = None
        self._throughputs: Dict[RunningStage, Throughput] = {}
        self._t0s: Dict[RunningStage, float] = {}
        self._lengths: Dict[RunningStage, int] = {}
        self._samples: Dict[RunningStage, int] = {}
        self._batches: Dict[RunningStage, int] = {}
        self._module_has_flops: Optional[bool] = None
        # Evaluation batches: in the running loop (`current`), and over the Trainer's life (`total`,
        # which a fit's validation restarts), as Lightning's loops count them.
        self._current: Dict[RunningStage, int] = {}
        self._total: Dict[Any, int] = {}
        self._cuda = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        device = trainer.strategy.root_device
        self._cuda = device.type == "cuda"
        self.available_flops = get_available_flops(device, _compute_dtype(str(trainer.precision)))
        if stage == TrainerFn.FITTING and trainer.enable_validation:
            self._throughputs[RunningStage.VALIDATING] = self._new_throughput(trainer)
        running = _running_stage(trainer, stage)
        self._throughputs[running] = self._new_throughput(trainer)

    def _new_throughput(self, trainer: Any) -> Throughput:
        return Throughput(available_flops=self.available_flops, world_size=trainer.world_size, **self.kwargs)

    def _start(self, trainer: Any, stage: RunningStage) -> None:
        if trainer.state.fn == TrainerFn.FITTING or stage not in self._samples:
            self._throughputs[stage].reset()
            self._lengths[stage] = 0
            self._samples[stage] = 0
            self._batches[stage] = 0
        self._current[stage] = 0
        key = (str(trainer.state.fn), stage)  # a fit's validation loop is not `validate`'s
        if stage != RunningStage.TRAINING and (trainer.state.fn == TrainerFn.FITTING or key not in self._total):
            self._total[key] = 0
        self._t0s[stage] = time.perf_counter()

    def _update(self, pl_module: Any, batch: Any, stage: RunningStage) -> None:
        import torch

        if self._cuda:
            torch.cuda.synchronize()  # or the clock would not include the queued work
        elapsed = time.perf_counter() - self._t0s[stage]
        with torch.inference_mode():  # in case `length_fn` or `batch_size_fn` builds graphs
            if self.length_fn is not None:
                self._lengths[stage] += self.length_fn(batch)
            if self._module_has_flops is None:
                self._module_has_flops = hasattr(pl_module, "flops_per_batch")
                if not self._module_has_flops:
                    rank_zero_warn(
                        "When using the `ThroughputMonitor`, you need to define a `flops_per_batch` attribute or"
                        f" property in {type(pl_module).__name__} to compute the FLOPs."
                    )
            flops = pl_module.flops_per_batch if self._module_has_flops else None
            self._samples[stage] += self.batch_size_fn(batch)
        self._batches[stage] += 1
        self._throughputs[stage].update(
            time=elapsed, batches=self._batches[stage], samples=self._samples[stage],
            lengths=None if self.length_fn is None else self._lengths[stage], flops=flops,
        )

    def _compute(self, trainer: Any, stage: RunningStage, step: Optional[int]) -> None:
        throughput = self._throughputs[stage]
        metrics = {f"{stage.value}{throughput.separator}{k}": v for k, v in throughput.compute().items()}
        if step is None:  # training: the Trainer's step, with `epoch` added as for `self.log`
            trainer._log_to_loggers(metrics, trainer._schedule.batches_that_stepped)
            return
        trainer._logged_metrics.update(_as_tensors(metrics))
        for lg in trainer.loggers:
            lg.log_metrics(metrics=metrics, step=step)
            lg.save()

    def _eval_batch_end(self, trainer: Any, pl_module: Any, batch: Any, stage: RunningStage) -> None:
        if not trainer.is_global_zero:
            return
        self._current[stage] += 1
        key = (str(trainer.state.fn), stage)
        self._total[key] += 1
        self._update(pl_module, batch, stage)
        # Lightning's `should_update_logs` for evaluation: the batches of the running loop.
        n = trainer.log_every_n_steps
        if n and (self._current[stage] % n == 0 or trainer.should_stop):
            self._compute(trainer, stage, self._total[key])

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, RunningStage.TRAINING)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self._update(pl_module, batch, RunningStage.TRAINING)
        # Log once the accumulation is over, so that the optimizer step is in the measured time.
        ready = batch_idx + 1
        final = trainer.is_last_batch or ready == trainer.num_training_batches
        if ready % trainer.accumulate_grad_batches != 0 and not final:
            return
        n = trainer.log_every_n_steps
        if n and ((trainer._schedule.batches_that_stepped + 1) % n == 0 or trainer.should_stop):
            self._compute(trainer, RunningStage.TRAINING, None)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._start(trainer, RunningStage.VALIDATING)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        self._eval_batch_end(trainer, pl_module, batch, RunningStage.VALIDATING)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or not trainer.is_global_zero:
            return
        train_times = self._throughputs[RunningStage.TRAINING]._time
        val_times = self._throughputs[RunningStage.VALIDATING]._time
        train_elapsed = train_times[-1] if train_times else 0.0
        val_elapsed = val_times[-1] if val_times else 0.0
        # Shift the training clock past the validation run, so it does not count as training time.
        gap = self._t0s[RunningStage.VALIDATING] - (self._t0s[RunningStage.TRAINING] + train_elapsed)
        self._t0s[RunningStage.TRAINING] += gap + val_elapsed

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, RunningStage.TESTING)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, pl_module, batch, RunningStage.TESTING)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, RunningStage.PREDICTING)

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, pl_module, batch, RunningStage.PREDICTING)


def _running_stage(trainer: Any, stage: str) -> RunningStage:
    return {"fit": RunningStage.TRAINING, "validate": RunningStage.VALIDATING, "test": RunningStage.TESTING,
            "predict": RunningStage.PREDICTING}[str(getattr(stage, "value", stage))]


def _as_tensors(metrics: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    return {k: torch.tensor(v) for k, v in metrics.items()}
