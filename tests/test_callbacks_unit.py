"""The everyday callbacks, driven hook by hook with a small stand-in for the Trainer (an object that
holds the attributes each callback reads). Real optimizers, modules, loggers and files throughout;
the end-to-end runs through the real Trainer live with the Trainer's tests."""

from __future__ import annotations

import io
import math
import os
import re
import sys
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ferrotrain.callbacks import (
    Callback,
    EarlyStopping,
    GradientAccumulationScheduler,
    LambdaCallback,
    LearningRateMonitor,
    ModelSummary,
    OnExceptionCheckpoint,
    ProgressBar,
    TQDMProgressBar,
    Timer,
)
from ferrotrain.callbacks.callback import is_overridden
from ferrotrain.callbacks.early_stopping import EarlyStoppingReason
from ferrotrain.callbacks.model_summary import get_human_readable_count, summarize
from ferrotrain.callbacks.progress import format_meter, format_num, format_postfix
from ferrotrain.callbacks.timer import parse_duration
from ferrotrain.errors import ConfigTypeError, MisconfigurationException
from ferrotrain.loggers import CSVLogger


class _Terminal(io.StringIO):
    """Captured output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class _FakeTrainer:
    """Just the attributes the progress bar reads; counts reads of `progress_bar_metrics`."""

    def __init__(self, num_training_batches=20, num_val_batches=(5,), fn="fit", loggers=()):
        self.current_epoch = 0
        self.global_step = 0
        self.max_epochs = 1
        self.max_steps = -1
        self.num_training_batches = num_training_batches
        self.num_val_batches = list(num_val_batches)
        self.num_sanity_val_batches = [2]
        self.num_test_batches = [4]
        self.num_predict_batches = [3]
        self.sanity_checking = False
        self.state = SimpleNamespace(fn=fn, stage=None)
        self.is_global_zero = True
        self.loggers = list(loggers)
        self.metric_reads = 0
        self._metrics = {"train_loss": 0.5}

    @property
    def progress_bar_metrics(self):
        self.metric_reads += 1
        return dict(self._metrics)


def _run_train_epoch(bar, trainer, n):
    bar.on_train_epoch_start(trainer, None)
    for i in range(n):
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_train_epoch_end(trainer, None)


def _segments(text):
    """The successive redraws of a carriage-return bar."""
    return [s for s in text.replace("\n", "\r").split("\r") if s.strip()]


# --- progress bar: text ----------------------------------------------------------------------------


def test_meter_text_matches_lightning_layout():
    line = format_meter("Epoch 3", 47, 128, 1.14, "v_num=0, train_loss=0.123")
    assert line == "Epoch 3:  37%|###       | 47/128 [00:01<00:01, 41.23it/s, v_num=0, train_loss=0.123]"
    assert format_meter("Epoch 0", 0, 10, 0.0) == "Epoch 0:   0%|          | 0/10 [00:00<?, ?it/s]"
    assert format_meter("Epoch 0", 10, 10, 125.0) == "Epoch 0: 100%|##########| 10/10 [02:05<00:00,  0.08it/s]"


def test_meter_with_unknown_total_and_fixed_width():
    assert format_meter("Epoch 1", 47, math.inf, 2.0, "v_num=1") == "Epoch 1: |          | 47/? [00:02<?, 23.50it/s, v_num=1]"
    line = format_meter("Validation DataLoader 0", 3, 12, 1.0, ncols=80, unicode=True)
    assert len(line) == 80
    assert line.startswith("Validation DataLoader 0:  25%|") and line.endswith("| 3/12 [00:01<00:03,  3.00it/s]")
    assert "█" in line


def test_metric_numbers_are_padded_like_lightning():
    assert [format_num(v) for v in (0.1, 1.0, 0.123456, 1e-5, -0.5, 3, 12345, 10**6)] == [
        "0.100", "1.000", "0.123", "1e-5", "-0.50", "3", "12345", "1e+6",
    ]
    assert format_postfix({"v_num": 0, "loss": torch.tensor(0.25), "tag": "a"}) == "v_num=0, loss=0.250, tag=a"


# --- progress bar: behaviour -----------------------------------------------------------------------


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run_timed_epoch(bar, trainer, n, clock, seconds_per_batch):
    bar.on_train_epoch_start(trainer, None)
    for i in range(n):
        clock.now += seconds_per_batch
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_train_epoch_end(trainer, None)


def _line_counts(text):
    return [re.search(r"\| (\d+/\d+) \[", line).group(1) for line in text.splitlines()]


def _log_file_bar(monkeypatch, batches):
    """A default bar writing to a captured log file (not a terminal), on a clock the test moves."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    clock = _Clock()
    monkeypatch.setattr("ferrotrain.callbacks.progress.clock.monotonic", clock)
    trainer = _FakeTrainer(num_training_batches=batches)
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    return out, clock, trainer, bar


def test_bar_not_a_terminal_prints_lines_every_tenth_at_most_once_a_second(monkeypatch):
    out, clock, trainer, bar = _log_file_bar(monkeypatch, 20)
    # 10% of 20 batches is 2; a batch takes 0.3 s, so the 10% marks come every 0.6 s and a line is
    # printed at the first mark at least 1 s after the previous line: 4, 8, 12, 16, then the end.
    _run_timed_epoch(bar, trainer, 20, clock, 0.3)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert _line_counts(out.getvalue()) == ["4/20", "8/20", "12/20", "16/20", "20/20"]
    assert lines[-1].startswith("Epoch 0: 100%|##########| 20/20 [")
    assert lines[-1].endswith(", train_loss=0.500]")
    assert trainer.metric_reads == len(lines)  # metrics are read only for a line that is printed
    # Slow batches: every 10% mark gets its line.
    out.seek(0)
    out.truncate()
    trainer.current_epoch = 1
    _run_timed_epoch(bar, trainer, 20, clock, 1.0)
    assert _line_counts(out.getvalue()) == [f"{n}/20" for n in range(2, 21, 2)]
    # A fast epoch (well under a second) prints only its end line.
    out.seek(0)
    out.truncate()
    trainer.current_epoch = 2
    _run_timed_epoch(bar, trainer, 20, clock, 0.001)
    bar.on_train_end(trainer, None)
    assert _line_counts(out.getvalue()) == ["20/20"]


def test_bar_not_a_terminal_prints_a_line_every_30_s_between_marks(monkeypatch):
    out, clock, trainer, bar = _log_file_bar(monkeypatch, 1000)
    bar.on_train_epoch_start(trainer, None)
    for i in range(60):  # 12.5 s a batch: the 10% mark (batch 100) is far away
        clock.now += 12.5
        bar.on_train_batch_end(trainer, None, None, None, i)
    # Lines once 30 s passed since the previous one: at 37.5 s, 75 s, ...: every 3rd batch.
    assert _line_counts(out.getvalue())[:3] == ["3/1000", "6/1000", "9/1000"]
    assert len(out.getvalue().splitlines()) == 20


def test_bar_on_a_terminal_redraws_in_place_and_reads_metrics_only_when_drawing(monkeypatch):
    out = _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    trainer = _FakeTrainer(num_training_batches=50)
    bar = TQDMProgressBar(refresh_rate=10)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    _run_train_epoch(bar, trainer, 50)
    bar.on_train_end(trainer, None)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, kept when training ends
    draws = _segments(text)
    # Only every 10th batch may redraw (5 stops), plus the epoch end and the final line.
    assert 3 <= len(draws) <= 7
    assert draws[0].startswith("Epoch 0:  20%|") and " 10/50 [" in draws[0]
    assert draws[-1].startswith("Epoch 0: 100%|") and " 50/50 [" in draws[-1]
    assert draws[-1].endswith(", train_loss=0.500]")
    assert trainer.metric_reads <= 7


def test_bar_redraw_stops_respect_refresh_rate_and_the_last_batch(monkeypatch):
    monkeypatch.setattr("sys.stdout", _Terminal())
    trainer = _FakeTrainer(num_training_batches=25)
    bar = TQDMProgressBar(refresh_rate=10)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    stops = []
    for i in range(25):
        before = bar._train_next
        bar.on_train_batch_end(trainer, None, None, None, i)
        if bar._train_next != before:
            stops.append(i + 1)
    # The first stop is the first multiple of refresh_rate; after it the fast pace of these batches
    # places the next one past the redraw interval, so only the last batch is left.
    assert stops[0] == 10 and stops[-1] == 25
    assert all(n % 10 == 0 or n == 25 for n in stops)


class _CountingClock(_Clock):
    """A clock the test moves, which counts how often the bar reads it."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.now


def _timed_terminal_bar(monkeypatch, batches, refresh_rate=1):
    out = _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    clock = _CountingClock()
    monkeypatch.setattr("ferrotrain.callbacks.progress.clock.monotonic", clock)
    trainer = _FakeTrainer(num_training_batches=batches)
    bar = TQDMProgressBar(refresh_rate=refresh_rate)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    return out, clock, trainer, bar


def test_bar_between_redraws_does_not_read_the_clock_or_the_metrics(monkeypatch):
    # 10,000 batches of 1 ms: 10 s, so about 100 redraws (one each 0.1 s) and about as many
    # clock reads, not one per batch.
    out, clock, trainer, bar = _timed_terminal_bar(monkeypatch, 10_000)
    bar.on_train_epoch_start(trainer, None)
    before = clock.reads
    for i in range(10_000):
        clock.now += 0.001
        bar.on_train_batch_end(trainer, None, None, None, i)
    reads = clock.reads - before
    draws = _segments(out.getvalue())
    assert 80 <= len(draws) <= 110
    assert reads <= 2 * len(draws) + 5  # at a redraw: the stop and the elapsed time
    assert trainer.metric_reads == len(draws)


def test_bar_on_a_terminal_redraws_every_tenth_of_a_second_when_batches_slow_down(monkeypatch):
    out, clock, trainer, bar = _timed_terminal_bar(monkeypatch, 400)
    bar.on_train_epoch_start(trainer, None)
    shown = []
    for i in range(400):
        clock.now += 0.001 if i < 200 else 0.05  # fast, then 50 times slower
        mark = len(out.getvalue())
        bar.on_train_batch_end(trainer, None, None, None, i)
        if len(out.getvalue()) > mark:
            shown.append((i + 1, clock.now))
    slow = [t for n, t in shown if n > 220]
    assert len(slow) >= 40  # 180 batches of 50 ms: 9 s, redrawn about every 0.1 s
    assert max(b - a for a, b in zip(slow, slow[1:])) <= 0.15 + 1e-9


def test_validation_bar_sits_below_the_training_bar_and_vanishes(monkeypatch):
    out = _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    trainer = _FakeTrainer(num_training_batches=4, num_val_batches=[3])
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    for i in range(4):
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_validation_start(trainer, None)
    for i in range(3):
        bar.on_validation_batch_start(trainer, None, None, i, 0)
        bar.on_validation_batch_end(trainer, None, None, None, i, 0)
    mark = len(out.getvalue())
    bar.on_validation_end(trainer, None)
    text = out.getvalue()
    assert "\nValidation DataLoader 0: " in text or "\n\rValidation DataLoader 0: " in text
    assert "\x1b[A" in text  # drawn one line down, cursor moved back up
    tail = text[mark:]
    assert tail.startswith("\n\r" + " " * 10)  # the validation line is wiped ...
    assert "Epoch 0: 100%" in tail  # ... and the training bar redrawn with fresh metrics


def test_validate_stage_not_a_terminal_prints_the_final_line(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    trainer = _FakeTrainer(num_val_batches=[5], fn="validate")
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "validate")
    bar.on_validation_start(trainer, None)
    for i in range(5):
        bar.on_validation_batch_start(trainer, None, None, i, 0)
        bar.on_validation_batch_end(trainer, None, None, None, i, 0)
    bar.on_validation_end(trainer, None)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("Validation DataLoader 0: 100%|##########| 5/5 [")


def test_sanity_check_prints_nothing_when_not_a_terminal(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    trainer = _FakeTrainer()
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")
    trainer.sanity_checking = True
    bar.on_sanity_check_start(trainer, None)
    bar.on_validation_start(trainer, None)
    for i in range(2):
        bar.on_validation_batch_start(trainer, None, None, i, 0)
        bar.on_validation_batch_end(trainer, None, None, None, i, 0)
    bar.on_validation_end(trainer, None)
    bar.on_sanity_check_end(trainer, None)
    assert out.getvalue() == ""


def test_test_bar_per_dataloader(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    trainer = _FakeTrainer(fn="test")
    trainer.num_test_batches = [2, 3]
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "test")
    bar.on_test_start(trainer, None)
    for dl, n in enumerate([2, 3]):
        for i in range(n):
            bar.on_test_batch_start(trainer, None, None, i, dl)
            bar.on_test_batch_end(trainer, None, None, None, i, dl)
    bar.on_test_end(trainer, None)
    finals = [line for line in out.getvalue().splitlines() if "100%" in line]
    assert [f.split(":")[0] for f in finals] == ["Testing DataLoader 0", "Testing DataLoader 1"]


def test_disabled_bar_writes_nothing_and_reads_no_metrics(monkeypatch):
    for make in (lambda: TQDMProgressBar(refresh_rate=0), lambda: TQDMProgressBar()):
        out = _Terminal()
        monkeypatch.setattr("sys.stdout", out)
        trainer = _FakeTrainer()
        bar = make()
        bar.setup(trainer, None, "fit")
        bar.disable()
        assert bar.is_disabled
        bar.on_train_start(trainer, None)
        _run_train_epoch(bar, trainer, 20)
        bar.on_train_end(trainer, None)
        assert out.getvalue() == "" and trainer.metric_reads == 0


def test_bar_is_disabled_off_rank_zero():
    trainer = _FakeTrainer()
    trainer.is_global_zero = False
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")
    assert not bar.is_enabled


def test_get_metrics_adds_logger_version_and_warns_on_clash(tmp_path):
    trainer = _FakeTrainer(loggers=[CSVLogger(tmp_path, version=3)])
    bar = TQDMProgressBar()
    assert bar.get_metrics(trainer, None) == {"v_num": 3, "train_loss": 0.5}
    trainer.loggers.append(CSVLogger(tmp_path, version="abcdef"))
    assert bar.get_metrics(trainer, None)["v_num"] == "cdef"  # "3_abcdef", last 4 characters
    trainer._metrics = {"v_num": 9.0}
    with pytest.warns(UserWarning, match="v_num"):
        assert bar.get_metrics(trainer, None)["v_num"] == 9.0


def test_infinite_epoch_shows_question_marks(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    trainer = _FakeTrainer(num_training_batches=math.inf)
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    _run_train_epoch(bar, trainer, 7)
    assert out.getvalue().splitlines()[-1].startswith("Epoch 0: |          | 7/? [")


def test_print_keeps_the_bar(monkeypatch):
    out = _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    trainer = _FakeTrainer(num_training_batches=4)
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    bar.on_train_batch_end(trainer, None, None, None, 0)
    bar.print("hello", "world")
    text = out.getvalue()
    assert "hello world\n" in text
    assert text.rstrip().split("\r")[-1].startswith("Epoch 0:  25%")


def test_progress_bar_base_totals():
    trainer = _FakeTrainer(num_training_batches=100)
    trainer.max_epochs, trainer.max_steps, trainer.global_step = -1, 130, 90
    bar = ProgressBar()
    bar._trainer = trainer
    assert bar.total_train_batches == 40
    trainer.num_val_batches = [3, 4]
    assert bar.total_val_batches == 7
    with pytest.raises(NotImplementedError):
        bar.disable()


def test_bad_refresh_rate():
    with pytest.raises(MisconfigurationException, match="refresh_rate"):
        TQDMProgressBar(refresh_rate=-1)


# --- EarlyStopping --------------------------------------------------------------------------------


def _es_trainer():
    return SimpleNamespace(
        callback_metrics={}, should_stop=False, current_epoch=0, sanity_checking=False, state=SimpleNamespace(fn="fit")
    )


def _feed(es, values, key="val_loss"):
    """Run one check per value; return the epoch at which the trainer was told to stop, or None."""
    trainer = _es_trainer()
    for epoch, value in enumerate(values):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {key: torch.tensor(value), "other": 1.0}
        es._run_early_stopping_check(trainer)
        if trainer.should_stop:
            return epoch
    return None


def test_early_stopping_patience():
    es = EarlyStopping("val_loss", patience=3)
    assert _feed(es, [1.0, 0.9, 0.95, 0.92, 0.91, 0.5]) == 4
    assert es.stopped_epoch == 4 and es.wait_count == 3
    assert es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert float(es.best_score) == pytest.approx(0.9)
    assert "did not improve in the last 3 records" in es.stopping_reason_message


def test_early_stopping_min_delta_and_max_mode():
    es = EarlyStopping("val_loss", min_delta=0.1, patience=2)
    assert _feed(es, [1.0, 0.95, 0.94, 0.0]) == 2  # improvements of 0.05/0.06 do not count
    es = EarlyStopping("acc", mode="max", patience=1)
    assert _feed(es, [0.5, 0.6, 0.7, 0.65], key="acc") == 3
    assert float(es.best_score) == pytest.approx(0.7)


def test_early_stopping_thresholds_and_non_finite():
    es = EarlyStopping("val_loss", stopping_threshold=0.1, patience=100)
    assert _feed(es, [1.0, 0.5, 0.05]) == 2
    assert es.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD
    es = EarlyStopping("val_loss", divergence_threshold=5.0, patience=100)
    assert _feed(es, [1.0, 3.0, 6.0]) == 2
    assert es.stopping_reason is EarlyStoppingReason.DIVERGENCE_THRESHOLD
    es = EarlyStopping("val_loss", patience=100)
    assert _feed(es, [1.0, float("nan")]) == 1
    assert es.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC
    es = EarlyStopping("val_loss", patience=100, check_finite=False)
    assert _feed(es, [1.0, float("inf")]) is None


def test_early_stopping_missing_metric():
    es = EarlyStopping("val_los")
    with pytest.raises(RuntimeError, match="`val_los` which is not available.*`val_loss`, `other`"):
        _feed(es, [1.0])
    assert _feed(EarlyStopping("val_los", strict=False), [1.0, 1.0, 1.0, 1.0]) is None


def test_early_stopping_bad_mode():
    with pytest.raises(MisconfigurationException, match="'min', 'max'"):
        EarlyStopping("val_loss", mode="minimum")


def test_early_stopping_state_round_trip():
    es = EarlyStopping("val_loss", patience=3)
    _feed(es, [1.0, 2.0, 2.0])
    state = es.state_dict()
    assert state["wait_count"] == 2 and state["patience"] == 3
    assert isinstance(state["best_score"], torch.Tensor) and float(state["best_score"]) == 1.0
    resumed = EarlyStopping("val_loss", patience=3)
    resumed.load_state_dict(state)
    assert _feed(resumed, [3.0]) == 0  # the third check without improvement
    assert resumed.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"


def test_early_stopping_hook_choice():
    trainer = _es_trainer()
    trainer.val_check_interval, trainer.check_val_every_n_epoch = 0.5, 1
    trainer.num_val_batches = [4]
    trainer.callback_metrics = {"val_loss": 1.0}
    es = EarlyStopping("val_loss")
    es.setup(trainer, None, "fit")
    es.on_train_epoch_end(trainer, None)  # validation runs mid-epoch: check after validation only
    assert float(es.best_score) == math.inf
    es.on_validation_end(trainer, None)
    assert float(es.best_score) == 1.0
    trainer.sanity_checking = True
    trainer.callback_metrics = {"val_loss": 0.5}
    es.on_validation_end(trainer, None)
    assert float(es.best_score) == 1.0  # sanity checks never count
    # No validation at all: check at the end of each training epoch.
    trainer = _es_trainer()
    trainer.val_check_interval, trainer.check_val_every_n_epoch, trainer.num_val_batches = 0.5, 1, []
    trainer.callback_metrics = {"train_loss": 2.0}
    es = EarlyStopping("train_loss")
    es.setup(trainer, None, "fit")
    es.on_train_epoch_end(trainer, None)
    assert float(es.best_score) == 2.0


# --- LearningRateMonitor ---------------------------------------------------------------------------


def _params():
    return [nn.Parameter(torch.zeros(2))]


def test_lr_monitor_names_and_logged_values(tmp_path):
    sgd = torch.optim.SGD(_params(), lr=0.1, momentum=0.9)
    adam = torch.optim.Adam([{"params": _params()}, {"params": _params(), "lr": 0.02}], lr=0.01)
    adam2 = torch.optim.Adam(_params(), lr=0.003, weight_decay=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(sgd, step_size=1)
    logger = CSVLogger(tmp_path)
    trainer = SimpleNamespace(
        loggers=[logger],
        optimizers=[sgd, adam, adam2],
        lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler, interval="epoch", frequency=1, name=None)],
        global_step=0,
        should_stop=False,
        log_every_n_steps=1,
        callback_metrics={},
    )
    monitor = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    monitor.on_train_start(trainer)
    assert list(monitor.lrs) == ["lr-SGD", "lr-Adam/pg1", "lr-Adam/pg2", "lr-Adam-1"]
    monitor.on_train_epoch_start(trainer)
    monitor.on_train_batch_start(trainer, None, None, 0)  # logging_interval=None: only step schedulers
    logger.save()
    with open(os.path.join(logger.log_dir, "metrics.csv")) as fp:
        header = fp.readline().strip().split(",")
    assert {"lr-SGD", "lr-SGD-momentum", "lr-Adam/pg2", "lr-Adam-1-weight_decay", "step"} <= set(header)
    # Lightning's rule: an optimizer without a scheduler is logged at every logging point, one with
    # a scheduler at its scheduler's interval only.
    assert monitor.lrs["lr-Adam/pg2"] == [0.02, 0.02]
    assert monitor.lrs["lr-SGD"] == [0.1]
    assert monitor.last_momentum_values["lr-Adam/pg1-momentum"] == 0.9  # betas[0]
    assert trainer.callback_metrics["lr-Adam-1"] == 0.003


def test_lr_monitor_named_scheduler_and_errors():
    sgd = torch.optim.SGD([{"params": _params(), "name": "head"}], lr=0.1)
    trainer = SimpleNamespace(
        loggers=[object()],
        optimizers=[sgd],
        lr_scheduler_configs=[
            SimpleNamespace(scheduler=torch.optim.lr_scheduler.StepLR(sgd, 1), interval="step", frequency=1, name="my-lr")
        ],
    )
    monitor = LearningRateMonitor()
    monitor.on_train_start(trainer)
    assert list(monitor.lrs) == ["my-lr/head"]
    with pytest.raises(MisconfigurationException, match="no logger"):
        LearningRateMonitor().on_train_start(SimpleNamespace(loggers=[]))
    with pytest.raises(MisconfigurationException, match="logging_interval"):
        LearningRateMonitor(logging_interval="batch")


# --- ModelSummary ---------------------------------------------------------------------------------


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.head.weight.requires_grad_(False)
        self.head.eval()

    def forward(self, x):
        return self.head(self.encoder(x))


def test_summary_table_for_a_small_model():
    table = summarize(_Small())
    assert table.splitlines() == [
        "  | Name    | Type       | Params | Mode ",
        "-" * 47,
        "0 | encoder | Sequential | 2.1 K  | train",
        "1 | head    | Linear     | 650    | eval ",
        "-" * 47,
        "2.1 K     Trainable params",
        "640       Non-trainable params",
        "2.8 K     Total params",
        "0.011     Total estimated model params size (MB)",
        "3         Modules in train mode",
        "1         Modules in eval mode",
    ]


def test_summary_depth_sizes_and_precision():
    model = _Small()
    rows = summarize(model, max_depth=-1).splitlines()
    assert [r.split("|")[1].strip() for r in rows[2:6]] == ["encoder", "encoder.0", "encoder.1", "head"]
    assert summarize(model, max_depth=0).splitlines()[1].startswith("---")
    assert "0.006     Total estimated" in summarize(model, precision="bf16-true")
    model.example_input_array = torch.zeros(4, 32)
    with_sizes = summarize(model, max_depth=1)
    assert "In sizes" in with_sizes and "[4, 32]" in with_sizes and "[4, 10]" in with_sizes
    assert model.encoder.training and not model.head.training  # modes restored after the example run
    with pytest.raises(ValueError, match="max_depth"):
        summarize(model, max_depth=-2)


def test_human_readable_counts():
    assert [get_human_readable_count(n) for n in (0, 123, 1234, 2e6, 3e9, 4e14, 5e15)] == [
        "0  ", "123  ", "1.2 K", "2.0 M", "3.0 B", "400 T", "5,000 T",
    ]


def test_model_summary_callback_logs_at_fit_start(caplog):
    trainer = SimpleNamespace(is_global_zero=True, precision="32-true")
    ModelSummary().on_fit_start(trainer, _Small())
    assert "0 | encoder | Sequential | 2.1 K  | train" in caplog.text
    caplog.clear()
    ModelSummary(max_depth=0).on_fit_start(trainer, _Small())
    assert caplog.text == ""


# --- Timer ----------------------------------------------------------------------------------------


def test_timer_duration_formats():
    assert parse_duration("00:12:00:00") == 12 * 3600
    assert parse_duration("1:00:00:30") == 86400 + 30
    assert parse_duration(timedelta(minutes=2)) == 120
    assert parse_duration({"weeks": 1, "days": 1}) == 8 * 86400
    assert parse_duration(None) is None
    with pytest.raises(MisconfigurationException, match="DD:HH:MM:SS"):
        Timer("12:00")
    with pytest.raises(MisconfigurationException, match="timedelta"):
        Timer({"fortnights": 1})
    with pytest.raises(ConfigTypeError):
        Timer(3600)
    with pytest.raises(MisconfigurationException, match="interval"):
        Timer(interval="batch")


def test_timer_stops_training_and_keeps_elapsed_time_across_a_checkpoint():
    timer = Timer(duration={"seconds": 0}, verbose=False)
    trainer = SimpleNamespace(should_stop=False)
    assert timer.time_elapsed("train") == 0 and timer.start_time() is None
    timer.on_train_start(trainer, None)
    timer.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop
    timer.on_train_end(trainer, None)
    assert timer.end_time("train") >= timer.start_time("train")
    state = timer.state_dict()
    assert set(state["time_elapsed"]) == {"train", "sanity_check", "validate", "test", "predict"}
    resumed = Timer(duration="00:01:00:00")
    resumed.load_state_dict({"time_elapsed": {"train": 1800.0}})
    assert resumed.time_elapsed("train") == 1800.0
    assert resumed.time_remaining("train") == 1800.0
    epoch_timer = Timer(duration={"seconds": 0}, interval="epoch", verbose=False)
    trainer = SimpleNamespace(should_stop=False)
    epoch_timer.on_train_start(trainer, None)
    epoch_timer.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    epoch_timer.on_train_epoch_end(trainer, None)
    assert trainer.should_stop


# --- LambdaCallback, GradientAccumulationScheduler, OnExceptionCheckpoint --------------------------


def test_lambda_callback_overrides_exactly_the_given_hooks():
    calls = []
    cb = LambdaCallback(on_train_start=lambda trainer, module: calls.append(("start", trainer)), on_fit_end=None)
    assert is_overridden(cb, Callback, "on_train_start")
    assert not is_overridden(cb, Callback, "on_fit_end")
    cb.on_train_start("t", "m")
    assert calls == [("start", "t")]
    with pytest.raises(ConfigTypeError, match="on_trian_start"):
        LambdaCallback(on_trian_start=print)


def test_gradient_accumulation_schedule():
    sched = GradientAccumulationScheduler({2: 4, 5: 2})
    assert [sched.get_accumulate_grad_batches(e) for e in range(7)] == [1, 1, 4, 4, 4, 2, 2]
    trainer = SimpleNamespace(accumulate_grad_batches=1, current_epoch=3)
    sched.on_train_start(trainer, SimpleNamespace(automatic_optimization=True))
    sched.on_train_epoch_start(trainer, None)
    assert trainer.accumulate_grad_batches == 4
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        sched.on_train_start(trainer, SimpleNamespace(automatic_optimization=True))
    with pytest.raises(RuntimeError, match="manual optimization"):
        sched.on_train_start(SimpleNamespace(accumulate_grad_batches=1), SimpleNamespace(automatic_optimization=False))
    with pytest.raises(TypeError):
        GradientAccumulationScheduler({})
    with pytest.raises(MisconfigurationException, match="Accumulation factor"):
        GradientAccumulationScheduler({0: 0})
    with pytest.raises(MisconfigurationException, match="Epoch"):
        GradientAccumulationScheduler({-1: 2})


def test_on_exception_checkpoint_saves_and_is_cleaned_after_success(tmp_path):
    class _Saver:
        is_global_zero = True

        def save_checkpoint(self, path):
            torch.save({"epoch": 3}, path)

    cb = OnExceptionCheckpoint(tmp_path, filename="crash")
    cb.on_exception(_Saver(), None, KeyboardInterrupt())
    assert torch.load(cb.ckpt_path) == {"epoch": 3}
    assert cb.ckpt_path == os.path.join(str(tmp_path), "crash.ckpt")
    cb.teardown(_Saver(), None, "fit")
    assert not os.path.exists(cb.ckpt_path)
    with pytest.raises(ValueError, match="filename"):
        OnExceptionCheckpoint(tmp_path, filename="")


def test_rich_progress_bar_needs_rich():
    import importlib.util

    from ferrotrain.callbacks import RichProgressBar

    if importlib.util.find_spec("rich") is None:
        with pytest.raises(ModuleNotFoundError, match="pip install rich"):
            RichProgressBar()
    else:
        assert isinstance(RichProgressBar(refresh_rate=2), TQDMProgressBar)


def test_a_loop_after_fit_starts_its_bar_at_zero(tmp_path, monkeypatch) -> None:
    """A count left over from the fit's validation bar must not show on `test`'s first bar."""
    import ferrotrain as L
    from torch.utils.data import DataLoader

    from tests.conftest import BoringModel, make_dataset

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    t = L.Trainer(max_epochs=1, default_root_dir=str(tmp_path), enable_model_summary=False, logger=False,
                  enable_checkpointing=False)
    model = BoringModel()
    t.fit(model, DataLoader(make_dataset(64), batch_size=8), DataLoader(make_dataset(64), batch_size=16))
    start = len(terminal.getvalue())
    t.test(model, DataLoader(make_dataset(48), batch_size=16), verbose=False)
    frames = [f for f in terminal.getvalue()[start:].replace("\n", "\r").split("\r") if f.strip()]
    assert frames and all(f.startswith("Testing DataLoader 0") for f in frames), frames


def test_epoch_based_model_checkpoint_is_not_called_every_batch():
    # Saving per epoch: its per-batch hook would return at once, so the Trainer leaves it out of
    # the per-batch loop; step- or time-based saving, or a subclass's own hook, keep it.
    from ferrotrain.callbacks import ModelCheckpoint
    from ferrotrain.trainer.hooks import HookTable
    from tests.conftest import BoringModel

    class Custom(ModelCheckpoint):
        def on_train_batch_end(self, *args):
            pass

    per_epoch, per_step = ModelCheckpoint(), ModelCheckpoint(every_n_train_steps=2)
    timed, custom = ModelCheckpoint(train_time_interval=timedelta(seconds=1)), Custom()
    table = HookTable(BoringModel(), [per_epoch, per_step, timed, custom])
    called = {f.__self__ for f in table.cb["on_train_batch_end"]}
    assert called == {per_step, timed, custom}
    assert per_epoch.on_train_epoch_end in table.cb_train_epoch_end_last


def test_checkpoint_names_from_templates_match_lightning():
    from tests.lightning_ref import callbacks_module, check

    metrics = {"epoch": torch.tensor(3), "step": torch.tensor(120), "val/loss": torch.tensor(0.12345),
               "val.acc": torch.tensor(0.9), "lr": 0.01}
    templates = [None, "{epoch}-{step}", "{epoch:02d}-{val/loss:.2f}", "best-{val.acc:.3f}-{epoch}", "{lr}", "{missing}"]

    def scenario(L):
        names = []
        for auto in (True, False):
            for template in templates:
                mc = callbacks_module(L).ModelCheckpoint(filename=template, auto_insert_metric_name=auto)
                names.append(mc.format_checkpoint_name(dict(metrics)))
                names.append(mc.format_checkpoint_name(dict(metrics), ver=2))
        return names

    check(scenario, [
        "epoch=3-step=120.ckpt", "epoch=3-step=120-v2.ckpt", "epoch=3-step=120.ckpt", "epoch=3-step=120-v2.ckpt",
        "epoch=03-val/loss=0.12.ckpt", "epoch=03-val/loss=0.12-v2.ckpt", "best-val.acc=0.900-epoch=3.ckpt",
        "best-val.acc=0.900-epoch=3-v2.ckpt", "lr=0.01.ckpt", "lr=0.01-v2.ckpt", "missing=0.ckpt", "missing=0-v2.ckpt",
        "3-120.ckpt", "3-120-v2.ckpt", "3-120.ckpt", "3-120-v2.ckpt", "03-0.12.ckpt", "03-0.12-v2.ckpt",
        "best-0.900-3.ckpt", "best-0.900-3-v2.ckpt", "0.01.ckpt", "0.01-v2.ckpt", "0.ckpt", "0-v2.ckpt",
    ])
