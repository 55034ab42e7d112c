"""The loop profiler (`ferrotrain.profilers`, `_core.PhaseTimer`): phase times add up to the step
time measured from outside, profiling off leaves the plain bound hooks, the report is printed or
saved, and `profiler="pytorch"` saves torch.profiler's table and trace under the log dir."""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

import pytest
import torch

import ferrotrain as L
from ferrotrain import _core
from ferrotrain.errors import ConfigTypeError
from ferrotrain.loggers import CSVLogger
from ferrotrain.profilers import PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler
from tests.conftest import BoringModel
from tests.lightning_ref import loader

STEP_SLEEP = 0.003
HOOK_SLEEP = 0.001


class Sleepy(BoringModel):
    """Each training step takes at least 3 ms, so the loop's own microseconds are a small part."""

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_SLEEP)
        return super().training_step(batch, batch_idx)


class EpochClock(L.Callback):
    """Wall time of the epochs' batch loops, measured outside the profiler: from the end of
    `on_train_epoch_start` to the start of `on_train_epoch_end`."""

    def __init__(self) -> None:
        self.total = 0.0
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.total += time.perf_counter() - self._t0


class SlowBatchEnd(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(HOOK_SLEEP)


def _fit(quiet, profiler, callbacks=(), model=None, **kwargs):
    trainer = L.Trainer(profiler=profiler, callbacks=list(callbacks), **{"max_epochs": 2, **quiet, **kwargs})
    model = model if model is not None else Sleepy()
    trainer.fit(model, loader(24, batch_size=2, seed=0))
    return trainer, model


def test_phase_times_add_up_to_the_measured_step_time(quiet, caplog) -> None:
    clock = EpochClock()
    profiler = SimpleProfiler()
    trainer, model = _fit(quiet, profiler, [clock, SlowBatchEnd()], gradient_clip_val=0.5)
    steps = 24
    assert profiler.steps == steps
    phases = profiler.phase_times()
    in_steps = sum(p["in_step"] for p in phases.values())
    # By construction the phases and the overhead partition the step time.
    assert in_steps + profiler.overhead == pytest.approx(profiler.step_time, rel=1e-6)
    # Against the clock outside: the steps, with the epochs' data fetcher start and close (and the
    # last, empty fetch), are the epochs' batch loops, within a few percent.
    epoch_parts = sum(phases[n]["outside"] for n in ("[loop] start data fetcher", "[loop] close data fetcher",
                                                      "[loop] wait for data"))
    assert profiler.step_time <= clock.total
    assert profiler.step_time + epoch_parts == pytest.approx(clock.total, rel=0.05)
    step = phases["[LightningModule]Sleepy.training_step"]
    assert step["calls"] == steps
    assert step["in_step"] >= steps * STEP_SLEEP
    hook = phases["[Callback]SlowBatchEnd.on_train_batch_end"]
    assert hook["calls"] == steps and hook["in_step"] >= steps * HOOK_SLEEP
    for name in ("[loop] wait for data", "[Strategy]backward", "[Strategy]optimizer_step",
                 "[Strategy]zero_grad", "[Strategy]clip_gradients"):
        assert phases[name]["calls"] == steps, name
    # Hooks outside the steps are timed, and kept out of the step sums.
    epoch_end = phases["[Callback]EpochClock.on_train_epoch_end"]
    assert epoch_end["calls"] == 2 and epoch_end["in_step"] == 0
    out = caplog.text
    assert "Loop overhead:" in out and "% of step" in out and "[Strategy]backward" in out


def test_profiler_off_leaves_the_plain_bound_hooks(quiet) -> None:
    cb = SlowBatchEnd()
    trainer, model = _fit(quiet, None, [cb], max_epochs=1)
    assert isinstance(trainer.profiler, PassThroughProfiler)
    hooks = trainer._hooks
    (f,) = hooks.cb["on_train_batch_end"]
    assert inspect.ismethod(f) and f.__self__ is cb and not hasattr(f, "__wrapped__")
    step = trainer._fit_loop.step
    assert inspect.ismethod(step.training_step) and step.training_step.__self__ is model
    for name in ("_backward", "_zero_grad", "after_closure", "run"):
        assert name not in vars(step), name
    assert trainer._fit_loop._timer is None
    assert inspect.ismethod(trainer._fit_loop._transfer)


def test_profiler_on_wraps_hooks_at_plan_time(quiet, capsys) -> None:
    cb = SlowBatchEnd()
    trainer, _ = _fit(quiet, "simple", [cb], max_epochs=1)
    assert isinstance(trainer.profiler, SimpleProfiler)
    (f,) = trainer._hooks.cb["on_train_batch_end"]
    assert f.__wrapped__ == cb.on_train_batch_end
    assert "_backward" in vars(trainer._fit_loop.step)


def test_user_code_times_its_own_sections(quiet, capsys) -> None:
    class Sections(BoringModel):
        def training_step(self, batch, batch_idx):
            with self.trainer.profiler.profile("my_section"):
                time.sleep(0.01)
            return super().training_step(batch, batch_idx)

    profiler = SimpleProfiler()
    _fit(quiet, profiler, model=Sections(), max_epochs=1)
    mine = profiler.phase_times()["my_section"]
    assert mine["calls"] == 12 and mine["in_step"] >= 12 * 0.01
    # Exclusive time: the section's 10 ms are not counted again in training_step.
    assert profiler.phase_times()["[LightningModule]Sections.training_step"]["in_step"] < 12 * 0.005


def test_passthrough_profiler_profile_is_a_no_op(quiet) -> None:
    class Sections(BoringModel):
        def training_step(self, batch, batch_idx):
            with self.trainer.profiler.profile("nothing") as name:
                assert name == "nothing"
            return super().training_step(batch, batch_idx)

    _fit(quiet, None, model=Sections(), max_epochs=1)


def test_report_goes_to_a_file_in_the_log_dir(tmp_path, caplog) -> None:
    profiler = SimpleProfiler(filename="perf")
    trainer = L.Trainer(max_epochs=1, profiler=profiler, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel(), loader(8, batch_size=2))
    path = os.path.join(trainer.log_dir, "fit-perf.txt")
    text = Path(path).read_text(encoding="utf-8")
    assert "Loop overhead:" in text and "[LightningModule]BoringModel.training_step" in text
    assert "Loop overhead:" not in caplog.text
    dirpath = tmp_path / "elsewhere"
    profiler = SimpleProfiler(dirpath=dirpath, filename="perf")
    L.Trainer(max_epochs=1, profiler=profiler, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, default_root_dir=tmp_path).fit(BoringModel(), loader(8, batch_size=2))
    assert (dirpath / "fit-perf.txt").is_file()


def test_pytorch_profiler_saves_its_trace_under_the_log_dir(tmp_path, caplog) -> None:
    trainer = L.Trainer(max_epochs=1, profiler="pytorch", logger=CSVLogger(tmp_path), enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel(), loader(8, batch_size=2))
    assert isinstance(trainer.profiler, PyTorchProfiler)
    table = Path(trainer.log_dir, "fit-pytorch.txt").read_text(encoding="utf-8")
    assert "Self CPU" in table
    with open(os.path.join(trainer.log_dir, "fit-pytorch.pt.trace.json"), encoding="utf-8") as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert "[LightningModule]BoringModel.training_step" in names
    assert "[Strategy]backward" in names
    assert "Loop overhead:" in caplog.text


def test_pytorch_profiler_stops_when_fit_raises(tmp_path) -> None:
    class Boom(BoringModel):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    profiler = PyTorchProfiler(dirpath=tmp_path)
    trainer = L.Trainer(max_epochs=1, profiler=profiler, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), loader(8, batch_size=2))
    assert profiler._torch_profiler is None
    # A profiler of torch's own can run afterwards: the one from fit is closed.
    with torch.profiler.profile():
        torch.ones(2) + 1


def test_profiler_argument_checks() -> None:
    with pytest.raises(ConfigTypeError, match="profiler"):
        L.Trainer(profiler=3)
    assert isinstance(L.Trainer(profiler=SimpleProfiler()).profiler, SimpleProfiler)
    assert issubclass(PyTorchProfiler, Profiler)


def test_phase_timer_exclusive_time() -> None:
    t = _core.PhaseTimer()
    outer, inner = t.phase("outer"), t.phase("inner")
    t.begin_step()
    t.enter(outer)
    t.enter(inner)
    time.sleep(0.01)
    t.exit()
    t.exit()
    t.end_step()
    (_, c_out, out_ns, _), (_, c_in, in_ns, _) = t.stats()
    assert (c_out, c_in, t.steps) == (1, 1, 1)
    assert in_ns >= 10_000_000 and out_ns < 5_000_000
    assert out_ns + in_ns + t.overhead_ns == t.step_ns
