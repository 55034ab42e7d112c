"""Loggers against the files they write: CSV content and header growth, version folders,
hparams.yaml (with and without PyYAML), and TensorBoard event files read back with TensorBoard's
own reader."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from argparse import Namespace

import pytest

import ferrotrain
from ferrotrain.loggers import CSVLogger, TensorBoardLogger
from ferrotrain.loggers.utilities import dump_yaml, save_hparams_to_yaml

yaml = pytest.importorskip("yaml")


def _rows(path):
    with open(path, newline="") as fp:
        reader = csv.DictReader(fp)
        return reader.fieldnames, list(reader)


# --- CSVLogger -----------------------------------------------------------------------------------


def test_csv_version_folders_count_up(tmp_path):
    first = CSVLogger(tmp_path)
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("success")
    second = CSVLogger(tmp_path)
    second.log_metrics({"loss": 1.0}, step=0)
    second.finalize("success")
    assert first.version == 0 and second.version == 1
    assert first.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    assert os.path.isfile(os.path.join(tmp_path, "lightning_logs", "version_1", "metrics.csv"))


def test_csv_next_version_after_gap_ignores_other_folders(tmp_path):
    (tmp_path / "exp" / "version_3").mkdir(parents=True)
    (tmp_path / "exp" / "version_x").mkdir()
    (tmp_path / "exp" / "notes").mkdir()
    assert CSVLogger(tmp_path, name="exp").version == 4


def test_csv_without_name_and_with_string_version(tmp_path):
    logger = CSVLogger(tmp_path, name=None, version="run-a")
    assert logger.log_dir == os.path.join(str(tmp_path), "run-a")
    assert CSVLogger(tmp_path, name="", version=2).log_dir == os.path.join(str(tmp_path), "version_2")


def test_csv_metrics_file_has_step_column_and_grows_its_header(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"train_loss": 1.5}, step=0)
    logger.log_metrics({"train_loss": 1.25}, step=1)
    logger.save()
    fields, rows = _rows(os.path.join(logger.log_dir, "metrics.csv"))
    assert fields == ["step", "train_loss"]
    assert [(r["step"], r["train_loss"]) for r in rows] == [("0", "1.5"), ("1", "1.25")]

    logger.log_metrics({"val_loss": 0.75, "epoch": 0}, step=1)
    logger.finalize("success")
    fields, rows = _rows(os.path.join(logger.log_dir, "metrics.csv"))
    assert fields == ["epoch", "step", "train_loss", "val_loss"]
    assert len(rows) == 3
    assert rows[0] == {"epoch": "", "step": "0", "train_loss": "1.5", "val_loss": ""}
    assert rows[2] == {"epoch": "0", "step": "1", "train_loss": "", "val_loss": "0.75"}


def test_csv_flushes_every_n_steps_and_on_finalize(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = os.path.join(logger.log_dir, "metrics.csv")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_metrics({"a": 2.0}, step=1)
    assert not os.path.exists(path)
    logger.log_metrics({"a": 3.0}, step=2)  # (step + 1) % 3 == 0
    assert len(_rows(path)[1]) == 3
    logger.log_metrics({"a": 4.0}, step=3)
    logger.finalize("success")
    assert [r["a"] for r in _rows(path)[1]] == ["1.0", "2.0", "3.0", "4.0"]


def test_csv_prefix_and_tensor_values(tmp_path):
    import torch

    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": torch.tensor(0.5)}, step=7)
    logger.save()
    fields, rows = _rows(os.path.join(logger.log_dir, "metrics.csv"))
    assert fields == ["step", "train-loss"]
    assert rows == [{"step": "7", "train-loss": "0.5"}]


def test_csv_finalize_without_logging_creates_nothing(tmp_path):
    CSVLogger(tmp_path).finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_csv_hparams_yaml_round_trips(tmp_path):
    logger = CSVLogger(tmp_path)
    params = {
        "lr": 0.001,
        "layers": [64, 32],
        "optimizer": {"name": "adam", "betas": [0.9, 0.999]},
        "activation": "relu",
        "use_bias": True,
        "scheduler": None,
    }
    logger.log_hyperparams(Namespace(**params))
    logger.log_hyperparams({"batch_size": 32})
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as fp:
        assert yaml.safe_load(fp) == {**params, "batch_size": 32}


# --- hparams.yaml without PyYAML -----------------------------------------------------------------

_TRICKY = {
    "plain": "relu",
    "looks_bool": "true",
    "looks_number": "1.5",
    "colon": "a: b",
    "empty": "",
    "newline": "two\nlines",
    "unicode": "naïve ü",
    "quote": 'say "hi"',
    "big": 10**20,
    "neg": -3,
    "small": 1e-8,
    "inf": math.inf,
    "ninf": -math.inf,
    "flag": False,
    "none": None,
    "empty_list": [],
    "empty_dict": {},
    "tuple": (1, "two", 3.0),
    "nested": {"deeper": {"x": 1, "ys": [1, 2]}, "b": "c"},
    "list_of_dicts": [{"a": 1, "b": [1, 2]}, {"c": {"d": 2}}],
    "list_of_lists": [[1, 2], [], ["x"]],
    7: "int key",
}


def test_fallback_yaml_emitter_loads_back_with_pyyaml():
    loaded = yaml.safe_load(dump_yaml(_TRICKY))
    expected = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in _TRICKY.items()}
    assert loaded == expected


def test_hparams_yaml_is_written_when_pyyaml_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(str(path), {"lr": 0.1, "dims": (3, 4), "cfg": {"act": "gelu"}, "obj": object})
    monkeypatch.undo()
    assert yaml.safe_load(path.read_text()) == {
        "lr": 0.1,
        "dims": [3, 4],
        "cfg": {"act": "gelu"},
        "obj": str(object),
    }


def test_hparams_yaml_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_yaml(str(tmp_path / "nope" / "hparams.yaml"), {"a": 1})


# --- TensorBoardLogger ---------------------------------------------------------------------------


def _accumulator(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return acc


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path)
    for step, loss in enumerate([1.0, 0.5, 0.25]):
        logger.log_metrics({"train_loss": loss, "epoch": 0}, step=step)
    logger.finalize("success")
    assert logger.version == 0
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(logger.log_dir))
    events = _accumulator(logger.log_dir).Scalars("train_loss")
    assert [(e.step, e.value) for e in events] == [(0, 1.0), (1, 0.5), (2, 0.25)]


def test_tensorboard_hp_metric_reaches_a_log_metrics_override_with_its_own_parameter_names(tmp_path):
    """Lightning passes the hp_metric placeholder positionally, so an override of `log_metrics`
    whose parameters have other names still gets it."""
    pytest.importorskip("tensorboard")
    got = []

    class Mine(TensorBoardLogger):
        def log_metrics(self, values, at=None):
            got.append((values, at))

    Mine(tmp_path).log_hyperparams({"lr": 0.1})
    assert got == [({"hp_metric": -1}, None)]


def test_tensorboard_graph_of_an_untraceable_input_is_lightnings_warning(tmp_path):
    pytest.importorskip("tensorboard")
    import torch

    logger = TensorBoardLogger(tmp_path, log_graph=True)
    with pytest.warns(UserWarning, match="Could not log computational graph to TensorBoard: .* can't be traced by TensorBoard"):
        logger.log_graph(torch.nn.Linear(1, 1), {"x": torch.zeros(1)})


def test_tensorboard_hparams_hp_metric_and_yaml(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, name="exp")
    logger.log_hyperparams({"lr": 0.01, "model": {"width": 8}, "layers": [1, 2]})
    logger.log_metrics({"val_acc": 0.5}, step=3)
    logger.finalize("success")
    acc = _accumulator(logger.log_dir)
    assert [(e.step, e.value) for e in acc.Scalars("hp_metric")] == [(0, -1.0)]
    # The HPARAMS tab reads these three summaries.
    assert set(acc.PluginTagToContent("hparams")) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as fp:
        assert yaml.safe_load(fp) == {"lr": 0.01, "model": {"width": 8}, "layers": [1, 2]}


def test_tensorboard_no_hp_metric_when_disabled_and_prefix_and_sub_dir(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False, prefix="p", sub_dir="sub", version=5)
    logger.log_hyperparams({"lr": 0.01})
    logger.log_metrics({"loss": 2.0}, step=1)
    logger.finalize("success")
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_5", "sub")
    acc = _accumulator(logger.log_dir)
    assert acc.Tags()["scalars"] == ["p-loss"]


def test_tensorboard_missing_package_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install tensorboard"):
        TensorBoardLogger(tmp_path)


def test_importing_ferrotrain_loggers_does_not_import_tensorboard_or_yaml():
    code = (
        "import sys, ferrotrain.loggers, ferrotrain.callbacks;"
        "bad = [m for m in ('tensorboard', 'torch.utils.tensorboard', 'yaml') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(ferrotrain.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _event_files(log_dir):
    return sorted(n for n in os.listdir(log_dir) if n.startswith("events.out.tfevents."))


def test_tensorboard_native_event_file_is_read_back_by_tensorboard(tmp_path):
    # Written by the Rust writer (no tensorboard import on this path), read by tensorboard's own
    # reader (which checks both CRCs of every record): tags, steps and float32 values.
    pytest.importorskip("tensorboard")
    import socket
    import struct

    logger = TensorBoardLogger(tmp_path)
    values = [1.0, 0.1, -2.5e-8, 3.0e38, float("inf")]
    for step, value in enumerate(values):
        logger.log_metrics({"train_loss": value, "epoch": step // 2, "lr-SGD": 0.01}, step=step * 50 + 49)
    logger.log_metrics({"big_step": 1.0}, step=2**40)
    logger.finalize("success")
    (name,) = _event_files(logger.log_dir)
    _, _, _, stamp, rest = name.split(".", 4)
    assert len(stamp) == 10 and stamp.isdigit()
    assert rest == f"{socket.gethostname()}.{os.getpid()}.{rest.rsplit('.', 1)[1]}"
    acc = _accumulator(logger.log_dir)
    assert sorted(acc.Tags()["scalars"]) == ["big_step", "epoch", "lr-SGD", "train_loss"]
    f32 = [struct.unpack("f", struct.pack("f", v))[0] for v in values]
    assert [(e.step, e.value) for e in acc.Scalars("train_loss")] == [(s * 50 + 49, v) for s, v in enumerate(f32)]
    assert [e.value for e in acc.Scalars("epoch")] == [0, 0, 1, 1, 2]
    assert [e.step for e in acc.Scalars("big_step")] == [2**40]
    assert all(abs(e.wall_time - acc.Scalars("epoch")[0].wall_time) < 60 for e in acc.Scalars("epoch"))
    assert acc.FirstEventTimestamp() > 0  # the file_version event


def test_tensorboard_experiment_events_share_the_native_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    import numpy as np

    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=0)  # native first
    logger.experiment.add_histogram("weights", np.arange(10.0), global_step=1)  # then tensorboard's protos
    logger.experiment.add_scalar("direct", 5.0, 2)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 0.5}, step=3)
    logger.finalize("success")
    assert len(_event_files(logger.log_dir)) == 1
    acc = _accumulator(logger.log_dir)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(0, 1.0), (3, 0.5)]
    assert [(e.step, e.value) for e in acc.Scalars("direct")] == [(2, 5.0)]
    assert [(e.step, e.value) for e in acc.Scalars("hp_metric")] == [(0, -1.0)]
    assert acc.Tags()["histograms"] == ["weights"]
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")


def test_tensorboard_logs_after_finalize_go_to_a_new_file(tmp_path):
    # As SummaryWriter after close(): e.g. `trainer.test()` after `fit` with the same logger.
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, filename_suffix=".x")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    logger.log_metrics({"b": 2.0}, step=1)
    logger.finalize("success")
    names = _event_files(logger.log_dir)
    assert len(names) == 2 and all(n.endswith(".x") for n in names)
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = set()
    for n in names:
        for ev in EventFileLoader(os.path.join(logger.log_dir, n)).Load():
            tags.update(v.tag for v in ev.summary.value)
    assert tags == {"a", "b"}


def test_tensorboard_scalar_logging_does_not_import_tensorboard(tmp_path):
    code = (
        "import sys, ferrotrain\n"
        "from ferrotrain.loggers import TensorBoardLogger\n"
        f"lg = TensorBoardLogger({str(tmp_path)!r})\n"
        "lg.log_metrics({'loss': 1.0}, step=1); lg.save(); lg.finalize('success')\n"
        "bad = [m for m in ('tensorboard', 'torch.utils.tensorboard', 'google.protobuf') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(ferrotrain.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(_event_files(os.path.join(str(tmp_path), "lightning_logs", "version_0"))) == 1


def test_tensorboard_bad_value_is_a_clear_error_and_options_fall_back_to_summary_writer(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match="cannot log loss="):
        logger.log_metrics({"loss": object()}, step=0)
    logger.finalize("success")
    # An option the native writer does not implement: tensorboard's own writer, same layout.
    purged = TensorBoardLogger(tmp_path, version="p", purge_step=0)
    purged.log_metrics({"loss": 1.0}, step=0)
    purged.finalize("success")
    assert type(purged.experiment).__name__ == "SummaryWriter"
    assert [(e.step, e.value) for e in _accumulator(purged.log_dir).Scalars("loss")] == [(0, 1.0)]


def _quiet_logger_class(L):  # noqa: N803
    """A minimal custom `Logger` of library `L` that drops everything; tests record what they need."""
    import importlib

    from tests.lightning_ref import is_lightning

    loggers = importlib.import_module("lightning.pytorch.loggers" if is_lightning(L) else "ferrotrain.loggers")

    class Quiet(loggers.Logger):
        @property
        def name(self):
            return "rec"

        @property
        def version(self):
            return 0

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    return Quiet


def _checkpoint_notices(L) -> list:  # noqa: N803
    """What a custom logger hears of checkpoints: ModelCheckpoint's saves, not `save_checkpoint`."""
    import importlib
    import tempfile

    import torch

    from tests.lightning_ref import is_lightning, loader

    callbacks = importlib.import_module("lightning.pytorch.callbacks" if is_lightning(L) else "ferrotrain.callbacks")

    class Recorder(_quiet_logger_class(L)):
        def __init__(self) -> None:
            super().__init__()
            self.saved = []

        def after_save_checkpoint(self, checkpoint_callback):
            self.saved.append(checkpoint_callback.save_last)  # the ModelCheckpoint (Lightning: a proxy)

    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rec = Recorder()
    with tempfile.TemporaryDirectory() as root:
        ck = callbacks.ModelCheckpoint(dirpath=root, save_last=True)
        t = L.Trainer(max_epochs=2, logger=rec, callbacks=[ck], enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=root)
        t.fit(M(), loader(4))
        t.save_checkpoint(os.path.join(root, "manual.ckpt"))
    return rec.saved


def test_loggers_hear_of_model_checkpoint_saves_only() -> None:
    from tests.lightning_ref import check

    # Two epochs, each saving its checkpoint and last.ckpt: four notices; `save_checkpoint` none.
    check(_checkpoint_notices, [True] * 4)


def _hparams_calls(L, autolog: bool = True, clash: bool = False) -> list:  # noqa: N803
    """The calls a custom logger gets around `on_fit_start` and in `test`, with what values."""
    import tempfile
    import warnings

    import torch

    from tests.lightning_ref import loader

    calls = []

    class Recorder(_quiet_logger_class(L)):
        def log_hyperparams(self, params, *args, **kwargs):
            calls.append(("hparams", dict(params)))

        def log_graph(self, model, input_array=None):
            calls.append(("graph",))

        def save(self):
            calls.append(("save",))

    class M(L.LightningModule):
        def __init__(self, lr: float = 0.1, width: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.hparams.lr = 99.0  # changed after saving: loggers get the initial values
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def test_step(self, batch, batch_idx):
            pass

        def on_fit_start(self):
            calls.append(("on_fit_start",))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return loader(4)

    class DM(L.LightningDataModule):
        def __init__(self, width: int = 5 if clash else 4, batch: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return loader(4)

        def test_dataloader(self):
            return loader(2)

    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = L.Trainer(max_epochs=1, logger=Recorder(), enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=root, enable_autolog_hparams=autolog)
        try:
            t.fit(M(), datamodule=DM())
        except RuntimeError as exc:
            return [("error", str(exc))]
        calls.append(("-- test",))
        t.test(M(), datamodule=DM(), verbose=False)
    return calls


def test_hyperparameters_reach_loggers_as_in_lightning() -> None:
    from tests.lightning_ref import check

    first = [("hparams", {"lr": 0.1, "width": 4, "batch": 2}), ("graph",), ("save",)]
    fit = [("on_fit_start",)] + first
    got = _hparams_calls(ferrotrain)
    assert got[: len(fit)] == fit and ("-- test",) in got
    assert got[got.index(("-- test",)) + 1: got.index(("-- test",)) + 4] == first
    check(_hparams_calls, got)
    check(lambda L: [c for c in _hparams_calls(L, autolog=False) if c[0] != "save"],
          [c for c in _hparams_calls(ferrotrain, autolog=False) if c[0] != "save"])
    assert all(c[0] not in ("hparams", "graph") for c in _hparams_calls(ferrotrain, autolog=False))
    clash = _hparams_calls(ferrotrain, clash=True)
    assert clash[0][0] == "error" and "['width']" in clash[0][1]
    check(lambda L: _hparams_calls(L, clash=True), clash)
