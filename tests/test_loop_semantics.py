"""Loop semantics that Lightning's users rely on: hooks switched off by None, opt-out defaults
resolved late (so `barebones=True` works alone), and the step signatures the loops accept."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from tests.conftest import BoringModel, make_dataset


def test_validation_step_set_to_none_skips_validation(quiet):
    model = BoringModel()
    model.validation_step = None  # an instance attribute of None means "not overridden"
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, **quiet)
    ds = make_dataset()
    trainer.fit(model, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    assert trainer.global_step == 2
    assert "val_loss" not in trainer.callback_metrics


def test_val_dataloader_set_to_none_is_not_requested(quiet):
    class WithLoaders(BoringModel):
        def train_dataloader(self):
            return DataLoader(make_dataset(), batch_size=8)

    model = WithLoaders()
    model.val_dataloader = None
    model.validation_step = None
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, **quiet)
    trainer.fit(model)
    assert trainer.global_step == 2


def test_barebones_alone_turns_the_opt_outs_off(tmp_path):
    trainer = L.Trainer(barebones=True, default_root_dir=str(tmp_path), max_steps=2)
    assert trainer.barebones
    assert trainer.loggers == []
    assert trainer.checkpoint_callback is None
    assert trainer.progress_bar_callback is None
    assert trainer.num_sanity_val_steps == 0
    assert trainer.log_every_n_steps == 0
    ds = make_dataset()
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8))
    assert trainer.global_step == 2
    assert not list(tmp_path.iterdir())  # no logs, no checkpoints


@pytest.mark.parametrize("name, value", [
    ("enable_checkpointing", True), ("enable_progress_bar", True), ("enable_model_summary", True),
    ("logger", True), ("log_every_n_steps", 5), ("num_sanity_val_steps", 2), ("fast_dev_run", True),
    ("detect_anomaly", True), ("profiler", "simple"),
])
def test_barebones_rejects_an_explicit_opt_in(name, value):
    with pytest.raises(ValueError, match=rf"barebones=True, {name}="):
        L.Trainer(barebones=True, **{name: value})


def test_opt_outs_default_on_without_barebones(tmp_path):
    trainer = L.Trainer(default_root_dir=str(tmp_path))
    assert trainer.num_sanity_val_steps == 2
    assert trainer.log_every_n_steps == 50
    assert trainer.checkpoint_callback is not None
    assert trainer.progress_bar_callback is not None
    assert len(trainer.loggers) == 1
