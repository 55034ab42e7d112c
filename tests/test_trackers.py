"""The experiment trackers against what their own client libraries read back: MLflow through a
local `file:` tracking store and `MlflowClient`, W&B's offline run file, Comet's offline archive.
Each test skips when its client is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import ferrotrain as L
from ferrotrain.callbacks import ModelCheckpoint
from ferrotrain.loggers import MLFlowLogger, WandbLogger
from tests.conftest import BoringModel


@pytest.fixture(autouse=True)
def _allow_mlflow_file_store(monkeypatch):
    # mlflow 3 refuses a `file:` store unless opted in; it is the store Lightning's default save_dir uses
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


class HparamsModel(BoringModel):
    def __init__(self, dim: int = 4, lr: float = 0.1) -> None:
        super().__init__(dim, lr)
        self.save_hyperparameters()


def _fit(tmp_path, loaders, logger, **kwargs):
    train, val = loaders
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=2, log_every_n_steps=2, logger=logger,
                        enable_progress_bar=False, enable_model_summary=False, **kwargs)
    model = HparamsModel()
    trainer.fit(model, train, val)
    return trainer


# --- MLFlowLogger ---------------------------------------------------------------------------------


def test_mlflow_params_metrics_and_checkpoints_read_back(tmp_path, loaders):
    mlflow = pytest.importorskip("mlflow")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(experiment_name="exp", run_name="first", tracking_uri=uri, log_model=True)
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1)
    _fit(tmp_path, loaders, logger, callbacks=[checkpoint])

    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == "first"
    assert run.data.params == {"dim": "4", "lr": "0.1"}
    history = client.get_metric_history(logger.run_id, "train_loss")
    assert [m.step for m in history] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert len(client.get_metric_history(logger.run_id, "val_loss")) == 2
    best = os.path.basename(checkpoint.best_model_path)[: -len(".ckpt")]
    artifacts = [a.path for a in client.list_artifacts(logger.run_id)]
    assert artifacts == [best]  # log_model=True: only the kept checkpoint, uploaded at the end
    files = [a.path for a in client.list_artifacts(logger.run_id, best)]
    assert files == [f"{best}/{best}.ckpt"]
    assert logger.name == client.get_experiment_by_name("exp").experiment_id
    assert logger.version == logger.run_id


def test_mlflow_save_dir_default_uri_and_prefix(tmp_path):
    pytest.importorskip("mlflow")
    logger = MLFlowLogger(save_dir=str(tmp_path / "runs"), tracking_uri=None, prefix="train")
    assert logger.save_dir == str(tmp_path / "runs")
    logger.log_metrics({"loss": 0.5}, step=3)
    logger.finalize("failed")
    run = logger.experiment.get_run(logger.run_id)
    assert run.data.metrics == {"train-loss": 0.5}
    assert run.info.status == "FAILED"


def test_mlflow_queued_metrics_are_stored_before_the_client_is_used(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(tracking_uri=uri)
    for step in range(5):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    _ = logger.experiment  # what the caller does with the client comes after the queued metrics
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(logger.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(5)]
    logger.finalize("success")


def test_mlflow_synchronous_stores_each_call_at_once(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(tracking_uri=uri, synchronous=True)
    logger.log_metrics({"loss": 0.5}, step=1)
    run_id = logger._run_id  # not `run_id`/`experiment`, which would send queued metrics first
    assert [m.value for m in mlflow.tracking.MlflowClient(uri).get_metric_history(run_id, "loss")] == [0.5]
    logger.finalize("success")


def test_mlflow_rejected_metric_is_raised_and_the_others_are_stored(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(tracking_uri=uri)
    logger.log_metrics({"ok": 1.0}, step=0)
    logger.log_metrics({"x" * 300: 1.0}, step=1)  # longer than mlflow's 250-character names
    logger.log_metrics({"ok": 2.0}, step=2)
    with pytest.raises(mlflow.exceptions.MlflowException, match="maximum length"):
        logger.finalize("success")
    client = mlflow.tracking.MlflowClient(uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "ok")] == [(0, 1.0), (2, 2.0)]


def test_mlflow_rejects_bad_log_model():
    pytest.importorskip("mlflow")
    with pytest.raises(ValueError, match="log_model"):
        MLFlowLogger(log_model="sometimes")


@pytest.mark.parametrize("cls, module, extra", [("MLFlowLogger", "mlflow", "mlflow"), ("WandbLogger", "wandb", "wandb"),
                                               ("CometLogger", "comet_ml", "comet")])
def test_missing_client_names_package_and_extra(tmp_path, cls, module, extra):
    # a real interpreter in which the client cannot be imported; importing ferrotrain still works
    script = (
        f"import sys; sys.modules[{module!r}] = None\n"
        f"from ferrotrain.loggers import {cls}\n"
        f"try:\n    {cls}()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    assert f"`{module}`" in out.stdout and f"ferrotrain[{extra}]" in out.stdout, out.stdout + out.stderr


# --- WandbLogger ----------------------------------------------------------------------------------


def _wandb_records(path):
    """The protobuf records of an offline `.wandb` run file: a 7-byte file header, then W&B's
    LevelDB-style log of 32 KiB blocks, each chunk with a 7-byte header (crc, length, type)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as fp:
        data = fp.read()
    assert data[:4] == b":W&B"
    block, offset, pending, records = 32768, 7, b"", []
    while offset + 7 <= len(data):
        left = block - offset % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            offset += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        offset += 7
        if kind == 0 and length == 0:
            break
        pending += data[offset:offset + length]
        offset += length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


# The tracker scripts' shared part: a one-layer regression and its data (run in a subprocess).
_SCRIPT_MODEL = r'''
import torch
from torch.utils.data import DataLoader, TensorDataset
import ferrotrain as L

class Model(L.LightningModule):
    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

g = torch.Generator().manual_seed(0)
data = DataLoader(TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)), batch_size=8)
'''


def test_wandb_offline_run_files_hold_config_and_metrics(tmp_path):
    # in a subprocess: wandb's service process and its global run stay out of the test process
    pytest.importorskip("wandb")
    script = _SCRIPT_MODEL + r'''
import json, os, sys, glob
from ferrotrain.loggers import WandbLogger
import wandb
logger = WandbLogger(project="proj", save_dir=sys.argv[1], offline=True, name="first")
trainer = L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=2, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=sys.argv[1])
trainer.fit(Model(), data)
run_id = logger.version
logger.log_metrics({"after_fit": 1.0}, step=100)  # queued ...
logger.experiment.log({"direct": 2.0, "trainer/global_step": 101})  # ... and logged before this
wandb.finish()
run_dir, = glob.glob(os.path.join(sys.argv[1], "wandb", f"offline-run-*-{run_id}"))
print(json.dumps({"name": logger.name, "run_dir": run_dir, "id": run_id}))
'''
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         cwd=str(tmp_path), env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["name"] == "proj"
    records = _wandb_records(os.path.join(info["run_dir"], f"run-{info['id']}.wandb"))
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    assert config["lr"] == 0.1
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    assert [h["trainer/global_step"] for h in history] == [1, 3, 5, 7, 9, 11, 13, 15, 100, 101]
    assert all(isinstance(h["train_loss"], float) for h in history[:-2])
    assert "after_fit" in history[-2] and "direct" in history[-1]


def test_wandb_rejects_offline_checkpoint_upload():
    pytest.importorskip("wandb")
    with pytest.raises(ValueError, match="log_model"):
        WandbLogger(offline=True, log_model=True)


# --- CometLogger ----------------------------------------------------------------------------------


def test_comet_offline_archive_holds_params_and_metrics(tmp_path, loaders):
    pytest.importorskip("comet_ml")
    import zipfile

    script = _SCRIPT_MODEL + r'''
import sys
from ferrotrain.loggers import CometLogger
logger = CometLogger(project="proj", online=False)
trainer = L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=2, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=sys.argv[1])
trainer.fit(Model(), data)
print(logger.version)
'''
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COMET_OFFLINE_DIRECTORY": str(tmp_path / "offline")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         cwd=str(tmp_path), env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    archive, = (tmp_path / "offline").glob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        experiment = json.loads(zf.read("experiment.json"))
        messages = [json.loads(line) for line in zf.read("messages.json").decode().splitlines() if line.strip()]
    assert experiment["project_name"] == "proj"
    params = {m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
              for m in messages if m["type"] == "parameter_msg"}
    assert params["lr"] == 0.1
    losses = [m["payload"]["metric"] for m in messages
              if m["type"] == "metric_msg" and m["payload"]["metric"]["metricName"] == "train_loss"]
    assert [(m["step"], m["epoch"]) for m in losses] == [(1, 0), (3, 0), (5, 0), (7, 0), (9, 1), (11, 1), (13, 1), (15, 1)]


def test_comet_queued_metrics_reach_the_archive_before_direct_client_calls(tmp_path):
    # log_metrics only queues (the client call runs on the sender thread); using `experiment`
    # sends what is queued first, and finalize sends the rest before the archive is written
    pytest.importorskip("comet_ml")
    import zipfile

    script = r"""
import threading
from ferrotrain.loggers import CometLogger
logger = CometLogger(project="proj", online=False)
for step in range(5):
    logger.log_metrics({"queued": float(step)}, step=step)
logger.experiment.log_metric("direct", 1.0, step=5)
logger.log_metrics({"queued": 5.0, "epoch": 2}, step=6)
logger.finalize("success")
assert not any(t.name == "CometLogger-sender" for t in threading.enumerate())
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COMET_OFFLINE_DIRECTORY": str(tmp_path / "offline")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    archive, = (tmp_path / "offline").glob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        messages = [json.loads(line) for line in zf.read("messages.json").decode().splitlines() if line.strip()]
    metrics = [m["payload"]["metric"] for m in messages if m["type"] == "metric_msg"
               and m["payload"]["metric"]["metricName"] in ("queued", "direct")]
    assert [(m["metricName"], m["step"]) for m in metrics] == [("queued", s) for s in range(5)] + [("direct", 5), ("queued", 6)]
    assert metrics[-1]["epoch"] == 2


# --- BackgroundSender (the thread MLFlowLogger and WandbLogger send from) ---------------------------


def test_sender_sends_in_order_from_its_own_thread_and_flush_waits():
    import threading

    from ferrotrain.loggers._sender import BackgroundSender

    sent, threads = [], set()

    def send(batch):
        threads.add(threading.current_thread().name)
        sent.extend(batch)

    sender = BackgroundSender(send, name="test-sender", linger_s=0.05)
    for i in range(500):
        sender.put(i)
    sender.flush()
    assert sent == list(range(500)) and sender.pending == 0
    assert threads == {"test-sender"}
    sender.put(500)
    sender.close()
    assert sent == list(range(501))
    with pytest.raises(RuntimeError, match="after close"):
        sender.put(501)


def test_sender_raises_a_failed_send_at_flush_and_goes_on():
    from ferrotrain.loggers._sender import BackgroundSender

    sent = []

    def send(batch):
        if "bad" in batch:
            raise ValueError("rejected: bad")
        sent.extend(batch)

    sender = BackgroundSender(send, name="test-sender", max_batch=1)
    for record in ("a", "bad", "b"):
        sender.put(record)
    with pytest.raises(ValueError, match="rejected: bad"):
        sender.flush()
    sender.put("c")
    sender.close()  # the error was raised once; later records are sent
    assert sent == ["a", "b", "c"]


def test_sender_lingers_to_send_records_together():
    from ferrotrain.loggers._sender import BackgroundSender

    batches = []
    sender = BackgroundSender(batches.append, name="test-sender", linger_s=5.0)
    for i in range(10):
        sender.put(i)
    sender.flush()  # cuts the linger short
    assert sum(batches, []) == list(range(10)) and len(batches) < 10
    sender.close()
