"""Loading checkpoints back: `load_from_checkpoint` (strict and non-strict messages,
`map_location`, hyperparameter overrides), the datamodule's and callbacks' state across a resume,
ModelCheckpoint's top-k bookkeeping across a resume (and when dropped files are deleted), and
where the default checkpoint goes."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.callbacks import Callback, ModelCheckpoint
from ferrotrain.errors import CheckpointError
from tests.conftest import make_dataset


class Net(L.LightningModule):
    def __init__(self, dim: int = 4, hidden: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = torch.nn.Linear(dim, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def _trainer(root, **kw) -> L.Trainer:
    base = dict(default_root_dir=str(root), enable_progress_bar=False, enable_model_summary=False, logger=False)
    base.update(kw)
    return L.Trainer(**base)


def _loader(n: int = 16):
    return DataLoader(make_dataset(n), batch_size=4)


@pytest.fixture
def saved(tmp_path):
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    model = Net()
    trainer.fit(model, _loader())
    path = str(tmp_path / "net.ckpt")
    trainer.save_checkpoint(path)
    return path, model


def test_load_from_checkpoint_rebuilds_from_hparams_with_overrides(saved) -> None:
    path, model = saved
    loaded = Net.load_from_checkpoint(path)
    assert loaded.hparams.hidden == 8 and loaded.hparams.lr == 0.1
    for a, b in zip(loaded.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    over = Net.load_from_checkpoint(path, lr=0.5)
    assert over.hparams.lr == 0.5
    torch.testing.assert_close(over.head.weight, model.head.weight, rtol=0, atol=0)


def test_saved_hparams_the_constructor_does_not_take_are_dropped(saved, tmp_path) -> None:
    path, _ = saved
    ckpt = L.checkpoint.load(path)
    ckpt["hyper_parameters"]["removed_option"] = 3
    edited = str(tmp_path / "edited.ckpt")
    L.checkpoint.save(edited, ckpt)
    assert Net.load_from_checkpoint(edited).hparams.hidden == 8


def test_strict_load_lists_missing_unexpected_and_misshaped_keys(saved) -> None:
    path, _ = saved

    class Other(Net):
        def __init__(self, dim: int = 4, hidden: int = 8, lr: float = 0.1) -> None:
            super().__init__(dim, hidden, lr)
            self.head = torch.nn.Linear(hidden, 2)  # mis-shaped
            self.extra = torch.nn.Linear(2, 2)  # missing from the checkpoint
            del self.body  # its keys are unexpected
            self.body2 = torch.nn.Linear(dim, hidden)

    with pytest.raises(CheckpointError) as info:
        Other.load_from_checkpoint(path)
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "Error(s) in loading state_dict for Other" in msg
    assert 'Missing key(s) in state_dict: "extra.weight", "extra.bias", "body2.weight", "body2.bias"' in msg
    assert 'Unexpected key(s) in state_dict: "body.weight", "body.bias"' in msg
    assert "size mismatch for head.weight: copying a param with shape torch.Size([1, 8]) from checkpoint" in msg
    assert path in msg


def test_non_strict_load_warns_with_the_keys_and_still_refuses_wrong_shapes(saved) -> None:
    path, model = saved

    class Wider(Net):
        def __init__(self, dim: int = 4, hidden: int = 8, lr: float = 0.1) -> None:
            super().__init__(dim, hidden, lr)
            self.extra = torch.nn.Linear(2, 2)

    with pytest.warns(UserWarning, match=r"in the model state dict but not in the checkpoint: \['extra.weight', 'extra.bias'\]"):
        loaded = Wider.load_from_checkpoint(path, strict=False)
    torch.testing.assert_close(loaded.head.weight, model.head.weight, rtol=0, atol=0)

    class Narrow(Net):
        def __init__(self, dim: int = 4, hidden: int = 8, lr: float = 0.1) -> None:
            super().__init__(dim, hidden, lr)
            del self.head

    with pytest.warns(UserWarning, match=r"not in the model state dict but in the checkpoint: \['head.weight', 'head.bias'\]"):
        Narrow.load_from_checkpoint(path, strict=False)
    with pytest.raises(CheckpointError, match="size mismatch for body.weight"):
        Net.load_from_checkpoint(path, strict=False, hidden=3)


@pytest.mark.parametrize("where", ["cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda storage, loc: storage])
def test_map_location_forms(saved, where) -> None:
    path, model = saved
    loaded = Net.load_from_checkpoint(path, map_location=where)
    assert loaded.head.weight.device.type == "cpu"
    torch.testing.assert_close(loaded.head.weight, model.head.weight, rtol=0, atol=0)


class CountingDataModule(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.served = 0
        self.loaded = None

    def train_dataloader(self):
        self.served += 1
        return _loader()

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state_dict):
        self.loaded = dict(state_dict)


class StatefulCallback(Callback):
    def __init__(self) -> None:
        self.batches = 0
        self.restored = None
        self.hook_saw = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state_dict):
        self.restored = dict(state_dict)
        self.batches = state_dict["batches"]

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["seen_by_callback"] = self.batches

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.hook_saw = checkpoint["seen_by_callback"]


def test_datamodule_and_callback_state_survive_a_resume(tmp_path) -> None:
    cb = StatefulCallback()
    dm = CountingDataModule()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[cb], enable_checkpointing=False)
    trainer.fit(Net(), datamodule=dm)
    path = str(tmp_path / "two.ckpt")
    trainer.save_checkpoint(path)
    ckpt = L.checkpoint.load(path)
    assert ckpt["CountingDataModule"] == {"served": 1}
    assert ckpt["callbacks"]["StatefulCallback"] == {"batches": 8}
    assert ckpt["seen_by_callback"] == 8

    cb2, dm2 = StatefulCallback(), CountingDataModule()
    _trainer(tmp_path, max_epochs=3, callbacks=[cb2], enable_checkpointing=False).fit(Net(), datamodule=dm2, ckpt_path=path)
    assert dm2.loaded == {"served": 1}
    assert cb2.restored == {"batches": 8} and cb2.hook_saw == 8
    assert cb2.batches == 12  # 8 restored + the 4 batches of the third epoch


class ScriptedLoss(Net):
    """Logs a val_loss chosen per epoch, so the top k is known in advance."""

    LOSSES = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0]

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(self.LOSSES[self.current_epoch]))


def _ckpts(folder) -> list:
    return sorted(f for f in os.listdir(folder) if f.endswith(".ckpt"))


def test_top_k_bookkeeping_survives_a_resume(tmp_path) -> None:
    def run(root, epochs, ckpt_path=None):
        cb = ModelCheckpoint(dirpath=str(tmp_path / root), monitor="val_loss", save_top_k=2, filename="{epoch}")
        _trainer(tmp_path, max_epochs=epochs, callbacks=[cb]).fit(ScriptedLoss(), _loader(), _loader(8), ckpt_path=ckpt_path)
        return cb

    full = run("full", 6)
    first = run("resumed", 3)
    assert _ckpts(first.dirpath) == ["epoch=1.ckpt", "epoch=2.ckpt"]
    resumed = run("resumed", 6, ckpt_path=os.path.join(first.dirpath, "epoch=2.ckpt"))
    assert _ckpts(full.dirpath) == ["epoch=3.ckpt", "epoch=4.ckpt"]
    # The checkpoint the run resumed from is never deleted by top-k, as in Lightning.
    assert _ckpts(resumed.dirpath) == ["epoch=2.ckpt", "epoch=3.ckpt", "epoch=4.ckpt"]
    rel = lambda cb: {os.path.basename(k): float(v) for k, v in cb.best_k_models.items()}  # noqa: E731
    assert rel(resumed) == rel(full) == {"epoch=3.ckpt": 1.0, "epoch=4.ckpt": 2.0}
    assert os.path.basename(resumed.best_model_path) == "epoch=3.ckpt"
    assert float(resumed.best_model_score) == 1.0
    assert os.path.basename(resumed.kth_best_model_path) == "epoch=4.ckpt"


def test_a_file_dropped_from_the_top_k_outlives_the_save_that_replaces_it(tmp_path) -> None:
    seen = []

    class Look(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(_ckpts(tmp_path / "checkpoints") if (tmp_path / "checkpoints").exists() else [])

    ckpt_cb = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), filename="{epoch}")
    _trainer(tmp_path, max_epochs=3, callbacks=[ckpt_cb, Look()]).fit(Net(), _loader())
    # epoch=1.ckpt replaced epoch=0.ckpt in the top 1 while it was possibly still being written:
    # epoch=0.ckpt is deleted only once epoch=1.ckpt is durable (at the next save here).
    assert "epoch=0.ckpt" in seen[2]
    assert _ckpts(tmp_path / "checkpoints") == ["epoch=2.ckpt"]


def test_default_checkpointing_without_a_logger_saves_under_default_root_dir(tmp_path) -> None:
    # As Lightning 2.x: `<default_root_dir>/checkpoints/` with logger=False (with the default
    # logger: `<default_root_dir>/lightning_logs/version_0/checkpoints/`).
    _trainer(tmp_path, max_epochs=2).fit(Net(), _loader())
    assert _ckpts(tmp_path / "checkpoints") == ["epoch=1-step=8.ckpt"]
