"""Faults: a process killed while it writes checkpoints, a write error during a Trainer checkpoint,
exceptions from every kind of user code, Ctrl-C, non-finite losses, and what a run leaves behind
(threads, file handles) after it returns or raises. Real processes, signals, files and threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import ferrotrain as L
from tests.conftest import BoringModel, make_dataset
from ferrotrain.callbacks import Callback, ModelCheckpoint
from ferrotrain.checkpoint import load
from ferrotrain.errors import CheckpointError, NonFiniteLossError
from ferrotrain.loggers import CSVLogger

HERE = os.path.dirname(os.path.abspath(__file__))


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def _scratch(tmp_path) -> str:
    # Crash consistency is about the process, not the device: a RAM-backed folder keeps 24 kills fast.
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return tempfile.mkdtemp(dir=shm, prefix="ferrotrain-faults-")
    return str(tmp_path)


# ---------------------------------------------------------------------------------------------
# kill -9 while checkpoints are being written

KILL_POINTS = 24


@pytest.mark.timeout(600)
def test_kill9_during_checkpoint_writes_leaves_only_complete_resumable_files(tmp_path, capsys):
    folder = _scratch(tmp_path)
    try:
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "fault_scripts.py"), "kill9", folder, str(KILL_POINTS)],
            capture_output=True, text=True, env=_env(), timeout=580,
        )
    finally:
        subprocess.run(["rm", "-rf", folder]) if folder.startswith("/dev/shm") else None
    assert out.returncode == 0, out.stderr[-3000:]
    points = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(points) == KILL_POINTS, out.stdout
    failed = [p for p in points if not p["ok"]]
    assert not failed, failed
    mid_write = [p for p in points if p["temp_left"]]
    resumed = [p for p in points if p["resumed"]]
    with capsys.disabled():
        print(f"\nkill -9 during checkpoint writes: {len(points) - len(failed)} of {len(points)} kill points survived "
              f"({len(mid_write)} killed mid-write, leaving a temporary file; {len(resumed)} resumed from the newest "
              "complete checkpoint; the others died before the first checkpoint was complete)")
    # The kills really landed inside writes, and leftover temporary files were never taken for checkpoints.
    assert len(mid_write) >= KILL_POINTS // 4, points
    assert all(p["latest"].endswith(".ckpt") and not p["latest"].startswith(".") for p in resumed)
    assert len(resumed) >= KILL_POINTS // 2


# ---------------------------------------------------------------------------------------------
# a write error during a Trainer checkpoint


# Runs file operations without root's rights over every folder (shared with the I/O tests).
from tests.test_checkpoint_io import unprivileged as _unprivileged  # noqa: E402


class _SaveOnce(Callback):
    """Saves one checkpoint at global step 2 through the Trainer (the user-facing path)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.weights_before = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 2:
            self.weights_before = {k: v.clone() for k, v in pl_module.state_dict().items()}
            trainer.save_checkpoint(self.path)


def test_read_only_folder_during_fit_is_a_clear_error_and_keeps_older_checkpoints(quiet):
    folder = tempfile.mkdtemp()
    try:
        older = os.path.join(folder, "epoch=0-step=1.ckpt")
        t0 = L.Trainer(max_steps=1, **quiet)
        t0.fit(BoringModel(), DataLoader(make_dataset(), batch_size=8))
        t0.save_checkpoint(older)
        before = load(older)
        os.chmod(folder, 0o555)
        target = os.path.join(folder, "step=2.ckpt")
        cb = _SaveOnce(target)
        trainer = L.Trainer(max_steps=4, callbacks=[cb], **quiet)
        with _unprivileged():
            with pytest.raises(CheckpointError, match=r"step=2\.ckpt.*(Permission denied|Read-only)"):
                trainer.fit(BoringModel(), DataLoader(make_dataset(), batch_size=8))
        # The run stopped at the failing save; the model is the one that was being saved.
        assert trainer.global_step == 2 and trainer.interrupted
        for k, v in trainer.lightning_module.state_dict().items():
            assert torch.equal(v, cb.weights_before[k]), k
        after = load(older)
        assert after["global_step"] == before["global_step"]
        assert all(torch.equal(after["state_dict"][k], before["state_dict"][k]) for k in before["state_dict"])
        assert sorted(os.listdir(folder)) == ["epoch=0-step=1.ckpt"]  # nothing half-written
    finally:
        os.chmod(folder, 0o755)
        for f in os.listdir(folder):
            os.remove(os.path.join(folder, f))
        os.rmdir(folder)


def test_disk_full_during_model_checkpoint_names_the_file_and_keeps_older_ones(tmp_path, quiet):
    from tests.test_checkpoint_io import file_size_limit

    class Grows(BoringModel):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Parameter(torch.zeros(1))

        def on_train_batch_start(self, batch, batch_idx):
            if self.trainer.global_step == 2:  # the model grows: the next checkpoint is 4 MiB
                self.extra = torch.nn.Parameter(torch.zeros(1 << 20))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    q = {**quiet, "enable_checkpointing": True}
    trainer = L.Trainer(max_steps=5, callbacks=[ckpt], **q)
    with file_size_limit(1 << 20):
        with pytest.raises(CheckpointError, match=r"step=3\.ckpt.*(too large|File too large|EFBIG|space|reserve|write)"):
            trainer.fit(Grows(), DataLoader(make_dataset(), batch_size=8))
    names = sorted(os.listdir(tmp_path / "ck"))
    assert names == ["step=1.ckpt", "step=2.ckpt"], names
    for n in names:
        assert load(tmp_path / "ck" / n)["global_step"] == int(n[5])


# ---------------------------------------------------------------------------------------------
# exceptions from user code: hooks, loggers, progress bar, prefetch thread


class Boom(Exception):
    pass


class _SlowDataset(Dataset):
    """Reads wait (as a disk or network read would), so the loop moves reading to the prefetch thread."""

    def __init__(self, n: int = 64, fail_at: int = -1) -> None:
        self.data = make_dataset(n)
        self.fail_at = fail_at

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        time.sleep(0.002)
        if i == self.fail_at:
            raise Boom(f"bad sample {i}")
        return self.data[i]


class _Recorder(Callback):
    def __init__(self, fail_in_hook: bool = False) -> None:
        self.exceptions = []
        self.fail_in_hook = fail_in_hook

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.fail_in_hook and batch_idx == 6:
            raise Boom("from a callback")

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.exceptions.append(exception)


class _RecordingLogger(CSVLogger):
    def __init__(self, save_dir, fail_at_step: int = -1) -> None:
        super().__init__(save_dir=save_dir)
        self.fail_at_step = fail_at_step
        self.statuses = []
        self.saves = 0

    def log_metrics(self, metrics, step=None) -> None:
        if step == self.fail_at_step:
            raise Boom("from a logger")
        super().log_metrics(metrics, step)

    def save(self) -> None:
        super().save()
        self.saves += 1

    def finalize(self, status: str) -> None:
        super().finalize(status)
        self.statuses.append(status)


class _FailingStep(BoringModel):
    def training_step(self, batch, batch_idx):
        if batch_idx == 6:
            raise Boom("from training_step")
        return super().training_step(batch, batch_idx)


def _thread_names() -> list:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


def _ours(names: list) -> list:
    return [n for n in names if n.startswith(("ft-", "ferrotrain"))]


@pytest.mark.parametrize("where", ["training_step", "callback", "dataloader", "logger"])
def test_exception_runs_on_exception_closes_everything_and_reaches_the_user_unchanged(where, tmp_path):
    rec = _Recorder(fail_in_hook=where == "callback")
    logger = _RecordingLogger(tmp_path, fail_at_step=5 if where == "logger" else -1)
    model = _FailingStep() if where == "training_step" else BoringModel()
    data = _SlowDataset(fail_at=40 if where == "dataloader" else -1)
    trainer = L.Trainer(max_epochs=1, callbacks=[rec], logger=logger, log_every_n_steps=1,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(Boom) as info:
        trainer.fit(model, DataLoader(data, batch_size=2))
    # The original exception object, with the traceback down to where it was raised.
    assert rec.exceptions == [info.value]
    assert str(info.value).startswith(("from ", "bad sample"))
    frames = [f.name for f in info.traceback]
    expected = {"training_step": "training_step", "callback": "on_train_batch_end", "dataloader": "__getitem__",
                "logger": "log_metrics"}[where]
    assert expected in frames, frames
    assert trainer.interrupted
    assert logger.statuses == ["failed"] and logger.saves > 0
    assert os.path.getsize(os.path.join(logger.log_dir, "metrics.csv")) > 0  # what was logged is on disk
    bar = trainer.progress_bar_callback
    assert bar._train_bar is None and bar._eval_bar is None
    assert _ours(_thread_names()) == []  # the prefetch thread is stopped and joined


def test_the_prefetch_thread_really_runs_in_these_tests(tmp_path):
    """Guards the test above: with slow reads the batches do come from the `ft-prefetch` thread."""
    seen = []

    class Look(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(_ours(_thread_names()))

    trainer = L.Trainer(max_epochs=1, callbacks=[Look()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel(), DataLoader(_SlowDataset(32), batch_size=2))
    assert any("ft-prefetch" in names for names in seen)
    assert _ours(_thread_names()) == []


def test_ctrl_c_mid_epoch_shuts_down_gracefully_and_leaves_a_resumable_checkpoint(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "fault_scripts.py"), "sigint", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "running", line + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["exit_code"] == 1 and result["interrupted"]
    assert result["sigint_restored"]
    assert result["on_exception"] == ["KeyboardInterrupt"]
    assert result["logger_status"] == "failed"
    assert result["metrics_rows"] >= 4  # the metrics logged before Ctrl-C were flushed
    assert result["checkpoint"]
    assert result["global_step"] == 5 and result["resumed_to"] == 6
    assert "Detected KeyboardInterrupt" in err + out


# ---------------------------------------------------------------------------------------------
# non-finite losses


class _NaNAt(BoringModel):
    def __init__(self, at: int, value: float) -> None:
        super().__init__()
        self.at, self.value = at, value

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * self.value if batch_idx == self.at else loss


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_detect_anomaly_stops_at_the_step_with_a_non_finite_loss(value, quiet):
    model = _NaNAt(3, value)
    trainer = L.Trainer(max_epochs=1, detect_anomaly=True, **quiet)
    if value != value:
        # NaN: torch's anomaly error from the backward, as Lightning users get it.
        with pytest.warns(UserWarning, match="Error detected in MulBackward0"):
            with pytest.raises(RuntimeError, match=r"Function 'MulBackward0' returned nan values in its 0th output"):
                trainer.fit(model, DataLoader(make_dataset(), batch_size=8))
    else:
        # Infinite: torch flags no NaN; ferrotrain stops there rather than step with it.
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(inf\) at global step 3 \(epoch 0, batch 3\)"):
            trainer.fit(model, DataLoader(make_dataset(), batch_size=8))
    assert isinstance(NonFiniteLossError("x"), RuntimeError)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # never stepped with it
    assert trainer.global_step == 3 and not torch.is_anomaly_enabled()


def test_detect_anomaly_names_the_backward_op_that_made_nan(quiet):
    class NaNGrad(BoringModel):
        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self(x)
            # sqrt(0) is finite forward but its gradient is inf; times 0 gives NaN in backward.
            return torch.nn.functional.mse_loss(out, y) + (torch.sqrt(out * 0) * 0).sum()

    trainer = L.Trainer(max_epochs=1, detect_anomaly=True, **quiet)
    with pytest.warns(UserWarning, match="Error detected in"):
        with pytest.raises(RuntimeError, match="returned nan values"):
            trainer.fit(NaNGrad(), DataLoader(make_dataset(), batch_size=8))


def test_without_detect_anomaly_a_nan_loss_trains_on_as_in_lightning(quiet):
    model = _NaNAt(3, float("nan"))
    trainer = L.Trainer(max_epochs=1, **quiet)
    trainer.fit(model, DataLoader(make_dataset(), batch_size=8))
    assert trainer.global_step == 8
    # Unchecked training_step when the option is off: no wrapper on the per-step path.
    assert trainer._fit_loop.step.training_step == model.training_step


# ---------------------------------------------------------------------------------------------
# nothing of ours left behind


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def _settled_threads() -> list:
    # The thread that frees a replaced checkpoint file lives a moment after the save returns.
    for _ in range(100):
        names = _ours(_thread_names())
        if not names:
            break
        time.sleep(0.01)
    return sorted(_thread_names())


def test_no_thread_file_handle_or_process_left_after_each_entry_point(tmp_path):
    def trainer():
        logger = CSVLogger(save_dir=tmp_path)
        return L.Trainer(max_epochs=2, logger=logger, callbacks=[ModelCheckpoint(every_n_train_steps=2, save_top_k=1)],
                         default_root_dir=tmp_path, enable_progress_bar=True, enable_model_summary=False)

    data = DataLoader(_SlowDataset(16), batch_size=2)

    def run_all():
        t = trainer()
        model = BoringModel()
        t.fit(model, data, data)
        t.validate(model, data, verbose=False)
        t.test(model, data, verbose=False)
        t.predict(model, data)
        t2 = trainer()
        with pytest.raises(Boom):
            t2.fit(_FailingStep(), data)
        for fn in (t2.validate, t2.test, t2.predict):
            bad = BoringModel()
            bad.validation_step = bad.test_step = bad.predict_step = _raise
            with pytest.raises(Boom):
                fn(bad, data)

    run_all()  # warm-up: lazy imports and torch's own pools start once
    fds, threads = _fds(), _settled_threads()
    children = _children()
    run_all()
    assert _fds() == fds
    assert _settled_threads() == threads
    assert _children() == children


def _raise(*args, **kwargs):
    raise Boom("from an evaluation step")


def _children() -> list:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return f.read().split()
    except OSError:
        return []


def test_last_checkpoint_lookup_skips_temporary_files_and_broken_links(tmp_path):
    from ferrotrain.checkpoint import save
    from ferrotrain.trainer.checkpointing import _latest_in

    save(tmp_path / "epoch=0-step=1.ckpt", {"global_step": 1})
    time.sleep(0.01)
    save(tmp_path / "epoch=0-step=2.ckpt", {"global_step": 2})
    time.sleep(0.01)
    # Newer than both: what a crash mid-write, a hidden file and a dangling `last.ckpt` link leave.
    (tmp_path / ".epoch=0-step=3.ckpt.1234.0.tmp").write_bytes(b"\0" * 64)
    (tmp_path / ".hidden.ckpt").write_bytes(b"partial")
    os.symlink("gone.ckpt", tmp_path / "last.ckpt")
    (tmp_path / "dir.ckpt").mkdir()
    assert _latest_in(str(tmp_path)) == str(tmp_path / "epoch=0-step=2.ckpt")


class _Marker:
    """Unpickling this creates a file: the proof that a loader ran code from a checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_is_never_unpickled(tmp_path, quiet):
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _Marker(str(marker))})
    as_pickle = tmp_path / "evil.ckpt"
    as_pickle.write_bytes(payload)
    torch_file = tmp_path / "evil_torch.ckpt"
    torch.save({"state_dict": {}, "x": _Marker(str(marker))}, torch_file)
    marker.unlink(missing_ok=True)  # torch.save does not run it; make sure nothing is left over
    from ferrotrain.errors import CheckpointError

    # Torch-format files go through `torch.load(weights_only=True)` (the migration path), which
    # refuses the payload; anything else is not a checkpoint at all. Either way: an error naming
    # the file, and the payload never runs.
    for path in (as_pickle, torch_file):
        with pytest.raises(CheckpointError, match=path.name):
            load(path)
        with pytest.raises(CheckpointError, match=path.name):
            BoringModel.load_from_checkpoint(path)
        with pytest.raises(CheckpointError, match=path.name):
            L.Trainer(max_epochs=1, **quiet).fit(BoringModel(), DataLoader(make_dataset(), batch_size=8), ckpt_path=path)
        with pytest.raises(CheckpointError, match=path.name):
            L.Trainer(**quiet).validate(BoringModel(), DataLoader(make_dataset(), batch_size=8), ckpt_path=path)
    assert not marker.exists()
