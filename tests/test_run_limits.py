"""`fast_dev_run` and `max_time`, as Lightning runs them."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from tests.conftest import BoringModel, make_dataset


def test_fast_dev_run_runs_n_batches_of_each_loop_and_leaves_no_logs(tmp_path) -> None:
    model = BoringModel()
    t = L.Trainer(fast_dev_run=3, default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False)
    t.fit(model, DataLoader(make_dataset(64), batch_size=4), DataLoader(make_dataset(64), batch_size=4))
    assert (t.global_step, t.current_epoch) == (3, 1)
    assert t.num_val_batches == [3] and [type(lg).__name__ for lg in t.loggers] == ["DummyLogger"]
    assert not (tmp_path / "lightning_logs").exists()
    assert not any(p.suffix == ".ckpt" for p in tmp_path.rglob("*"))


def test_max_time_stops_training(tmp_path) -> None:
    class Slow(BoringModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

    t = L.Trainer(max_time={"seconds": 0.5}, default_root_dir=str(tmp_path), enable_progress_bar=False,
                  logger=False, enable_checkpointing=False, enable_model_summary=False)
    start = time.monotonic()
    t.fit(Slow(), DataLoader(make_dataset(4000), batch_size=4))
    assert time.monotonic() - start < 5.0
    assert 0 < t.global_step < 1000
