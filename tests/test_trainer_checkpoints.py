"""Checkpoints from the Trainer's side: ModelCheckpoint's files and choices, exact resume
(at epoch ends and mid-epoch), `ckpt_path="best"/"last"`, and loading a module back."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.callbacks import ModelCheckpoint
from ferrotrain.errors import MisconfigurationException
from tests.conftest import BoringModel, make_dataset


class NoisyModel(L.LightningModule):
    """Dropout and momentum and a scheduler: everything resume must restore to be exact."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)}


def _trainer(root, **kw) -> L.Trainer:
    base = dict(default_root_dir=str(root), enable_progress_bar=False, enable_model_summary=False, logger=False)
    base.update(kw)
    return L.Trainer(**base)


def _loaders():
    ds = make_dataset(40)
    return DataLoader(ds, batch_size=4, shuffle=True), DataLoader(ds, batch_size=20)


def test_default_checkpoint_file_is_named_and_readable(tmp_path) -> None:
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=2, enable_progress_bar=False, enable_model_summary=False)
    train, val = _loaders()
    trainer.fit(NoisyModel(), train, val)
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["epoch=1-step=20.ckpt"]
    # torch's own loader, with its defaults (weights_only=True), reads Lightning's dict.
    ckpt = torch.load(str(folder / "epoch=1-step=20.ckpt"))
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 20)
    assert {"state_dict", "loops", "callbacks", "optimizer_states", "lr_schedulers", "pytorch-lightning_version"} <= set(ckpt)
    model = trainer.lightning_module
    torch.testing.assert_close(ckpt["state_dict"]["net.0.weight"], model.net[0].weight.detach(), rtol=0, atol=0)


def test_top_k_by_monitored_metric_and_save_last(tmp_path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2, save_last=True,
                           filename="{epoch}-{val_loss:.3f}")
    trainer = _trainer(tmp_path, max_epochs=4, callbacks=[ckpt])
    train, val = _loaders()
    trainer.fit(NoisyModel(), train, val)
    files = sorted(os.listdir(tmp_path / "ck"))
    assert "last.ckpt" in files and len(files) == 3
    assert len(ckpt.best_k_models) == 2
    assert ckpt.best_model_path == min(ckpt.best_k_models, key=lambda p: float(ckpt.best_k_models[p]))
    assert float(ckpt.best_model_score) == pytest.approx(min(float(v) for v in ckpt.best_k_models.values()))
    assert os.path.basename(ckpt.best_model_path).startswith("epoch=")
    assert "val_loss=" in os.path.basename(ckpt.best_model_path)


def test_monitor_missing_is_a_clear_error(tmp_path) -> None:
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(monitor="val_acc")])
    train, val = _loaders()
    with pytest.raises(MisconfigurationException, match="val_acc.*val_loss"):
        trainer.fit(NoisyModel(), train, val)


def _final_params(model) -> list:
    return [p.detach().clone() for p in model.parameters()]


def test_resume_at_epoch_end_is_bit_identical(tmp_path) -> None:
    train, val = _loaders()
    L.seed_everything(7, verbose=False)
    full = NoisyModel()
    _trainer(tmp_path / "a", max_epochs=4, enable_checkpointing=False).fit(full, train, val)

    L.seed_everything(7, verbose=False)
    first = NoisyModel()
    ck = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    _trainer(tmp_path / "b", max_epochs=2, callbacks=[ck]).fit(first, train, val)
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG state it starts with
    resumed = NoisyModel()
    trainer = _trainer(tmp_path / "c", max_epochs=4, callbacks=[ModelCheckpoint(dirpath=tmp_path / "c")])
    trainer.fit(resumed, train, val, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer.global_step == 40 and trainer.current_epoch == 4
    for a, b in zip(_final_params(full), _final_params(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_mid_epoch_skips_trained_batches_and_is_bit_identical(tmp_path) -> None:
    train, val = _loaders()
    L.seed_everything(3, verbose=False)
    full = NoisyModel()
    every = ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=7, save_top_k=-1)
    _trainer(tmp_path / "a", max_epochs=3, callbacks=[every]).fit(full, train, val)
    mid = tmp_path / "a" / "epoch=1-step=14.ckpt"
    assert mid.exists(), sorted(os.listdir(tmp_path / "a"))

    seen = []

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.current_epoch, batch_idx))

    torch.manual_seed(999)
    resumed = NoisyModel()
    trainer = _trainer(tmp_path / "b", max_epochs=3, callbacks=[Count()], enable_checkpointing=False)
    trainer.fit(resumed, train, val, ckpt_path=str(mid))
    assert seen[0] == (1, 4), "resumes after the 14th batch: epoch 1, batch 4"
    assert len(seen) == 30 - 14
    for a, b in zip(_final_params(full), _final_params(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ckpt_path_best_and_last(tmp_path) -> None:
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[ck])
    train, val = _loaders()
    model = NoisyModel()
    trainer.fit(model, train, val)
    best = trainer.validate(model, val, ckpt_path="best", verbose=False)
    assert trainer.ckpt_path == ck.best_model_path
    assert best[0]["val_loss"] == pytest.approx(float(ck.best_model_score), rel=1e-5)
    trainer.validate(model, val, ckpt_path="last", verbose=False)
    assert trainer.ckpt_path == ck.last_model_path


def test_ckpt_path_best_without_checkpoint_callback_is_an_error(tmp_path, loaders) -> None:
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    model = BoringModel()
    train, val = loaders
    trainer.fit(model, train)
    with pytest.raises(MisconfigurationException, match="ModelCheckpoint"):
        trainer.test(model, val, ckpt_path="best")


def test_save_checkpoint_and_load_from_checkpoint(tmp_path) -> None:
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    train, val = _loaders()
    model = NoisyModel(lr=0.02)
    trainer.fit(model, train, val)
    path = tmp_path / "manual.ckpt"
    trainer.save_checkpoint(path)
    loaded = NoisyModel.load_from_checkpoint(path)
    assert loaded.hparams.lr == 0.02
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    weights_only = tmp_path / "weights.ckpt"
    trainer.save_checkpoint(weights_only, weights_only=True)
    with pytest.raises(Exception, match="weights"):
        _trainer(tmp_path, max_epochs=2, enable_checkpointing=False).fit(NoisyModel(), train, val, ckpt_path=str(weights_only))


def test_evaluating_without_a_model_after_fit_uses_the_best_checkpoint(tmp_path) -> None:
    """Lightning's rule for `validate/test/predict()` without a model after `fit`."""
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss")
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[ck])
    train, val = _loaders()
    trainer.fit(NoisyModel(), train, val)
    with pytest.warns(UserWarning, match="best model of the previous `fit` call will be used"):
        out = trainer.validate(dataloaders=val, verbose=False)
    assert trainer.ckpt_path == ck.best_model_path
    assert out[0]["val_loss"] == pytest.approx(float(ck.best_model_score), rel=1e-5)

    quiet = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    quiet.fit(NoisyModel(), train, val)
    with pytest.warns(UserWarning, match="without a model"), pytest.raises(MisconfigurationException, match="ModelCheckpoint"):
        quiet.test(dataloaders=val)


def test_ckpt_path_last_without_a_last_checkpoint_warns_and_starts_fresh(tmp_path) -> None:
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "none")])
    train, val = _loaders()
    with pytest.warns(UserWarning, match='there is no last checkpoint available'):
        trainer.fit(NoisyModel(), train, val, ckpt_path="last")
    assert trainer.global_step == 10


def test_save_top_k_1_keeps_only_the_newest_file_while_training(tmp_path) -> None:
    # The file a new checkpoint replaces is deleted by the background writer at the next save
    # (once the new one is durable): during training at most the previous and the newest exist
    # (the newest may still be in flight).
    seen = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            folder = tmp_path / "ck"
            seen.append(sorted(p.name for p in folder.glob("*.ckpt")) if folder.exists() else [])

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=1)
    trainer = L.Trainer(max_epochs=4, callbacks=[ckpt, Spy()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_train_batches=2)
    trainer.fit(BoringModel(), DataLoader(make_dataset(), batch_size=8))
    assert seen[0] == []
    assert all(len(names) <= 2 for names in seen)
    assert any(names for names in seen)
    assert [p.name for p in (tmp_path / "ck").glob("*.ckpt")] == [os.path.basename(ckpt.best_model_path)]
    assert not list((tmp_path / "ck").glob(".*.tmp"))


def _exception_scenario(L, root, fail_at):
    """A fit that raises at step `fail_at` (or never): which checkpoint files are left."""
    from importlib import import_module

    from tests.lightning_ref import is_lightning

    callbacks = import_module("lightning.pytorch.callbacks" if is_lightning(L) else "ferrotrain.callbacks")

    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if self.global_step == fail_at:
                raise ValueError("boom")
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ck = callbacks.ModelCheckpoint(dirpath=os.path.join(root, "ck"), save_last=True, save_on_exception=True,
                                   every_n_epochs=2)
    t = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[ck], default_root_dir=root)
    import warnings

    try:
        with warnings.catch_warnings():
            if is_lightning(L):
                warnings.simplefilter("ignore")  # Lightning's own deprecation notices
            t.fit(M(), DataLoader(make_dataset(8), batch_size=2))
        raised = False
    except ValueError:
        raised = True
    files = sorted(os.listdir(os.path.join(root, "ck")))
    return raised, files, os.path.basename(ck.last_model_path)


def test_save_on_exception_and_save_last_at_train_end(tmp_path) -> None:
    from tests.lightning_ref import libraries

    for L_ in libraries():
        root = str(tmp_path / L_.__name__)
        assert _exception_scenario(L_, root + "-fails", 2) == (True, ["epoch=0-step=2.ckpt", "last.ckpt"], "last.ckpt")
        # No epoch-end save was due (every 2 epochs), yet `save_last` leaves `last.ckpt`.
        assert _exception_scenario(L_, root + "-ends", 99) == (False, ["last.ckpt"], "last.ckpt")
    from ferrotrain.checkpoint import load

    assert load(str(tmp_path / "ferrotrain-fails" / "ck" / "epoch=0-step=2.ckpt"))["global_step"] == 2


def test_ckpt_path_last_picks_the_last_checkpoint_not_the_newest_file(tmp_path):
    """A fresh ModelCheckpoint finds `last.ckpt` in its folder even when a top-k file there is
    newer (or written in the same mtime tick); among `last` versions the higher one wins a tie."""
    import os

    import ferrotrain as L
    from tests.conftest import BoringModel, make_dataset
    from torch.utils.data import DataLoader

    def trainer(**kw):
        return L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, enable_model_summary=False,
                         enable_progress_bar=False, logger=False, default_root_dir=str(tmp_path), **kw)

    loader = DataLoader(make_dataset(16), batch_size=8)
    trainer(callbacks=[L.callbacks.ModelCheckpoint(save_last=True)]).fit(BoringModel(), loader)
    folder = tmp_path / "checkpoints"
    (top_k,) = [p for p in folder.iterdir() if not p.name.startswith("last")]
    last = folder / "last.ckpt"
    os.utime(top_k, ns=(last.stat().st_mtime_ns + 10**9,) * 2)
    t = trainer(callbacks=[L.callbacks.ModelCheckpoint()], max_steps=1)
    t.fit(BoringModel(), loader, ckpt_path="last")
    assert t.ckpt_path == str(last)

    versioned = folder / "last-v1.ckpt"
    versioned.write_bytes(last.read_bytes())
    same = last.stat().st_mtime_ns
    os.utime(versioned, ns=(same, same))
    t = trainer(callbacks=[L.callbacks.ModelCheckpoint()], max_steps=1)
    t.fit(BoringModel(), loader, ckpt_path="last")
    assert t.ckpt_path == str(versioned)


def test_newest_checkpoint_fallback_orders_same_tick_files_by_step(tmp_path):
    """Without a `last` file, the newest complete checkpoint is the fallback; files that share
    an mtime are ordered by the numbers in their names (step=10 after step=9)."""
    import os

    from ferrotrain.trainer.checkpointing import _latest_in

    for name in ("step=9.ckpt", "step=10.ckpt", ".step=11.ckpt.123.0.tmp"):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(10**18, 10**18))
    assert os.path.basename(_latest_in(str(tmp_path), "last")) == "step=10.ckpt"
    (tmp_path / "last.ckpt").write_bytes(b"x")
    os.utime(tmp_path / "last.ckpt", ns=(10**9, 10**9))  # older, but a `last` file wins
    assert os.path.basename(_latest_in(str(tmp_path), "last")) == "last.ckpt"


class _WideModel(L.LightningModule):
    """Weights and Adam states large enough (12 MiB) that ModelCheckpoint's copy of them runs
    in the background, during the next forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1024, 1024)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _wide_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 1024, generator=g)), batch_size=4)


class _RecordAtEpochEnd(L.Callback):
    """What ModelCheckpoint saves right after (it runs last): the weights and Adam's moments."""

    def __init__(self) -> None:
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        moments = [opt.state[p]["exp_avg"].clone() for p in pl_module.parameters()]
        self.seen.append(({k: v.clone() for k, v in pl_module.state_dict().items()}, moments))


def test_checkpoints_copied_during_the_next_step_hold_the_state_at_the_save(tmp_path) -> None:
    torch.manual_seed(0)
    record = _RecordAtEpochEnd()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[record, ckpt])
    model = _WideModel()
    trainer.fit(model, _wide_loader())
    for epoch, (weights, moments) in enumerate(record.seen):
        saved = torch.load(tmp_path / "ckpts" / f"epoch={epoch}-step={4 * (epoch + 1)}.ckpt")
        assert saved["state_dict"].keys() == weights.keys()
        for k in weights:
            assert torch.equal(saved["state_dict"][k], weights[k]), (epoch, k)
        for i, m in enumerate(moments):
            assert torch.equal(saved["optimizer_states"][0]["state"][i]["exp_avg"], m), (epoch, i)
    # Training itself is unchanged by the background copies: the same weights as without checkpoints.
    torch.manual_seed(0)
    plain = _WideModel()
    _trainer(tmp_path / "plain", max_epochs=3, enable_checkpointing=False).fit(plain, _wide_loader())
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_resuming_from_a_checkpoint_copied_during_the_next_step_is_exact(tmp_path) -> None:
    torch.manual_seed(0)
    straight = _WideModel()
    _trainer(tmp_path / "a", max_epochs=3, enable_checkpointing=False).fit(straight, _wide_loader())
    torch.manual_seed(0)
    first = _WideModel()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)
    _trainer(tmp_path / "b", max_epochs=2, callbacks=[ckpt]).fit(first, _wide_loader())
    resumed = _WideModel()
    _trainer(tmp_path / "c", max_epochs=3, enable_checkpointing=False).fit(
        resumed, _wide_loader(), ckpt_path=str(tmp_path / "ckpts" / "epoch=0-step=4.ckpt"))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_second_run_keeps_the_first_runs_last_checkpoint_and_writes_last_v1(tmp_path) -> None:
    for _ in range(2):
        cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=0, save_last=True)
        _trainer(tmp_path, max_epochs=2, callbacks=[cb]).fit(BoringModel(), DataLoader(make_dataset(8), batch_size=4))
    assert sorted(os.listdir(tmp_path / "ckpts")) == ["last-v1.ckpt", "last.ckpt"]
    assert os.path.basename(cb.last_model_path) == "last-v1.ckpt"


def test_to_yaml_writes_the_top_k_paths_and_scores(tmp_path) -> None:
    import yaml

    cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val_loss", save_top_k=2)
    train, val = _loaders()
    _trainer(tmp_path, max_epochs=3, callbacks=[cb]).fit(NoisyModel(), train, val)
    cb.to_yaml()
    with open(tmp_path / "ckpts" / "best_k_models.yaml") as f:
        saved = yaml.safe_load(f)
    assert saved == {k: float(v) for k, v in cb.best_k_models.items()} and len(saved) == 2
