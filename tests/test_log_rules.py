"""Where `self.log` may be called and what it refuses, as Lightning 2.6: `on_train_start` logs reach
the loggers once, with the first epoch; callbacks log through `self.log`/`self.log_dict`; a key
carrying the Trainer's own `/dataloader_idx_` suffix is refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.errors import MisconfigurationException
from tests.conftest import BoringModel, make_dataset
from tests.lightning_ref import memory_logger


def _fit(model, tmp_path, callbacks=(), logger=False, samples=16, **kw):
    args = dict(default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, logger=logger, callbacks=list(callbacks), limit_val_batches=0)
    args.update(kw)
    trainer = L.Trainer(**args)
    trainer.fit(model, DataLoader(make_dataset(samples), batch_size=8))
    return trainer


class _Quiet(BoringModel):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)


def test_on_train_start_log_reaches_logger_once_with_first_epoch(tmp_path):
    class M(_Quiet):
        def on_train_start(self):
            self.log("foo", 123)

    logger = memory_logger(L)
    _fit(M(), tmp_path, logger=logger, max_epochs=2, limit_train_batches=1, log_every_n_steps=1)
    assert logger.calls == [(0, {"epoch": 0, "foo": 123.0})]


def test_callback_self_log_in_training_hooks(tmp_path):
    class LoggingCallback(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.log("on_train_start", 1)

        def on_train_epoch_start(self, trainer, pl_module):
            self.log("on_train_epoch_start", 2)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.log_dict({"on_train_batch_end": 3})

        def on_train_epoch_end(self, trainer, pl_module):
            self.log("on_train_epoch_end", 5)

    trainer = _fit(_Quiet(), tmp_path, callbacks=[LoggingCallback()], max_epochs=1, limit_train_batches=1)
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert got == {"on_train_start": 1.0, "on_train_epoch_start": 2.0, "on_train_batch_end": 3.0,
                   "on_train_epoch_end": 5.0}


def test_key_with_dataloader_idx_suffix_is_refused(tmp_path):
    class M(_Quiet):
        def training_step(self, batch, batch_idx):
            self.log("foo/dataloader_idx_0", -1.0)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="`self.log` with the key `foo/dataloader_idx_0`"):
        _fit(M(), tmp_path, max_epochs=1, limit_train_batches=1)


def test_key_with_dataloader_idx_suffix_allowed_without_add_dataloader_idx(tmp_path):
    class M(_Quiet):
        def training_step(self, batch, batch_idx):
            self.log("foo/dataloader_idx_0", -1.0, add_dataloader_idx=False)
            return super().training_step(batch, batch_idx)

    trainer = _fit(M(), tmp_path, max_epochs=1, limit_train_batches=1)
    assert float(trainer.callback_metrics["foo/dataloader_idx_0"]) == -1.0


# --- TensorBoardLogger layout -------------------------------------------------------------------


def _tb_logger_or_skip():
    pytest.importorskip("tensorboard")
    from ferrotrain.loggers import TensorBoardLogger

    return TensorBoardLogger


def test_tensorboard_log_dir_follows_overridden_name_and_version_with_sub_dir(tmp_path):
    TensorBoardLogger = _tb_logger_or_skip()

    class Named(TensorBoardLogger):
        @property
        def version(self):
            return "version"

        @property
        def name(self):
            return "name"

    save_dir = tmp_path / "logs"
    assert Named(save_dir).log_dir == str(save_dir / "name" / "version")
    assert Named(save_dir, sub_dir="sub_dir").log_dir == str(save_dir / "name" / "version" / "sub_dir")


def test_tensorboard_hparams_yaml_written_once_in_log_dir_without_logged_metrics(tmp_path):
    TensorBoardLogger = _tb_logger_or_skip()
    logger = TensorBoardLogger(save_dir=str(tmp_path), default_hp_metric=False)
    trainer = L.Trainer(max_steps=1, default_root_dir=str(tmp_path), logger=logger,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_Quiet(), DataLoader(make_dataset(16), batch_size=8))
    assert (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").is_file()
    assert not (tmp_path / "hparams.yaml").exists()


# --- LearningRateMonitor with several optimizers ------------------------------------------------


class _TwoOptimizers(BoringModel):
    """Manual optimization with two optimizers: `global_step` advances twice per batch."""

    def __init__(self, schedulers: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.schedulers = schedulers

    def training_step(self, batch, batch_idx):
        x, y = batch
        for opt in self.optimizers():
            loss = torch.nn.functional.mse_loss(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    def on_train_epoch_end(self):
        if self.schedulers:
            for s in self.lr_schedulers():
                s.step()

    def configure_optimizers(self):
        opts = [torch.optim.Adam(self.parameters(), lr=1e-2), torch.optim.Adam(self.parameters(), lr=1e-2)]
        if not self.schedulers:
            return opts
        return opts, [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.1) for o in opts]


@pytest.mark.parametrize("schedulers", [True, False])
def test_lr_monitor_step_interval_counts_batches_with_two_optimizers(tmp_path, schedulers):
    from ferrotrain.callbacks import LearningRateMonitor

    monitor = LearningRateMonitor(logging_interval="step")
    logger = memory_logger(L)
    trainer = _fit(_TwoOptimizers(schedulers), tmp_path, callbacks=[monitor], logger=logger, max_epochs=2,
                   samples=56, log_every_n_steps=2)
    assert trainer.global_step == 28
    assert list(monitor.lrs) == ["lr-Adam", "lr-Adam-1"]
    # 14 batches, every second one logs: 7 values each; epoch 2 sees the scheduled lr.
    expected = [0.01] * 3 + [0.001] * 4 if schedulers else [0.01] * 7
    for values in monitor.lrs.values():
        assert [round(v, 6) for v in values] == expected
    steps = [step for step, metrics in logger.calls if "lr-Adam" in metrics]
    assert steps == [1, 3, 5, 7, 9, 11, 13]


# --- logged torchmetrics objects ----------------------------------------------------------------


def _metric_model(tm):
    class M(_Quiet):
        """Validation accuracy where the first 8 of 32 one-sample batches are right."""

        def __init__(self):
            super().__init__()
            self.val_acc = tm.Accuracy(task="multiclass", num_classes=2)
            self.resets = 0
            original = self.val_acc.reset

            def counting_reset():
                self.resets += 1
                original()

            self.val_acc.reset = counting_reset

        def validation_step(self, batch, batch_idx):
            right = batch_idx < 8
            preds = torch.tensor([[0.1, 0.9]]) if right else torch.tensor([[0.9, 0.1]])
            self.val_acc(preds, torch.tensor([1]))
            self.resets = 0  # forward resets internally; count only the resets after it
            self.log("val_acc", self.val_acc, on_step=True, on_epoch=True)

    return M


def test_logged_torchmetric_epoch_value_is_its_compute_and_it_resets_each_epoch(tmp_path):
    tm = pytest.importorskip("torchmetrics")
    model = _metric_model(tm)()
    logger = memory_logger(L)
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=2, limit_train_batches=2, logger=logger,
                        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(model, DataLoader(make_dataset(16), batch_size=8), DataLoader(make_dataset(32), batch_size=1))
    # compute() over the epoch's 32 batches, not a mean of per-batch values weighted otherwise.
    assert float(trainer.callback_metrics["val_acc"]) == 8 / 32
    epoch_values = [m["val_acc_epoch"] for _, m in logger.calls if "val_acc_epoch" in m]
    assert epoch_values == [0.25, 0.25]  # each epoch starts from a reset metric
    # Since the last step: one reset, the epoch end's.
    assert model.resets == 1


def test_logged_torchmetric_must_be_a_module_attribute(tmp_path):
    tm = pytest.importorskip("torchmetrics")

    class Unattached(_Quiet):
        def training_step(self, batch, batch_idx):
            self.log("foo", tm.Accuracy(task="multiclass", num_classes=2))
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="fix this by setting an attribute for the metric in your"):
        _fit(Unattached(), tmp_path, max_epochs=1, limit_train_batches=1)

    class OtherAttached(Unattached):
        def __init__(self):
            super().__init__()
            self.bar = tm.Accuracy(task="multiclass", num_classes=2)

    with pytest.raises(MisconfigurationException,
                       match=r"`self.log\(foo, ..., metric_attribute=name\)` where `name` is one of \['bar'\]"):
        _fit(OtherAttached(), tmp_path, max_epochs=1, limit_train_batches=1)


def test_log_with_neither_step_nor_epoch_is_refused_with_lightnings_words(tmp_path):
    class M(_Quiet):
        def on_train_batch_start(self, batch, batch_idx):
            self.log("foo", 1.0, on_step=False, on_epoch=False)

    with pytest.raises(MisconfigurationException, match=r"`self.log\(on_step=False, on_epoch=False\)` is not useful"):
        _fit(M(), tmp_path, max_epochs=1, limit_train_batches=1)


@pytest.mark.parametrize("entry", ["fit", "validate", "test", "predict"])
def test_setup_sees_the_running_stage(tmp_path, entry):
    seen = []

    class M(_Quiet):
        def setup(self, stage):
            seen.append((stage, self.trainer.state.stage.value))

    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, limit_train_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    dl = DataLoader(make_dataset(16), batch_size=8)
    getattr(trainer, entry)(M(), dl)
    expected = {"fit": "train", "validate": "validate", "test": "test", "predict": "predict"}[entry]
    assert seen == [(entry, expected)]


def test_metric_made_in_setup_is_found_in_each_run(tmp_path):
    tm = pytest.importorskip("torchmetrics")

    class M(_Quiet):
        def setup(self, stage):
            self.add_module(f"acc_{stage.value}", tm.Accuracy(task="binary"))

        def validation_step(self, batch, batch_idx):
            acc = self._modules[f"acc_{self.trainer.state.fn.value}"]
            acc(torch.rand(len(batch[0])), torch.zeros(len(batch[0]), dtype=torch.long))
            self.log("acc", acc)

    model = M()
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, limit_train_batches=1, logger=False,
                        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    dl = DataLoader(make_dataset(16), batch_size=8)
    trainer.fit(model, dl, dl)
    trainer.validate(model, dl)  # a metric added by this run's `setup`
    assert "acc" in trainer.callback_metrics


def test_log_dict_of_a_metric_collection_logs_each_metric(tmp_path):
    tm = pytest.importorskip("torchmetrics")

    class M(_Quiet):
        def __init__(self):
            super().__init__()
            self.metrics = tm.MetricCollection({"acc": tm.Accuracy(task="binary")}, prefix="val_")

        def validation_step(self, batch, batch_idx):
            n = len(batch[0])
            self.metrics(torch.ones(n), torch.ones(n, dtype=torch.long))
            self.log_dict(self.metrics)

    dl = DataLoader(make_dataset(16), batch_size=8)
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, limit_train_batches=1, logger=False,
                        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(M(), dl, dl)
    assert float(trainer.callback_metrics["val_acc"]) == 1.0
