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


def _fit(model, tmp_path, callbacks=(), logger=False, **kw):
    args = dict(default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, logger=logger, callbacks=list(callbacks), limit_val_batches=0)
    args.update(kw)
    trainer = L.Trainer(**args)
    trainer.fit(model, DataLoader(make_dataset(16), batch_size=8))
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
