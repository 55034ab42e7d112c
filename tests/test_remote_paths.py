"""Paths through fsspec: `memory://` (fsspec's in-process filesystem) as a CSVLogger save dir,
as `default_root_dir`, a ModelCheckpoint dirpath and `trainer.save_checkpoint` target, and a
resume with `ckpt_path` from it. Each test uses its own memory:// folder."""

from __future__ import annotations

import csv
import io
import uuid

import fsspec
import pytest
import torch

import ferrotrain as L
from ferrotrain.loggers import CSVLogger
from ferrotrain.utilities.cloud_io import get_filesystem, is_remote
from tests.conftest import BoringModel


@pytest.fixture
def mem_root():
    root = f"memory://ft-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _read_csv(fs, path):
    with fs.open(path, "r") as fp:
        return list(csv.DictReader(io.StringIO(fp.read())))


def test_csv_logger_writes_into_memory_fs(mem_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a literal local "memory:" folder would land here
    logger = CSVLogger(save_dir=mem_root)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.log_metrics({"loss": 0.25, "acc": 1.0}, step=1)  # a new column: the file is rewritten
    logger.finalize("success")
    fs = get_filesystem(mem_root)
    assert logger.log_dir == f"{mem_root}/lightning_logs/version_0"
    rows = _read_csv(fs, f"{logger.log_dir}/metrics.csv")
    assert [(r["step"], r["loss"], r["acc"]) for r in rows] == [("0", "0.5", ""), ("1", "0.25", "1.0")]
    assert fs.cat(f"{logger.log_dir}/hparams.yaml").decode().strip() == "lr: 0.1"
    assert CSVLogger(save_dir=mem_root).version == 1
    assert not (tmp_path / "memory:").exists()


def test_is_remote_tells_protocols_apart(tmp_path):
    assert is_remote("memory://x") and is_remote("s3://bucket/x")
    assert not is_remote(str(tmp_path)) and not is_remote("file:///tmp") and not is_remote("relative/dir")


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(ImportError, match="'nosuchproto'"):
        get_filesystem("nosuchproto://bucket/x")


def _trainer(root, **kwargs):
    return L.Trainer(default_root_dir=root, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_default_root_dir_in_memory_fs_holds_logs_and_checkpoints(mem_root, loaders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = loaders
    trainer = _trainer(mem_root, max_epochs=2, logger=CSVLogger(mem_root))
    trainer.fit(BoringModel(), train, val)
    fs = get_filesystem(mem_root)
    ckpt_dir = f"{mem_root}/lightning_logs/version_0/checkpoints"
    assert trainer.checkpoint_callback.dirpath == ckpt_dir
    # the default ModelCheckpoint keeps only the latest file: the epoch-0 one was removed remotely
    assert [p.rsplit("/", 1)[1] for p in fs.ls(ckpt_dir, detail=False)] == ["epoch=1-step=16.ckpt"]
    assert fs.isfile(f"{mem_root}/lightning_logs/version_0/metrics.csv")
    assert not (tmp_path / "memory:").exists()


def test_save_checkpoint_and_resume_from_memory_fs(mem_root, loaders, quiet):
    train, val = loaders
    first = L.Trainer(**quiet, max_epochs=1)
    model = BoringModel()
    first.fit(model, train, val)
    path = f"{mem_root}/manual/one.ckpt"
    first.save_checkpoint(path)
    assert get_filesystem(path).isfile(path)

    resumed = BoringModel()
    second = L.Trainer(**quiet, max_epochs=2)
    second.fit(resumed, train, val, ckpt_path=path)
    assert second.current_epoch == 2 and second.global_step == 16

    loaded = BoringModel.load_from_checkpoint(path)
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert a.detach().equal(b.detach())


def test_model_checkpoint_dirpath_in_memory_fs_keeps_top_k(mem_root, loaders, quiet):
    from ferrotrain.callbacks import ModelCheckpoint

    train, val = loaders
    cb = ModelCheckpoint(dirpath=f"{mem_root}/ckpts", save_top_k=2, monitor="val_loss", save_last=True)
    assert cb.dirpath == f"{mem_root}/ckpts"  # not made into a local real path
    quiet = {**quiet, "enable_checkpointing": True}
    trainer = L.Trainer(**quiet, max_epochs=3, callbacks=[cb])
    trainer.fit(BoringModel(), train, val)
    fs = get_filesystem(mem_root)
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{mem_root}/ckpts", detail=False))
    assert len(names) == 3 and "last.ckpt" in names
    assert set(cb.best_k_models) | {cb.last_model_path} == {f"{mem_root}/ckpts/{n}" for n in names}
    resumed = L.Trainer(**quiet, max_epochs=4, callbacks=[ModelCheckpoint(dirpath=f"{mem_root}/ckpts")])
    resumed.fit(BoringModel(), train, val, ckpt_path="last")
    assert resumed.global_step == 32


def test_missing_remote_checkpoint_is_not_found(mem_root, loaders, quiet):
    from ferrotrain.errors import CheckpointNotFoundError

    train, _ = loaders
    with pytest.raises(CheckpointNotFoundError, match="memory://"):
        L.Trainer(**quiet, max_epochs=1).fit(BoringModel(), train, ckpt_path=f"{mem_root}/absent.ckpt")


def _event_scalars(fs, log_dir):
    """{tag: [(step, value)]} of the event files in `log_dir`, read with tensorboard's own loader
    (through its gfile layer, which reads fsspec URLs)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars = {}
    for path in fs.ls(log_dir, detail=False):
        if "tfevents" not in path:
            continue
        for event in EventFileLoader(f"memory://{path.lstrip('/')}").Load():
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    import tensorboard.util.tensor_util as tensor_util

                    scalars.setdefault(value.tag, []).append((event.step, float(tensor_util.make_ndarray(value.tensor))))
                elif value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_logger_writes_event_file_into_memory_fs(mem_root, loaders, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from ferrotrain.loggers import TensorBoardLogger

    monkeypatch.chdir(tmp_path)
    train, val = loaders
    logger = TensorBoardLogger(save_dir=mem_root, name="tb")
    trainer = _trainer(mem_root, max_epochs=2, logger=logger, log_every_n_steps=4, enable_checkpointing=False)
    trainer.fit(BoringModel(), train, val)
    fs = get_filesystem(mem_root)
    assert logger.log_dir == f"{mem_root}/tb/version_0"
    scalars = _event_scalars(fs, logger.log_dir)
    assert [step for step, _ in scalars["train_loss"]] == [3, 7, 11, 15]
    assert len(scalars["val_loss"]) == 2
    assert fs.isfile(f"{logger.log_dir}/hparams.yaml")
    assert TensorBoardLogger(save_dir=mem_root, name="tb").version == 1
    assert not (tmp_path / "memory:").exists()


def test_default_logger_under_memory_root_dir_is_tensorboard_there(mem_root, loaders, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    train, _ = loaders
    trainer = _trainer(mem_root, max_epochs=1, log_every_n_steps=2, enable_checkpointing=False)
    trainer.fit(BoringModel(), train)
    assert type(trainer.logger).__name__ == "TensorBoardLogger"
    assert "train_loss" in _event_scalars(get_filesystem(mem_root), f"{mem_root}/lightning_logs/version_0")
    assert not (tmp_path / "memory:").exists()


@pytest.mark.parametrize("where", ["dirpath", "default_root_dir"])
def test_save_last_link_on_remote_dirpath_is_refused_as_lightning_does(mem_root, loaders, quiet, where):
    # fsspec has no symbolic links; Lightning raises this ValueError in `setup`, before any training
    from ferrotrain.callbacks import ModelCheckpoint

    train, _ = loaders
    if where == "dirpath":
        cb = ModelCheckpoint(dirpath=f"{mem_root}/ckpts", save_last="link")
        trainer = L.Trainer(**{**quiet, "enable_checkpointing": True}, max_epochs=1, callbacks=[cb])
    else:
        cb = ModelCheckpoint(save_last="link")
        trainer = _trainer(mem_root, max_epochs=1, logger=CSVLogger(mem_root), callbacks=[cb])
    model = BoringModel()
    with pytest.raises(ValueError, match=r"save_last='link'\)` is only supported for local file paths.*memory://"):
        trainer.fit(model, train)
    assert trainer.global_step == 0
    assert not get_filesystem(mem_root).exists(f"{mem_root}/ckpts")


def test_load_from_checkpoint_reads_an_http_url(tmp_path) -> None:
    import functools
    import http.server
    import threading

    import ferrotrain as L
    from ferrotrain.errors import CheckpointNotFoundError
    from torch.utils.data import DataLoader

    from tests.conftest import make_dataset

    model = BoringModel()
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, limit_train_batches=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, DataLoader(make_dataset(8), batch_size=4))
    trainer.save_checkpoint(tmp_path / "served.ckpt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        loaded = BoringModel.load_from_checkpoint(f"{base}/served.ckpt")
        for a, b in zip(model.parameters(), loaded.parameters()):
            assert torch.equal(a, b)
        with pytest.raises(CheckpointNotFoundError, match="missing.ckpt"):
            BoringModel.load_from_checkpoint(f"{base}/missing.ckpt")
    finally:
        server.shutdown()
        server.server_close()
