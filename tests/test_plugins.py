"""`Trainer(plugins=...)`: precision plugins set the run's precision, a CheckpointIO writes and
reads the trainer's checkpoints, and plugins this build cannot run say so."""

from __future__ import annotations

import os

import pytest
import torch

import ferrotrain as L
from ferrotrain.callbacks import ModelCheckpoint
from ferrotrain.errors import MisconfigurationException, NotSupportedYetError
from ferrotrain.plugins import (AsyncCheckpointIO, CheckpointIO, DoublePrecision, HalfPrecision, MixedPrecision,
                                TorchCheckpointIO, XLAPrecision)
from tests.lightning_ref import loader, model_class

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


class DtypeSeen(model_class(L)):
    def training_step(self, batch, batch_idx):
        self.dtypes = {p.dtype for p in self.parameters()}
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("plugin, precision, dtype", [
    (DoublePrecision(), "64-true", torch.float64),
    (HalfPrecision("bf16-true"), "bf16-true", torch.bfloat16),
    (MixedPrecision("bf16-mixed", "cpu"), "bf16-mixed", torch.float32),
])
def test_a_precision_plugin_sets_the_precision_the_run_uses(plugin, precision, dtype, tmp_path):
    t = L.Trainer(plugins=[plugin], max_steps=2, default_root_dir=tmp_path, enable_checkpointing=False, **QUIET)
    assert t.precision == precision
    m = DtypeSeen()
    t.fit(m, loader(8))
    assert m.dtypes == {dtype}


class Recording(TorchCheckpointIO):
    def __init__(self):
        self.saved, self.loaded = [], []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.saved.append(os.path.basename(path))
        super().save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        self.loaded.append(os.path.basename(path))
        return super().load_checkpoint(path, map_location, weights_only)


def test_a_checkpoint_io_writes_and_reads_the_trainers_checkpoints(tmp_path):
    io = Recording()
    t = L.Trainer(plugins=io, max_epochs=2, default_root_dir=tmp_path,
                  callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)], **QUIET)
    t.fit(model_class(L)(), loader(8))
    assert io.saved == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert torch.load(tmp_path / "epoch=1-step=8.ckpt")["global_step"] == 8
    t2 = L.Trainer(plugins=io, max_epochs=3, default_root_dir=tmp_path, enable_checkpointing=False, **QUIET)
    t2.fit(model_class(L)(), loader(8), ckpt_path=str(tmp_path / "epoch=1-step=8.ckpt"))
    assert io.loaded == ["epoch=1-step=8.ckpt"] and t2.global_step == 12


def test_async_checkpoint_io_leaves_complete_files_when_the_run_ends(tmp_path):
    t = L.Trainer(plugins=[AsyncCheckpointIO()], max_epochs=2, default_root_dir=tmp_path,
                  callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)], **QUIET)
    t.fit(model_class(L)(), loader(8))
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert torch.load(tmp_path / "epoch=0-step=4.ckpt")["global_step"] == 4


def test_async_checkpoint_io_raises_a_failed_write_at_the_next_wait(tmp_path):
    class Failing(CheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            raise OSError("disk full")

    io = AsyncCheckpointIO(Failing())
    io.save_checkpoint({"a": 1}, tmp_path / "x.ckpt")
    with pytest.raises(OSError, match="disk full"):
        io.teardown()


def test_bad_plugins_are_clear_errors():
    with pytest.raises(MisconfigurationException, match="plugins"):
        L.Trainer(plugins=["not a plugin"])
    with pytest.raises(MisconfigurationException, match="Choose one"):
        L.Trainer(precision="bf16-mixed", plugins=[DoublePrecision()])
    with pytest.raises(MisconfigurationException, match="kind"):
        L.Trainer(plugins=[DoublePrecision(), HalfPrecision()])
    with pytest.raises(ValueError, match="16-mixed"):
        MixedPrecision("32-true", "cpu")
    with pytest.raises(ValueError, match="HalfPrecision.*'16-true' or 'bf16-true'"):
        HalfPrecision("16-mixed")
    with pytest.raises(NotSupportedYetError, match="torch_xla"):
        XLAPrecision()


def test_torch_sync_batchnorm_converts_and_reverts_with_the_state():
    from ferrotrain.plugins import TorchSyncBatchNorm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    model[1].running_mean.fill_(3.0)
    synced = TorchSyncBatchNorm().apply(model)
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    back = TorchSyncBatchNorm().revert(synced)
    assert not isinstance(back[1], torch.nn.SyncBatchNorm) and back[1].running_mean.tolist() == [3.0, 3.0]
    assert back(torch.randn(2, 1, 3, 3)).shape == (2, 2, 3, 3)
    assert back[1].weight is synced[1].weight


def test_torch_sync_batchnorm_plugin_is_sync_batchnorm():
    from ferrotrain.plugins import TorchSyncBatchNorm

    assert L.Trainer(plugins=[TorchSyncBatchNorm()], **QUIET)._sync_batchnorm is True
    assert L.Trainer(**QUIET)._sync_batchnorm is False
