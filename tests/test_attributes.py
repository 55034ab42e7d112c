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


# --- the rest of Lightning's Trainer and module surface --------------------------------------------

from tests.lightning_ref import callbacks_module, check, is_lightning, libraries  # noqa: E402


def _views_scenario(L) -> dict:
    """Trainer views read inside and after a fit, the same under Lightning (crosscheck)."""
    from torch.utils.data import DataLoader

    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.last = []

        def training_step(self, batch, batch_idx):
            self.last.append(self.trainer.is_last_batch)
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            pass

        def test_step(self, batch, batch_idx):
            pass

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return batch[0].sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    callbacks = callbacks_module(L)
    stop = callbacks.EarlyStopping(monitor="x", check_on_train_epoch_end=False)
    t = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, val_check_interval=2, callbacks=[stop], num_sanity_val_steps=0,
                  limit_val_batches=0 if False else 1.0)
    m = M()
    before = [t.enable_validation, t.overfit_batches, t.reload_dataloaders_every_n_epochs, t.barebones,
              t.received_sigterm, t.scaler]
    t.callbacks.remove(stop)
    t.fit(m, DataLoader(make_dataset(10), batch_size=2), DataLoader(make_dataset(4), batch_size=2))
    after_fit = t.enable_validation
    test_loader = DataLoader(make_dataset(4), batch_size=2)
    t.test(m, test_loader, verbose=False)
    test_loaders = t.test_dataloaders is test_loader
    pred_loaders = [DataLoader(make_dataset(4), batch_size=2), DataLoader(make_dataset(2), batch_size=2)]
    t.predict(m, pred_loaders)
    predict_loaders = len(t.predict_dataloaders)
    after_predict = t.enable_validation
    t.validate(m, DataLoader(make_dataset(4), batch_size=2), verbose=False)
    return dict(before=before, last=m.last, enable_validation=[after_fit, after_predict, t.enable_validation],
                val_check_batch=t.val_check_batch, early=[type(c).__name__ for c in t.early_stopping_callbacks],
                test_loaders=test_loaders, predict_loaders=predict_loaders)


def test_trainer_views_match_lightning() -> None:
    check(_views_scenario, dict(before=[False, 0.0, 0, False, False, None], last=[False] * 4 + [True],
                                enable_validation=[True, False, True], val_check_batch=2, early=[], test_loaders=True,
                                predict_loaders=2))


def test_trainer_print_and_init_module(capsys) -> None:
    t = L.Trainer(logger=False, enable_progress_bar=False, precision="bf16-true")
    t.print("hello", 3)
    assert capsys.readouterr().out == "hello 3\n"
    with t.init_module():
        layer = torch.nn.Linear(3, 3)
    assert layer.weight.dtype == torch.bfloat16 and layer.weight.device.type == "cpu"
    assert torch.get_default_dtype() == torch.float32
    with L.Trainer(logger=False, enable_progress_bar=False).init_module():
        assert torch.nn.Linear(2, 2).weight.dtype == torch.float32


class _Exportable(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        self.example_input_array = torch.randn(2, 4)

    def forward(self, x):
        return self.net(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
@pytest.mark.parametrize("method", ["script", "trace"])
def test_to_torchscript_gives_the_same_outputs(tmp_path, method) -> None:
    model = _Exportable()
    model.train()
    path = tmp_path / "m.pt"
    scripted = model.to_torchscript(file_path=path, method=method)
    assert model.training  # its mode is left as it was
    x = torch.randn(5, 4)
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(ValueError, match="method"):
        model.to_torchscript(method="compile")


def test_toggled_optimizer_and_strict_loading(tmp_path) -> None:
    class Two(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(2, 2)
            self.b = torch.nn.Linear(2, 2)
            self.automatic_optimization = False
            self.inside = None

        def training_step(self, batch, batch_idx):
            opt_a, _ = self.optimizers()
            with self.toggled_optimizer(opt_a):
                self.inside = (self.a.weight.requires_grad, self.b.weight.requires_grad)
            self.after = (self.a.weight.requires_grad, self.b.weight.requires_grad)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]

    m = Two()
    t = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=tmp_path)
    t.fit(m, DataLoader(make_dataset(4, dim=2), batch_size=2))
    assert m.inside == (True, False) and m.after == (True, True)
    assert m.strict_loading is True
    ckpt = t.checkpoint_callback.best_model_path or str(tmp_path / "m.ckpt")
    t.save_checkpoint(ckpt)

    class Bigger(Two):
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match="Missing key"):
        Bigger.load_from_checkpoint(ckpt)
    with pytest.warns(UserWarning, match=r"not in the checkpoint: \['c.weight', 'c.bias'\]"):
        loaded = Bigger.load_from_checkpoint(ckpt, strict=False)
    torch.testing.assert_close(loaded.a.weight, m.a.weight)

    class Relaxed(Bigger):
        def __init__(self) -> None:
            super().__init__()
            self.strict_loading = False

    assert Relaxed().strict_loading is False
    with pytest.warns(UserWarning, match="not in the checkpoint"):
        torch.testing.assert_close(Relaxed.load_from_checkpoint(ckpt).a.weight, m.a.weight)
    assert L.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY == "hyper_parameters"
