"""Paths through fsspec: `memory://` (fsspec's in-process filesystem) as a CSVLogger save dir,
as `default_root_dir`, a ModelCheckpoint dirpath and `trainer.save_checkpoint` target, and a
resume with `ckpt_path` from it. Each test uses its own memory:// folder."""

from __future__ import annotations

import csv
import io
import uuid

import fsspec
import pytest

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
