"""`BasePredictionWriter`: what a writer receives (predictions, sample indices, batch indices)
and the files it writes, pinned to Lightning 2.x through `lightning_ref.check`."""

from __future__ import annotations

import os
from typing import Any, List

import pytest
import torch
from torch.utils.data import DataLoader

from tests.lightning_ref import QUIET, check, dataset, is_lightning, misconfiguration


def _callbacks(L: Any) -> Any:
    if is_lightning(L):
        import lightning.pytorch.callbacks as cbs
    else:
        import ferrotrain.callbacks as cbs
    return cbs


def _model(L: Any) -> Any:
    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
            return self(batch[0])

    return Model()


def _writer(L: Any, interval: str, out_dir: str) -> Any:
    class Writer(_callbacks(L).BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__(interval)
            self.calls: List[Any] = []

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            self.calls.append(("batch", list(batch_indices), batch_idx, dataloader_idx, tuple(prediction.shape)))
            torch.save(prediction, os.path.join(out_dir, f"{dataloader_idx}_{batch_idx}.pt"))

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
            self.calls.append(("epoch", len(predictions), batch_indices))
            torch.save(predictions, os.path.join(out_dir, "predictions.pt"))

    return Writer()


@pytest.mark.parametrize("interval", ["batch", "epoch", "batch_and_epoch"])
def test_writer_gets_sample_indices_and_writes_files(tmp_path, interval):
    def scenario(L: Any) -> Any:
        out = tmp_path / L.__name__ / interval
        out.mkdir(parents=True)
        writer = _writer(L, interval, str(out))
        t = L.Trainer(**{**QUIET, "callbacks": [writer]})
        model = _model(L)
        # A shuffled loader with a ragged last batch: the indices come from the sampler.
        torch.manual_seed(3)
        loader = DataLoader(dataset(7), batch_size=3, shuffle=True)
        result = t.predict(model, loader, return_predictions=False)
        files = sorted(os.listdir(out))
        saved = torch.load(out / "predictions.pt") if "predictions.pt" in files else None
        return (result, writer.calls, files, None if saved is None else [tuple(p.shape) for p in saved])

    shuffled = [[3, 2, 5], [4, 1, 0], [6]]  # the shuffle Lightning draws after manual_seed(3)
    batch_calls = [("batch", idx, i, 0, (len(idx), 1)) for i, idx in enumerate(shuffled)]
    epoch_calls = [("epoch", 3, [shuffled])]
    expected = {
        "batch": (None, batch_calls, ["0_0.pt", "0_1.pt", "0_2.pt"], None),
        "epoch": (None, epoch_calls, ["predictions.pt"], [(3, 1), (3, 1), (1, 1)]),
        "batch_and_epoch": (None, batch_calls + epoch_calls, ["0_0.pt", "0_1.pt", "0_2.pt", "predictions.pt"],
                            [(3, 1), (3, 1), (1, 1)]),
    }[interval]
    check(scenario, expected)


def test_epoch_writer_with_two_loaders_and_returned_predictions(tmp_path):
    def scenario(L: Any) -> Any:
        writer = _writer(L, "epoch", str(tmp_path))
        t = L.Trainer(**{**QUIET, "callbacks": [writer]})
        loaders = [DataLoader(dataset(4), batch_size=2), DataLoader(dataset(3), batch_size=2)]
        result = t.predict(_model(L), loaders)
        return [[tuple(p.shape) for p in r] for r in result], writer.calls

    check(scenario, ([[(2, 1), (2, 1)], [(2, 1), (1, 1)]], [("epoch", 2, [[[0, 1], [2, 3]], [[0, 1], [2]]])]))


def test_drop_last_is_ignored_when_writing(tmp_path):
    def scenario(L: Any) -> Any:
        writer = _writer(L, "epoch", str(tmp_path))
        t = L.Trainer(**{**QUIET, "callbacks": [writer]})
        loader = DataLoader(dataset(5), batch_size=2, drop_last=True)
        t.predict(_model(L), loader, return_predictions=False)
        return writer.calls

    check(scenario, [("epoch", 3, [[[0, 1], [2, 3], [4]]])])


def test_predictions_match_the_model(tmp_path):
    def scenario(L: Any) -> Any:
        writer = _writer(L, "epoch", str(tmp_path))
        model = _model(L)
        t = L.Trainer(**{**QUIET, "callbacks": [writer]})
        ds = dataset(6)
        t.predict(model, DataLoader(ds, batch_size=4), return_predictions=False)
        saved = torch.cat(torch.load(tmp_path / "predictions.pt"))
        with torch.no_grad():
            return torch.allclose(saved, model(ds.tensors[0]))

    check(scenario, True)


def test_bad_write_interval():
    def scenario(L: Any) -> Any:
        with pytest.raises(misconfiguration(L)) as err:
            _callbacks(L).BasePredictionWriter("step")
        return str(err.value)

    check(scenario, "`write_interval` should be one of ['batch', 'epoch', 'batch_and_epoch'].")


def test_writer_without_implementation_raises(tmp_path):
    def scenario(L: Any) -> Any:
        t = L.Trainer(**{**QUIET, "callbacks": [_callbacks(L).BasePredictionWriter()]})
        with pytest.raises(NotImplementedError):
            t.predict(_model(L), DataLoader(dataset(2), batch_size=2))
        return True

    check(scenario, True)
