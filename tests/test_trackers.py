"""The experiment trackers against what their own client libraries read back: MLflow through a
local `file:` tracking store and `MlflowClient`. Each test skips when its client is absent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import ferrotrain as L
from ferrotrain.callbacks import ModelCheckpoint
from ferrotrain.loggers import MLFlowLogger
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
    _fit(tmp_path, loaders, logger, callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=1)])

    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == "first"
    assert run.data.params == {"dim": "4", "lr": "0.1"}
    history = client.get_metric_history(logger.run_id, "train_loss")
    assert [m.step for m in history] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert len(client.get_metric_history(logger.run_id, "val_loss")) == 2
    artifacts = [a.path for a in client.list_artifacts(logger.run_id)]
    assert artifacts == ["epoch=1-step=16"]
    files = [a.path for a in client.list_artifacts(logger.run_id, "epoch=1-step=16")]
    assert files == ["epoch=1-step=16/epoch=1-step=16.ckpt"]
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


def test_mlflow_rejects_bad_log_model():
    pytest.importorskip("mlflow")
    with pytest.raises(ValueError, match="log_model"):
        MLFlowLogger(log_model="sometimes")


def test_missing_client_names_package_and_extra(tmp_path):
    # a real interpreter in which the client cannot be imported
    script = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from ferrotrain.loggers import MLFlowLogger\n"
        "try:\n    MLFlowLogger()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    assert "`mlflow`" in out.stdout and "ferrotrain[mlflow]" in out.stdout, out.stdout + out.stderr
