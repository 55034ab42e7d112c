"""`SpikeDetection` (the batch it stops at, the file of batches to skip) and `RichModelSummary`
(the error without `rich`), pinned to Lightning 2.x through `lightning_ref.check`."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
import torch

from tests.lightning_ref import QUIET, check, is_lightning, loader


def _callbacks(L: Any) -> Any:
    if is_lightning(L):
        import lightning.pytorch.callbacks as cbs
    else:
        import ferrotrain.callbacks as cbs
    return cbs


def _spiky_model(L: Any, spike_at: int) -> Any:
    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)
            self.losses: list = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            if batch_idx == spike_at:
                loss = loss * 100  # a spike the running mean must catch
            self.losses.append(round(float(loss.detach()), 4))
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Model()


def test_spike_stops_training_and_writes_batches_to_skip(tmp_path):
    def scenario(L: Any) -> Any:
        root = tmp_path / L.__name__
        cb = _callbacks(L).SpikeDetection(window=3, warmup=2)
        model = _spiky_model(L, spike_at=5)
        t = L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [cb], "default_root_dir": str(root)})
        with pytest.raises(RuntimeError) as err:
            t.fit(model, loader(20, batch_size=2))
        skipped = json.loads((root / "skip_batches.json").read_text())
        return type(err.value).__name__, str(err.value), skipped, len(model.losses), t.global_step

    check(scenario, ("TrainingSpikeException", "Training spike detected in batch 5", [4, 5], 6, 6))


def test_no_spike_runs_to_the_end(tmp_path):
    def scenario(L: Any) -> Any:
        cb = _callbacks(L).SpikeDetection(exclude_batches_path=str(tmp_path / L.__name__))
        model = _spiky_model(L, spike_at=-1)
        t = L.Trainer(**{**QUIET, "max_epochs": 2, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=2))
        return t.global_step, cb.bad_batches, (tmp_path / L.__name__ / "skip_batches.json").exists()

    check(scenario, (8, [], False))


@pytest.mark.skipif(importlib.util.find_spec("rich") is not None, reason="checks the error without rich")
def test_rich_model_summary_requires_rich():
    def scenario(L: Any) -> Any:
        with pytest.raises(ModuleNotFoundError) as err:
            _callbacks(L).RichModelSummary()
        return str(err.value)

    check(scenario, "`RichModelSummary` requires `rich` to be installed. Install it by running `pip install -U rich`.")
