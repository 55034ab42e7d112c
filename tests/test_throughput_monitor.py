"""`ThroughputMonitor` and `Throughput`: which keys are logged at which steps, for fit (train and
validation), test, predict and a standalone validate (pinned to Lightning 2.x through
`lightning_ref.check`). The values are times, so only the counters are compared; the rates are
checked for consistency (positive, samples = batches * batch size)."""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any

import pytest

from tests.lightning_ref import QUIET, check, is_lightning, loader, memory_logger, model_class

# The models here mostly have no `flops_per_batch`: the warning about it is checked once, below.
pytestmark = pytest.mark.filterwarnings("ignore:When using the `ThroughputMonitor`:UserWarning")

COUNTS = ("batches", "samples", "lengths", "epoch")


def _cbs(L: Any) -> Any:
    return importlib.import_module("lightning.pytorch.callbacks" if is_lightning(L) else "ferrotrain.callbacks")


def _throughput_class(L: Any) -> Any:
    if is_lightning(L):
        from lightning.fabric.utilities.throughput import Throughput
    else:
        from ferrotrain.callbacks.throughput_monitor import Throughput
    return Throughput


def _model(L: Any, flops: bool = False) -> Any:
    class Model(model_class(L)):  # type: ignore[misc,valid-type]
        def test_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            return self(batch[0])

    if flops:
        Model.flops_per_batch = 10  # type: ignore[attr-defined]
    return Model()


def _monitor(L: Any, **kwargs: Any) -> Any:
    return _cbs(L).ThroughputMonitor(batch_size_fn=lambda b: b[0].shape[0], **kwargs)


def _summary(calls: Any) -> Any:
    return [(step, sorted(m), {k: v for k, v in m.items() if k.endswith(COUNTS)}) for step, m in calls]


def _fit_test_predict(L: Any) -> Any:
    lg = memory_logger(L)
    t = L.Trainer(**{**QUIET, "logger": lg, "max_epochs": 2, "log_every_n_steps": 2,
                     "callbacks": [_monitor(L, length_fn=lambda b: 3 * b[0].shape[0], window_size=2)]})
    m = _model(L)
    t.fit(m, loader(10, 2), loader(6, 2))
    runs = {"fit": list(lg.calls)}
    lg.calls.clear()
    t.test(m, loader(6, 2), verbose=False)
    t.test(m, loader(6, 2), verbose=False)
    runs["test"] = list(lg.calls)
    lg.calls.clear()
    t.predict(m, loader(8, 2))
    runs["predict"] = list(lg.calls)
    return runs


def _keys(stage: str, epoch: bool = True, items: bool = True, rates: bool = True, flops: bool = False) -> Any:
    keys = ["batches", "samples", "time"]
    if items:
        keys.append("lengths")
    if rates:
        keys += ["device/batches_per_sec", "device/samples_per_sec"] + (["device/items_per_sec"] if items else [])
        keys += ["device/flops_per_sec"] if flops else []
    out = [f"{stage}/{k}" for k in keys] + (["epoch"] if epoch else [])
    return sorted(out)


def _counts(stage: str, batches: int, bs: int = 2, items: bool = True, epoch: Any = None) -> Any:
    out = {f"{stage}/batches": batches, f"{stage}/samples": batches * bs}
    if items:
        out[f"{stage}/lengths"] = 3 * batches * bs
    if epoch is not None:
        out["epoch"] = epoch
    return out


def test_keys_and_steps_for_fit_test_and_predict():
    def scenario(L: Any) -> Any:
        return {k: _summary(v) for k, v in _fit_test_predict(L).items()}

    tr, va, te, pr = _keys("train"), _keys("validate", epoch=False), _keys("test", epoch=False), _keys("predict", epoch=False)
    # Training logs on logging steps (at the step count before the batch is counted), with
    # `epoch`; the training counters run on over epochs. Each fit validation restarts its counters
    # and steps; tests keep counting across `test` calls; evaluation logs on its own batch count.
    check(scenario, {
        "fit": [
            (1, tr, _counts("train", 2, epoch=0)), (3, tr, _counts("train", 4, epoch=0)),
            (2, va, _counts("validate", 2)),
            (5, tr, _counts("train", 6, epoch=1)), (7, tr, _counts("train", 8, epoch=1)),
            (9, tr, _counts("train", 10, epoch=1)),
            (2, va, _counts("validate", 2)),
        ],
        "test": [(2, te, _counts("test", 2)), (5, te, _counts("test", 5))],
        "predict": [(2, pr, _counts("predict", 2)), (4, pr, _counts("predict", 4))],
    })


def test_accumulation_window_flops_and_standalone_validate():
    def scenario(L: Any) -> Any:
        lg = memory_logger(L)
        t = L.Trainer(**{**QUIET, "logger": lg, "max_epochs": 1, "log_every_n_steps": 1, "accumulate_grad_batches": 2,
                         "limit_val_batches": 3, "callbacks": [_monitor(L, window_size=3)]})
        m = _model(L, flops=True)
        t.fit(m, loader(14, 2), loader(8, 2))
        t.validate(m, loader(6, 2), verbose=False)
        return _summary(lg.calls)

    def tr(rates: bool) -> Any:
        return _keys("train", items=False, rates=rates, flops=True)

    def va(rates: bool) -> Any:
        return _keys("validate", epoch=False, items=False, rates=rates, flops=True)

    # Logged once per optimizer step (and on the epoch's last batch); rates once the window of 3 is full.
    check(scenario, [
        (0, tr(False), _counts("train", 2, items=False, epoch=0)),
        (1, tr(True), _counts("train", 4, items=False, epoch=0)),
        (2, tr(True), _counts("train", 6, items=False, epoch=0)),
        (3, tr(True), _counts("train", 7, items=False, epoch=0)),
        (1, va(False), _counts("validate", 1, items=False)),
        (2, va(False), _counts("validate", 2, items=False)),
        (3, va(True), _counts("validate", 3, items=False)),
        # A standalone validate has its own step count, but the callback's sample counters go on.
        (1, va(False), _counts("validate", 4, items=False)),
        (2, va(False), _counts("validate", 5, items=False)),
        (3, va(True), _counts("validate", 6, items=False)),
    ])


def test_rates_are_consistent():
    runs = _fit_test_predict(importlib.import_module("ferrotrain"))
    for calls in runs.values():
        last_time = {}
        for _, m in calls:
            stage = next(k.split("/")[0] for k in m if k != "epoch")
            bps, sps, ips = (m[f"{stage}/device/{k}_per_sec"] for k in ("batches", "samples", "items"))
            assert bps > 0 and math.isclose(sps, 2 * bps, rel_tol=1e-3) and math.isclose(ips, 3 * sps, rel_tol=1e-3)
            assert m[f"{stage}/time"] > 0
            if stage == "train":  # evaluation restarts its clock with every run
                assert m[f"{stage}/time"] > last_time.get(stage, 0.0)
            last_time[stage] = m[f"{stage}/time"]


def test_no_logging_without_logging_steps_or_logger():
    def scenario(L: Any) -> Any:
        lg = memory_logger(L)
        t = L.Trainer(**{**QUIET, "logger": lg, "max_epochs": 1, "log_every_n_steps": 0, "callbacks": [_monitor(L)]})
        t.fit(_model(L), loader(6, 2), loader(4, 2))
        quiet = L.Trainer(**{**QUIET, "max_epochs": 1, "log_every_n_steps": 1, "callbacks": [_monitor(L)]})
        quiet.fit(_model(L), loader(6, 2), loader(4, 2))
        return lg.calls, quiet.global_step

    check(scenario, ([], 3))


def test_warns_without_flops_per_batch():
    def scenario(L: Any) -> Any:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            t = L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [_monitor(L)]})
            t.fit(_model(L), loader(4, 2))
        return [str(w.message) for w in seen if "flops_per_batch" in str(w.message)]

    check(scenario, ["When using the `ThroughputMonitor`, you need to define a `flops_per_batch` attribute or property"
                     " in Model to compute the FLOPs."])


def test_throughput_windows_and_world_size():
    def scenario(L: Any) -> Any:
        T = _throughput_class(L)
        tp = T(available_flops=100, world_size=2, window_size=2, separator="|")
        out = []
        for i in range(1, 4):
            tp.update(time=float(i), batches=i, samples=4 * i, lengths=8 * i, flops=5)
            out.append(tp.compute())
        errors = []
        for kwargs in (dict(time=3.0, batches=4, samples=16), dict(time=4.0, batches=4, samples=3),
                       dict(time=5.0, batches=5, samples=20, lengths=10)):
            with pytest.raises(ValueError) as err:
                tp.update(**kwargs)
            errors.append(str(err.value))
        tp.reset()
        tp.update(time=1.0, batches=1, samples=1)
        out.append(tp.compute())
        return out, errors

    check(scenario, ([
        {"time": 1.0, "batches": 1, "samples": 4, "lengths": 8},
        {"time": 2.0, "batches": 2, "samples": 8, "lengths": 16, "device|batches_per_sec": 1.0,
         "device|samples_per_sec": 4.0, "batches_per_sec": 2.0, "samples_per_sec": 8.0, "device|items_per_sec": 8.0,
         "items_per_sec": 16.0, "flops_per_sec": 10.0, "device|flops_per_sec": 5.0, "device|mfu": 0.05},
        {"time": 3.0, "batches": 3, "samples": 12, "lengths": 24, "device|batches_per_sec": 1.0,
         "device|samples_per_sec": 4.0, "batches_per_sec": 2.0, "samples_per_sec": 8.0, "device|items_per_sec": 8.0,
         "items_per_sec": 16.0, "flops_per_sec": 10.0, "device|flops_per_sec": 5.0, "device|mfu": 0.05},
        {"time": 1.0, "batches": 1, "samples": 1},
    ], [
        "Expected the value to increase, last: 3.0, current: 3.0",
        "Expected samples (3) to be greater or equal than batches (4)",
        "Expected lengths (10) to be greater or equal than samples (20)",
    ]))


def test_only_batch_end_hooks_per_batch():
    from ferrotrain.callbacks import Callback, ModelPruning, ThroughputMonitor

    def per_batch(cls: Any) -> Any:
        return sorted(n for n in dir(Callback) if "batch" in n and n.startswith("on_")
                      and getattr(cls, n) is not getattr(Callback, n))

    assert per_batch(ThroughputMonitor) == ["on_predict_batch_end", "on_test_batch_end", "on_train_batch_end",
                                            "on_validation_batch_end"]
    assert per_batch(ModelPruning) == []
