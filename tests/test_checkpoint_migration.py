"""Migration from Lightning: `.ckpt` files written by `torch.save` (by the installed Lightning, or by
hand) load into `load_from_checkpoint` and `fit(ckpt_path=...)`, the convert command writes
ferrotrain's format, and a pickle payload is never executed, by either reader."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.errors import CheckpointError
from tests.conftest import make_dataset

HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net_class(base):
    class Net(base):
        def __init__(self, dim: int = 4, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(dim, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    return Net


Net = _net_class(L.LightningModule)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False)


def _loader():
    return DataLoader(make_dataset(32), batch_size=8)


def _lightning_run(tmp_path, epochs: int):
    """Train with the installed Lightning; returns (its final weights, its checkpoint path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lightning

        LNet = _net_class(lightning.LightningModule)
        torch.manual_seed(0)
        model = LNet(lr=0.05)
        trainer = lightning.Trainer(default_root_dir=str(tmp_path), max_epochs=epochs, accelerator="cpu", **QUIET)
        trainer.fit(model, _loader())
        path = str(tmp_path / f"lightning-{epochs}.ckpt")
        trainer.save_checkpoint(path)
    return [p.detach().clone() for p in model.parameters()], path


@pytest.mark.skipif(not HAS_LIGHTNING, reason="lightning is not installed")
def test_checkpoint_written_by_lightning_loads_and_resumes(tmp_path) -> None:
    weights_2, path = _lightning_run(tmp_path, 2)
    with open(path, "rb") as f:
        assert f.read(2) == b"PK"  # really a torch.save file
    loaded = Net.load_from_checkpoint(path)
    assert loaded.hparams.lr == 0.05
    torch.testing.assert_close(list(loaded.parameters()), weights_2, rtol=0, atol=0)

    # Resume Lightning's run for a third epoch with ferrotrain: same result as Lightning's own
    # three-epoch run (momentum and scheduler state restored from the Lightning file).
    weights_3, _ = _lightning_run(tmp_path, 3)
    model = Net(lr=0.05)
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=3, **QUIET)
    trainer.fit(model, _loader(), ckpt_path=path)
    assert trainer.current_epoch == 3 and trainer.global_step == 12
    torch.testing.assert_close(list(model.parameters()), weights_3, rtol=0, atol=0)


@pytest.mark.skipif(not HAS_LIGHTNING, reason="lightning is not installed")
@pytest.mark.parametrize("how", ["save_checkpoint", "ModelCheckpoint"])
def test_lightning_resumes_a_fit_from_a_ferrotrain_checkpoint(tmp_path, how) -> None:
    # ferrotrain trains two epochs; the installed Lightning resumes from its file for a third:
    # the same weights, epoch and step as Lightning's own three-epoch run.
    weights_3, _ = _lightning_run(tmp_path, 3)
    torch.manual_seed(0)
    model = Net(lr=0.05)
    if how == "ModelCheckpoint":
        cb = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1)
        trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=2, **dict(QUIET, enable_checkpointing=True),
                            callbacks=[cb])
        trainer.fit(model, _loader())
        path = str(tmp_path / "ck" / "epoch=1-step=8.ckpt")
    else:
        trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=2, **QUIET)
        trainer.fit(model, _loader())
        path = str(tmp_path / "ferrotrain-2.ckpt")
        trainer.save_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lightning

        resumed = _net_class(lightning.LightningModule)(lr=0.05)
        lt = lightning.Trainer(default_root_dir=str(tmp_path), max_epochs=3, accelerator="cpu", **QUIET)
        lt.fit(resumed, _loader(), ckpt_path=path)
    assert (lt.current_epoch, lt.global_step) == (3, 12)
    torch.testing.assert_close(list(resumed.parameters()), weights_3, rtol=0, atol=0)


@pytest.mark.skipif(not HAS_LIGHTNING, reason="lightning is not installed")
def test_convert_command_writes_ferrotrain_format(tmp_path) -> None:
    weights, path = _lightning_run(tmp_path, 1)
    out = str(tmp_path / "converted.ckpt")
    proc = subprocess.run(
        [sys.executable, "-m", "ferrotrain.checkpoint", "convert", path, out],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python")),
    )
    assert proc.returncode == 0, proc.stderr
    assert "converted" in proc.stdout
    torch.testing.assert_close(torch.load(out)["state_dict"]["layer.weight"], weights[0], rtol=0, atol=0)
    ckpt = L.checkpoint.load(out)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4
    assert ckpt["loops"]["progress"]["epochs_processed"] == 1
    torch.testing.assert_close(Net.load_from_checkpoint(out).layer.weight, weights[0], rtol=0, atol=0)


def test_hand_made_torch_save_dict_loads(tmp_path) -> None:
    src = Net(dim=3, lr=0.2)
    path = str(tmp_path / "hand.ckpt")
    torch.save({"state_dict": src.state_dict(), "hyper_parameters": {"dim": 3, "lr": 0.2}}, path)
    loaded = Net.load_from_checkpoint(path, map_location="cpu")
    assert loaded.hparams.dim == 3
    torch.testing.assert_close(loaded.layer.weight, src.layer.weight, rtol=0, atol=0)
    out = str(tmp_path / "hand-converted.ckpt")
    L.checkpoint.convert(path, out)
    torch.testing.assert_close(L.checkpoint.load(out)["state_dict"]["layer.bias"], src.layer.bias, rtol=0, atol=0)


class _Payload:
    """Unpickling this runs `open(marker, "w")`: creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_payload_is_never_executed_via_migration(tmp_path, writer) -> None:
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.ckpt")
    evil = {"state_dict": Net().state_dict(), "hyper_parameters": {"dim": 4}, "payload": _Payload(str(marker))}
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f, protocol=2)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        Net.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, **QUIET).fit(Net(), _loader(), ckpt_path=path)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        L.checkpoint.convert(path, str(tmp_path / "out.ckpt"))
    assert not marker.exists()
    assert not (tmp_path / "out.ckpt").exists()


class _TrustedExtra:
    """A custom object a user's own Lightning checkpoint may hold (via `on_save_checkpoint`)."""

    def __init__(self, note: str) -> None:
        self.note = note


def test_weights_only_false_is_the_users_explicit_trust(tmp_path) -> None:
    # As Lightning's `weights_only` argument: refused by default with a message saying how to
    # opt in; read when the user passes weights_only=False for a file they trust.
    src = Net(dim=4)
    path = str(tmp_path / "mine.ckpt")
    torch.save({"state_dict": src.state_dict(), "hyper_parameters": {"dim": 4}, "extra": _TrustedExtra("x")}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        Net.load_from_checkpoint(path)
    loaded = Net.load_from_checkpoint(path, weights_only=False)
    torch.testing.assert_close(loaded.layer.weight, src.layer.weight, rtol=0, atol=0)
    class Checked(Net):
        def validation_step(self, batch, batch_idx):
            self.log("w", self.layer.weight.detach().sum())

    trainer = L.Trainer(default_root_dir=str(tmp_path), **QUIET)
    with pytest.raises(CheckpointError, match="mine.ckpt"):
        trainer.validate(Checked(dim=4), _loader(), ckpt_path=path, verbose=False)
    (got,) = trainer.validate(Checked(dim=4), _loader(), ckpt_path=path, verbose=False, weights_only=False)
    assert got["w"] == pytest.approx(float(src.layer.weight.detach().sum()), rel=1e-6) and trainer.ckpt_path == path


def test_pickle_payload_in_our_format_is_data_not_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)), protocol=2)
    path = str(tmp_path / "ours.ckpt")
    # The payload as a value and as raw tensor bytes: loading hands it back as bytes, unrun.
    L.checkpoint.save(path, {"state_dict": Net().state_dict(), "blob": payload,
                             "raw": torch.frombuffer(bytearray(payload), dtype=torch.uint8)})
    ckpt = L.checkpoint.load(path)
    assert ckpt["blob"] == payload and bytes(ckpt["raw"].numpy()) == payload
    Net.load_from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.skipif(not HAS_LIGHTNING, reason="lightning is not installed")
def test_mid_epoch_lightning_checkpoint_resumes_exactly(tmp_path) -> None:
    # Lightning saves after step 3 of 4 (epoch 0) and after step 6 (epoch 1): ferrotrain resumes
    # each one to the same weights as Lightning's uninterrupted run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lightning

        torch.manual_seed(0)
        model = _net_class(lightning.LightningModule)(lr=0.05)
        quiet = {k: v for k, v in QUIET.items() if k != "enable_checkpointing"}
        cb = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=3, save_top_k=-1)
        lightning.Trainer(default_root_dir=str(tmp_path), max_epochs=2, accelerator="cpu", callbacks=[cb], **quiet).fit(model, _loader())
    full = [p.detach().clone() for p in model.parameters()]
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".ckpt"))
    assert files == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]
    for name in files:
        resumed = Net(lr=0.05)
        trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=2, **QUIET)
        trainer.fit(resumed, _loader(), ckpt_path=str(tmp_path / name))
        assert trainer.global_step == 8
        torch.testing.assert_close(list(resumed.parameters()), full, rtol=0, atol=0)
