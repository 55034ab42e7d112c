"""The trainer and module attributes user code reads, checked from inside a real run."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from tests.conftest import make_dataset


class Probe(L.LightningModule):
    def __init__(self, hidden: int = 3, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)
        self.seen = {}

    def training_step(self, batch, batch_idx):
        t = self.trainer
        if batch_idx == 0 and self.current_epoch == 0:
            self.seen.update(
                training=t.training, sanity=t.sanity_checking, device=self.device, step=self.global_step,
                epoch=self.current_epoch, n_train=t.num_training_batches, n_val=list(t.num_val_batches),
                stepping=t.estimated_stepping_batches, zero=t.is_global_zero, world=t.world_size,
                ranks=(t.global_rank, t.local_rank, self.global_rank, self.local_rank),
                module=t.lightning_module is self, dm=t.datamodule, max_epochs=t.max_epochs, max_steps=t.max_steps,
                should_stop=t.should_stop,
            )
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        if self.trainer.sanity_checking:
            self.seen["sanity_seen"] = True

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_attributes_inside_and_after_fit(tmp_path, capsys) -> None:
    model = Probe(hidden=5)
    t = L.Trainer(default_root_dir=str(tmp_path), max_epochs=2, enable_progress_bar=False,
                  enable_model_summary=False, logger=False, enable_checkpointing=False)
    ds = make_dataset(32)
    t.fit(model, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16))
    s = model.seen
    assert s["training"] and not s["sanity"] and s["sanity_seen"]
    assert s["device"] == torch.device("cpu") and s["step"] == 0 and s["epoch"] == 0
    assert s["n_train"] == 4 and s["n_val"] == [2] and s["stepping"] == 8
    assert s["zero"] and s["world"] == 1 and s["ranks"] == (0, 0, 0, 0)
    assert s["module"] and s["dm"] is None and s["max_epochs"] == 2 and s["max_steps"] == -1
    assert s["should_stop"] is False
    assert (t.global_step, t.current_epoch) == (8, 2)
    assert model.trainer is t and model.global_step == 8 and model.current_epoch == 2
    assert t.log_dir == str(tmp_path) and t.default_root_dir == str(tmp_path)
    assert model.hparams.hidden == 5 and model.hparams["lr"] == 0.1
    assert dict(model.hparams_initial) == {"hidden": 5, "lr": 0.1}
    assert not t.training and not t.sanity_checking and t.state.finished


def test_module_print_and_trainer_free_module() -> None:
    m = Probe()
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        _ = m.trainer
    assert m.current_epoch == 0 and m.global_step == 0


def test_save_hyperparameters_variants() -> None:
    class A(L.LightningModule):
        def __init__(self, a: int = 1, b: str = "x", *, c=None, **extra) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["c"])

    m = A(2, c=torch.nn.Linear(1, 1), d=4)
    assert dict(m.hparams) == {"a": 2, "b": "x", "d": 4}

    class B(L.LightningModule):
        def __init__(self, a: int = 1, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters("a")

    assert dict(B().hparams) == {"a": 1}

    class C(L.LightningModule):
        def __init__(self, cfg: dict) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)

    assert dict(C({"lr": 3}).hparams) == {"lr": 3}


@pytest.mark.parametrize(
    "returns,n_opt,n_sched",
    [
        ("optimizer", 1, 0),
        ("list", 1, 0),
        ("tuple_of_lists", 1, 1),
        ("dict", 1, 1),
        ("dict_with_config", 1, 1),
    ],
)
def test_configure_optimizers_shapes(tmp_path, returns, n_opt, n_sched) -> None:
    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1)
            return {
                "optimizer": opt,
                "list": [opt],
                "tuple_of_lists": ([opt], [sched]),
                "dict": {"optimizer": opt, "lr_scheduler": sched},
                "dict_with_config": {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}},
            }[returns]

    t = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, enable_progress_bar=False, logger=False,
                  enable_checkpointing=False, enable_model_summary=False)
    t.fit(M(), DataLoader(make_dataset(8), batch_size=4))
    assert len(t.optimizers) == n_opt and len(t.lr_scheduler_configs) == n_sched
