"""Datamodules and data sources: the datamodule's hooks in Lightning's order (recorded from
Lightning 2.x), where loaders come from, and several training loaders at once."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain as L
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities import CombinedLoader
from tests.conftest import make_dataset

DS = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))


def _run(tmp_path) -> list:
    calls = []

    class DM(L.LightningDataModule):
        def __init__(self, bs=4):
            super().__init__()
            self.save_hyperparameters()

        def prepare_data(self): calls.append("dm.prepare_data")
        def setup(self, stage): calls.append(f"dm.setup:{stage.value}")
        def teardown(self, stage): calls.append(f"dm.teardown:{stage.value}")
        def train_dataloader(self): calls.append("dm.train_dataloader"); return DataLoader(DS, batch_size=self.hparams.bs)
        def val_dataloader(self): calls.append("dm.val_dataloader"); return DataLoader(DS, batch_size=4)
        def test_dataloader(self): calls.append("dm.test_dataloader"); return DataLoader(DS, batch_size=4)
        def on_before_batch_transfer(self, b, i): calls.append("dm.on_before_batch_transfer"); return b
        def state_dict(self): calls.append("dm.state_dict"); return {"a": 1}

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(4, 1)

        def prepare_data(self): calls.append("m.prepare_data")
        def setup(self, stage): calls.append(f"m.setup:{stage.value}")
        def teardown(self, stage): calls.append(f"m.teardown:{stage.value}")
        def on_before_batch_transfer(self, b, i): calls.append("m.on_before_batch_transfer"); return b
        def training_step(self, b, i): return self.l(b[0]).pow(2).mean()
        def validation_step(self, b, i): self.log("v", self.l(b[0]).pow(2).mean())
        def test_step(self, b, i): self.log("t", self.l(b[0]).pow(2).mean())
        def configure_optimizers(self): calls.append("m.configure_optimizers"); return torch.optim.SGD(self.parameters(), lr=0.1)
        def on_save_checkpoint(self, c):
            # The datamodule's state sits under its class's qualified name, as in Lightning.
            keys = ["DM" for k in c if k.endswith(".DM")] + [k for k in ("datamodule_hyper_parameters",) if k in c]
            calls.append("m.on_save_checkpoint:" + ",".join(keys))

    t = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, enable_progress_bar=False, logger=False,
                  enable_model_summary=False, num_sanity_val_steps=1, limit_train_batches=1, limit_val_batches=1)
    dm = DM()
    # Both override `on_before_batch_transfer`: Lightning warns, and so do we.
    with pytest.warns(UserWarning, match="overridden `on_before_batch_transfer` in both"):
        t.fit(M(), datamodule=dm)
    calls.append("---")
    # Without a model, `test` evaluates the fit's best checkpoint and says so (Lightning's rule).
    with pytest.warns(UserWarning) as record:
        t.test(datamodule=dm, verbose=False)
    messages = " | ".join(str(w.message) for w in record)
    assert "overridden `on_before_batch_transfer` in both" in messages
    assert "The best model of the previous `fit` call will be used" in messages
    assert t.ckpt_path == t.checkpoint_callback.best_model_path
    return calls


LIGHTNING_ORDER = [
    "dm.prepare_data", "m.prepare_data", "dm.setup:fit", "m.setup:fit", "m.configure_optimizers",
    "dm.val_dataloader", "dm.on_before_batch_transfer", "dm.train_dataloader", "dm.on_before_batch_transfer",
    "dm.on_before_batch_transfer", "dm.state_dict", "m.on_save_checkpoint:DM,datamodule_hyper_parameters",
    "dm.teardown:fit", "m.teardown:fit", "---",
    "dm.prepare_data", "m.prepare_data", "dm.setup:test", "m.setup:test", "dm.test_dataloader",
    "dm.on_before_batch_transfer", "dm.on_before_batch_transfer", "dm.teardown:test", "m.teardown:test",
]


def test_datamodule_hooks_follow_lightning(tmp_path) -> None:
    # The datamodule's transfer hook wins over the module's, as Lightning's hook selector does.
    assert _run(tmp_path) == LIGHTNING_ORDER


def test_stage_is_a_str_enum_equal_to_the_plain_name(tmp_path) -> None:
    seen = []

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(4, 1)

        def setup(self, stage):
            seen.append((stage == "fit", isinstance(stage, str)))

        def training_step(self, b, i):
            return self.l(b[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, enable_progress_bar=False, logger=False,
              enable_checkpointing=False, enable_model_summary=False).fit(M(), DataLoader(DS, batch_size=4))
    assert seen == [(True, True)]


def test_datamodule_with_loaders_is_an_error(tmp_path) -> None:
    from tests.conftest import BoringModel

    t = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=False)
    with pytest.raises(MisconfigurationException, match="datamodule"):
        t.fit(BoringModel(), DataLoader(DS), datamodule=L.LightningDataModule())


def test_no_training_data_fails_before_anything_runs(tmp_path) -> None:
    started = []

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(4, 1)

        def on_fit_start(self):
            started.append(True)

        def training_step(self, batch, batch_idx):
            return self.l(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    t = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=False)
    with pytest.raises(MisconfigurationException, match="No training data"):
        t.fit(M())
    assert started == []


@pytest.mark.parametrize("container", ["list", "dict"])
def test_several_training_loaders_cycle_the_shorter_ones(tmp_path, container) -> None:
    long = DataLoader(TensorDataset(torch.arange(12.0).view(12, 1)), batch_size=4)  # 3 batches
    short = DataLoader(TensorDataset(torch.arange(100.0, 104.0).view(4, 1)), batch_size=2)  # 2 batches
    seen = []

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            parts = list(batch.values()) if isinstance(batch, dict) else batch
            seen.append([p[0][:, 0].tolist() for p in parts])
            return sum((p[0] * self.w).sum() for p in parts)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    loaders = [long, short] if container == "list" else {"long": long, "short": short}
    t = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, enable_progress_bar=False, logger=False,
                  enable_checkpointing=False, enable_model_summary=False)
    t.fit(M(), loaders)
    assert t.num_training_batches == 3
    assert seen == [
        [[0, 1, 2, 3], [100, 101]],
        [[4, 5, 6, 7], [102, 103]],
        [[8, 9, 10, 11], [100, 101]],
    ]


def test_combined_loader_modes() -> None:
    a, b = [1, 2, 3], [10, 20]
    assert list(CombinedLoader([a, b], "min_size")) == [[1, 10], [2, 20]]
    assert list(CombinedLoader([a, b], "max_size")) == [[1, 10], [2, 20], [3, None]]
    assert list(CombinedLoader({"x": a, "y": b}, "sequential")) == [1, 2, 3, 10, 20]
    assert len(CombinedLoader([a, b])) == 3
    with pytest.raises(MisconfigurationException, match="mode"):
        CombinedLoader([a], "zip")


def test_datamodule_str_lists_each_loaders_dataset_size():
    import os

    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    class DM(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(make_dataset(16), batch_size=4)

        def val_dataloader(self):
            return [DataLoader(make_dataset(8)), DataLoader(Stream())]

        def test_dataloader(self):
            raise RuntimeError("not set up")

    assert str(DM()).split(os.linesep) == [
        "{Train dataloader: size=16}", "{Validation dataloader: 1. size=8 ; 2. size=NA}",
        "{Test dataloader: None}", "{Predict dataloader: None}"]


def test_from_datasets_passes_batch_size_and_extra_kwargs_to_init():
    class Takes(L.LightningDataModule):
        def __init__(self, other, batch_size=1):
            super().__init__()
            self.other, self.batch_size = other, batch_size

    dm = Takes.from_datasets(make_dataset(8), batch_size=4, num_workers=0, other=5)
    assert (dm.batch_size, dm.other) == (4, 5)
    with pytest.raises(TypeError, match="other"):
        Takes.from_datasets(make_dataset(8), batch_size=4)
