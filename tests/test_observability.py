"""Loggers and the everyday callbacks driven by the real Trainer: files on disk, and the values
Lightning users observe (pinned from Lightning 2.x; `FERROTRAIN_CROSSCHECK=1` re-runs the
scenarios under Lightning)."""

from __future__ import annotations

import csv
import datetime
import os
import time
from pathlib import Path

import pytest
import torch

import ferrotrain as L
from ferrotrain.callbacks import (EarlyStopping, GradientAccumulationScheduler, LearningRateMonitor, ModelSummary,
                                  Timer)
from ferrotrain.loggers import CSVLogger, TensorBoardLogger
from tests.conftest import BoringModel
from tests.lightning_ref import check, csv_logger, is_lightning, loader, memory_logger, model_class, round_floats, trainer


def _callbacks(L):
    return __import__(f"{L.__name__}.pytorch.callbacks" if is_lightning(L) else f"{L.__name__}.callbacks",
                      fromlist=["EarlyStopping"])


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- callbacks against Lightning ---------------------------------------------------------------


VAL_LOSSES = [1.0, 0.8, 0.85, 0.9, 0.7, 0.95, 0.96, 0.97, 0.98, 0.99]


def scen_early_stopping(L):
    class M(model_class(L)):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", VAL_LOSSES[self.current_epoch])

    es = _callbacks(L).EarlyStopping(monitor="val_loss", patience=2, mode="min")
    t = trainer(L, max_epochs=10, callbacks=[es], num_sanity_val_steps=0)
    t.fit(M(), loader(4), loader(2))
    return t.current_epoch, t.global_step, es.stopped_epoch, es.wait_count, round(float(es.best_score), 5)


def test_early_stopping_stops_at_lightnings_epoch() -> None:
    check(scen_early_stopping, (4, 8, 3, 2, 0.8))


def scen_early_stopping_threshold_on_train_epoch_end(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("score", float(self.current_epoch), on_step=False, on_epoch=True)
            return loss

    es = _callbacks(L).EarlyStopping(monitor="score", mode="max", stopping_threshold=2.0, patience=100)
    t = trainer(L, max_epochs=10, callbacks=[es])
    t.fit(M(), loader(4))
    return t.current_epoch, es.stopped_epoch


def test_early_stopping_threshold_on_a_training_metric() -> None:
    check(scen_early_stopping_threshold_on_train_epoch_end, (4, 3))


def scen_accumulation_schedule(L):
    m = model_class(L)()
    gas = _callbacks(L).GradientAccumulationScheduler({1: 2, 2: 3})
    t = trainer(L, max_epochs=3, callbacks=[gas])
    t.fit(m, loader(16))  # 8 batches per epoch
    steps = [g for kind, e, b, g in m.seen if kind == "train"]
    return t.global_step, t.accumulate_grad_batches, steps[8:16], round_floats(m.layer.weight.flatten().tolist())


def test_gradient_accumulation_scheduler_changes_the_steps_and_the_loss_scale() -> None:
    # Epoch 0 steps every batch, epoch 1 every 2nd, epoch 2 every 3rd (and at the epoch's end).
    check(scen_accumulation_schedule, (
        15, 3, [8, 8, 9, 9, 10, 10, 11, 11],
        [0.92493, 0.99396, 0.90513, 1.02289],
    ))


def scen_lr_monitor_csv(L, root):
    class M(model_class(L)):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    lr = _callbacks(L).LearningRateMonitor(logging_interval="epoch", log_momentum=True)
    t = trainer(L, max_epochs=3, callbacks=[lr], logger=csv_logger(L, root / L.__name__), log_every_n_steps=1)
    t.fit(M(), loader(4))
    rows = _read_csv(os.path.join(t.logger.log_dir, "metrics.csv"))
    return [(int(r["step"]), float(r["lr-SGD"]), float(r["lr-SGD-momentum"])) for r in rows if r.get("lr-SGD")]


def test_learning_rate_monitor_writes_the_rates_to_a_real_csv(tmp_path) -> None:
    check(lambda L: scen_lr_monitor_csv(L, tmp_path), [(0, 0.1, 0.9), (2, 0.05, 0.9), (4, 0.025, 0.9)])


def scen_log_every_n_steps(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss)
            return loss

    lg = memory_logger(L)
    t = trainer(L, max_epochs=2, logger=lg, log_every_n_steps=3)
    t.fit(M(), loader(10))
    return [step for step, metrics in lg.calls if "loss" in metrics]


def test_log_every_n_steps_picks_the_logged_steps() -> None:
    check(scen_log_every_n_steps, [2, 5, 8])


# --- ModelSummary, Timer ---------------------------------------------------------------------


class Net(BoringModel):
    def __init__(self) -> None:
        super().__init__(dim=8)
        self.layer = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_model_summary_counts_match_the_parameters(tmp_path, caplog) -> None:
    model = Net()
    t = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                  default_root_dir=tmp_path, callbacks=[ModelSummary(max_depth=2)])
    t.fit(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8), torch.randn(4, 1)),
                                             batch_size=2))
    out = caplog.text
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = {line.split(maxsplit=1)[1].strip(): line.split()[0] for line in out.splitlines()
             if line.strip().endswith("params")}
    assert lines["Total params"] == str(total) == "173"
    assert lines["Trainable params"] == str(trainable)
    assert lines["Non-trainable params"] == str(total - trainable) == "12"
    assert "layer.0" in out  # max_depth=2 lists the nested layers


def test_model_summary_is_on_by_default_and_off_with_the_flag(tmp_path, caplog) -> None:
    kw = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path)
    L.Trainer(**kw).fit(BoringModel(), loader(4))
    assert "Total params" in caplog.text
    caplog.clear()
    L.Trainer(enable_model_summary=False, **kw).fit(BoringModel(), loader(4))
    assert "Total params" not in caplog.text


def test_timer_stops_training(tmp_path) -> None:
    class Slow(BoringModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.01)
            return super().training_step(batch, batch_idx)

    timer = Timer(duration=datetime.timedelta(milliseconds=300))
    t = L.Trainer(max_epochs=1000, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                  enable_model_summary=False, default_root_dir=tmp_path, callbacks=[timer])
    start = time.perf_counter()
    t.fit(Slow(), loader(8))
    elapsed = time.perf_counter() - start
    assert t.current_epoch < 1000 and t.global_step >= 30 // 4
    assert timer.time_elapsed("train") >= 0.3
    assert elapsed < 5.0


# --- loggers on disk -------------------------------------------------------------------------


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, round(e.value, 5)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_several_loggers_at_once(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    csv_lg, tb_lg = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    t = L.Trainer(max_epochs=1, logger=[csv_lg, tb_lg], log_every_n_steps=1, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    t.fit(BoringModel(), loader(8))
    assert t.loggers == [csv_lg, tb_lg] and t.logger is csv_lg
    assert t.log_dir == csv_lg.log_dir == str(tmp_path / "csv" / "version_0")
    rows = _read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    csv_steps = [(int(r["step"]), round(float(r["train_loss"]), 5)) for r in rows if r["train_loss"]]
    tb = _scalars(tmp_path / "tb" / "version_0")
    assert [s for s, _ in csv_steps] == [0, 1, 2, 3]
    assert tb["train_loss"] == csv_steps


def test_logger_false_writes_no_logs(tmp_path) -> None:
    t = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, default_root_dir=tmp_path)
    t.fit(BoringModel(), loader(8))
    assert t.logger is None and t.loggers == []
    assert t.log_dir == str(tmp_path)
    assert not (tmp_path / "lightning_logs").exists()


def test_default_logger_counts_versions_and_sets_log_dir(tmp_path) -> None:
    for expected in ("version_0", "version_1"):
        t = L.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        t.fit(BoringModel(), loader(8))
        assert t.log_dir == str(tmp_path / "lightning_logs" / expected)
        # The default checkpoint folder sits in the version folder, as in Lightning.
        assert list((tmp_path / "lightning_logs" / expected / "checkpoints").glob("*.ckpt"))
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    default = TensorBoardLogger if _has_tensorboard() else CSVLogger
    assert isinstance(t.logger, default)


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class Boom(BoringModel):
    def training_step(self, batch, batch_idx):
        if batch_idx == 3:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_logs_are_flushed_when_fit_raises(tmp_path) -> None:
    loggers = [CSVLogger(tmp_path, name="csv")]
    if _has_tensorboard():
        loggers.append(TensorBoardLogger(tmp_path, name="tb"))
    t = L.Trainer(max_epochs=1, logger=loggers, log_every_n_steps=1, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(Boom(), loader(16))
    rows = _read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [0, 1, 2]
    if _has_tensorboard():
        assert [s for s, _ in _scalars(tmp_path / "tb" / "version_0")["train_loss"]] == [0, 1, 2]


def test_logs_are_flushed_at_the_end_of_fit(tmp_path) -> None:
    # The CSV logger buffers rows (flush_logs_every_n_steps); fit's end writes what is left.
    lg = CSVLogger(tmp_path, flush_logs_every_n_steps=1000)
    t = L.Trainer(max_epochs=2, logger=lg, log_every_n_steps=1, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    t.fit(BoringModel(), loader(8))
    rows = _read_csv(Path(lg.log_dir) / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["train_loss"]] == list(range(8))


_LOGGING_SCRIPT = """
import logging, sys
import torch
import ferrotrain as L
from tests.conftest import BoringModel, make_dataset
if sys.argv[1] == "quiet":
    logging.getLogger("ferrotrain").setLevel(logging.WARNING)
L.seed_everything(7)
kw = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=sys.argv[2])
loader = torch.utils.data.DataLoader(make_dataset(8), batch_size=2)
L.Trainer(max_epochs=2, **kw).fit(BoringModel(), loader)
L.Trainer(max_steps=3, **kw).fit(BoringModel(), loader)
print("done")
"""


@pytest.mark.parametrize("mode", ["default", "quiet"])
def test_info_messages_go_to_the_ferrotrain_logger_on_stderr(tmp_path, mode) -> None:
    # A real interpreter: what a user's terminal (or a pipe reading stdout) gets, as with
    # Lightning, whose info messages go to its logger's stderr handler.
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "python"), str(root)]))
    done = subprocess.run([sys.executable, "-c", _LOGGING_SCRIPT, mode, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"  # stdout stays the user's own
    messages = ["Seed set to 7", "Total params", "`Trainer.fit` stopped: `max_epochs=2` reached.",
                "`Trainer.fit` stopped: `max_steps=3` reached."]
    for message in messages:
        assert (message in done.stderr) == (mode == "default"), (message, done.stderr)
