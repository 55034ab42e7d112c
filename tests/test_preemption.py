"""Preemption: SIGTERM and SLURM's requeue signal stop a fit after the current step with a
checkpoint that resumes bit-identically. Real processes and real signals (the scripts are in
`preempt_scripts.py`), a stand-in `scontrol` on PATH, DDP over gloo."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import ferrotrain as L
from ferrotrain.checkpoint import load
from ferrotrain.errors import MisconfigurationException, SIGTERMException
from ferrotrain.strategies.environment import SLURMEnvironment
from ferrotrain.utilities.exceptions import SIGTERMException as LightningPathSIGTERMException
from tests import preempt_scripts as P

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preempt_scripts.py")
SLURM_ENV = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                 SLURM_JOB_NAME="train", SLURM_NODELIST="localhost")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.update(extra)
    return env


def _interrupt(root, step: int, where: str, devices: int = 1, rank: int = 0, sig=signal.SIGTERM, env=None,
               during_save=None) -> tuple:
    """Run `train`, signal the paused rank once it says so; returns (returncode, reports, stderr)."""
    proc = subprocess.Popen([sys.executable, SCRIPT, "train", str(root), str(step), where, str(devices), str(rank)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or _env())
    reports = []
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), line + proc.stderr.read()
        os.kill(int(line.split()[1]), sig)
        if during_save is not None:
            line = proc.stdout.readline()
            assert line.strip() == "saving", line
            during_save()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reports = [json.loads(l.split(" ", 1)[1]) for l in out.splitlines() if l.startswith("REPORT ")]
    return proc.returncode, sorted(reports, key=lambda r: r["rank"]), err


def _run(mode: str, root, devices: int = 1, env=None) -> dict:
    proc = subprocess.run([sys.executable, SCRIPT, mode, str(root), str(devices)], capture_output=True, text=True,
                          env=env or _env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(os.path.join(root, "final-rank0.pt"))


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted single-process run's final weights (in this process: same math)."""
    root = tmp_path_factory.mktemp("reference")
    P.reference(str(root), 1)
    return torch.load(os.path.join(root, "final-rank0.pt"))


def _check_stopped(rc: int, reports: list, err: str, expected_step: int) -> None:
    assert rc == 0, err[-3000:]  # SIGTERMException is a SystemExit without a code, as in Lightning
    for r in reports:
        assert r["raised"] == "SIGTERMException" and r["interrupted"], r
        assert r["global_step"] == expected_step, r
        assert r["handler_restored"], r
        assert not [t for t in r["threads"] if t.startswith("ft-")], r  # prefetch and watcher threads ended
    assert "Received SIGTERM: stopped after global step" in err or "Received SIGUSR1" in err or \
        "stop signal on another rank" in err, err[-2000:]


# ---------------------------------------------------------------------------------------------
# one process


def test_sigterm_at_a_random_step_stops_there_and_a_new_process_resumes_bit_identically(tmp_path, reference):
    step = random.Random(os.getpid()).randrange(2, P.STEPS - 2)
    rc, reports, err = _interrupt(tmp_path, step, "end")
    _check_stopped(rc, reports, err, step)
    assert reports[0]["user_handler_calls"] == 1  # the handler installed before fit still ran
    assert reports[0]["stop_s"] < 30  # one step plus the checkpoint write
    saved = load(str(tmp_path / "hpc_ckpt_1.ckpt"))
    assert saved["global_step"] == step
    rows = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1  # the logger was finalized: what was logged before the signal is on disk
    final = _run("finish", tmp_path)  # fit(ckpt_path="last") in a new process
    assert final["ckpt_path"] == str(tmp_path / "hpc_ckpt_1.ckpt")
    assert final["global_step"] == P.STEPS
    assert _same_weights(final["state_dict"], reference["state_dict"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ten_random_stops_each_resume_to_the_uninterrupted_weights(tmp_path, reference):
    """Ten stops at different steps, half of them with the signal arriving inside
    `training_step` (before that batch's optimizer step: the fit finishes that step)."""
    rng = random.Random(17)
    steps = rng.sample(range(1, P.STEPS - 1), 10)
    for i, step in enumerate(steps):
        root = tmp_path / f"run{i}"
        where = "step" if i % 2 else "end"
        rc, reports, err = _interrupt(root, step, where)
        expected = step + 1 if where == "step" else step
        _check_stopped(rc, reports, err, expected)
        assert load(str(root / "hpc_ckpt_1.ckpt"))["global_step"] == expected
        P.finish(str(root), 1, "last")  # the resume, in this process
        final = torch.load(os.path.join(root, "final-rank0.pt"))
        assert final["global_step"] == P.STEPS, (step, where)
        assert _same_weights(final["state_dict"], reference["state_dict"]), (step, where)


def test_a_second_sigterm_during_the_checkpoint_write_is_ignored_and_older_files_stay_intact(tmp_path):
    folder = tmp_path / "checkpoints"
    env = _env(BIG=str(1 << 21))  # 8 MiB of parameters, 24 MiB with Adam's moments
    proc = subprocess.Popen([sys.executable, SCRIPT, "train", str(tmp_path), "8", "end"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), line + proc.stderr.read()
        pid = int(line.split()[1])
        os.kill(pid, signal.SIGTERM)
        assert proc.stdout.readline().strip() == "saving"
        # The checkpoints ModelCheckpoint wrote before the stop (the stop waited for them first).
        hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
                  if not p.name.startswith(".")}
        os.kill(pid, signal.SIGTERM)  # again, while the preemption checkpoint is being saved
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    report = json.loads([l for l in out.splitlines() if l.startswith("REPORT ")][0].split(" ", 1)[1])
    assert report["raised"] == "SIGTERMException" and report["global_step"] == 8
    assert report["user_handler_calls"] == 2  # both signals reached the user's handler too
    assert err.count("Received SIGTERM") == 1
    assert hashes, "ModelCheckpoint had saved before the stop"
    for name, digest in hashes.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
        load(str(folder / name))  # complete and readable
    assert load(str(tmp_path / "hpc_ckpt_1.ckpt"))["global_step"] == 8
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp") or n.startswith(".")] == []


# ---------------------------------------------------------------------------------------------
# SLURM


def _fake_scontrol(tmp_path) -> tuple:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "scontrol.log"
    fake = bindir / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return bindir, log


def test_slurm_requeue_signal_checkpoints_requeues_and_the_requeued_job_resumes_by_itself(tmp_path, reference):
    bindir, log = _fake_scontrol(tmp_path)
    root = tmp_path / "run"
    env = _env(**SLURM_ENV, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PREEMPT_SIGNAL="SIGUSR1")
    rc, reports, err = _interrupt(root, 13, "end", sig=signal.SIGUSR1, env=env)
    _check_stopped(rc, reports, err, 13)
    assert "Received SIGUSR1" in err and "Requeued SLURM job: 4242" in err, err[-2000:]
    assert log.read_text().split() == ["requeue", "4242"]
    assert (root / "hpc_ckpt_1.ckpt").is_file()
    # The job starts again with the same command: `fit()` without ckpt_path finds the checkpoint.
    final = _run("finish", root, env=dict(env, CKPT_PATH="none"))
    assert final["ckpt_path"] == str(root / "hpc_ckpt_1.ckpt")
    assert _same_weights(final["state_dict"], reference["state_dict"])


class _SignalAt(P.Model):
    def __init__(self, at: int, sig: int) -> None:
        super().__init__()
        self.at, self.sig, self.fired = at, sig, False

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at and not self.fired:
            self.fired = True
            os.kill(os.getpid(), self.sig)
        return super().training_step(batch, batch_idx)


def _trainer(root, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=2, default_root_dir=str(root), enable_progress_bar=False, enable_model_summary=False,
                     logger=False, enable_checkpointing=False, **kw)


def test_slurm_environment_without_auto_requeue_checkpoints_but_does_not_requeue(tmp_path, monkeypatch):
    bindir, log = _fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for k, v in SLURM_ENV.items():
        monkeypatch.setenv(k, v)
    before = signal.getsignal(signal.SIGUSR2)
    trainer = _trainer(tmp_path, plugins=[SLURMEnvironment(auto_requeue=False, requeue_signal=signal.SIGUSR2)])
    with pytest.raises(SIGTERMException):
        trainer.fit(_SignalAt(3, signal.SIGUSR2), *P.loaders())
    assert trainer.global_step == 4 and trainer.interrupted
    assert load(str(tmp_path / "hpc_ckpt_1.ckpt"))["global_step"] == 4
    assert not log.exists()
    assert signal.getsignal(signal.SIGUSR2) == before


def test_slurm_environment_arguments_are_checked():
    assert SLURMEnvironment().auto_requeue is True and SLURMEnvironment().requeue_signal == signal.SIGUSR1
    with pytest.raises(MisconfigurationException, match="auto_requeue"):
        SLURMEnvironment(auto_requeue="yes")
    with pytest.raises(MisconfigurationException, match="requeue_signal"):
        SLURMEnvironment(requeue_signal=-3)


# ---------------------------------------------------------------------------------------------
# in this process: accumulation, "hpc", the exception's import path


def test_a_signal_inside_an_accumulation_window_stops_at_its_optimizer_step_and_resumes_exactly(tmp_path):
    L.seed_everything(0)
    ref = P.Model()
    _trainer(tmp_path / "ref", accumulate_grad_batches=3).fit(ref, *P.loaders())
    L.seed_everything(0)
    model = _SignalAt(2, signal.SIGTERM)  # at batch 6 of epoch 0: the first of a window of three
    trainer = _trainer(tmp_path / "run", accumulate_grad_batches=3)
    with pytest.raises(LightningPathSIGTERMException):
        trainer.fit(model, *P.loaders())
    saved = load(str(tmp_path / "run" / "hpc_ckpt_1.ckpt"))
    assert saved["global_step"] == 3 and saved["loops"]["progress"]["batches_in_epoch"] == 9
    L.seed_everything(0)
    resumed = P.Model()
    trainer = _trainer(tmp_path / "run", accumulate_grad_batches=3)
    trainer.fit(resumed, *P.loaders(), ckpt_path="last")
    assert trainer.ckpt_path == str(tmp_path / "run" / "hpc_ckpt_1.ckpt")
    assert _same_weights(resumed.state_dict(), ref.state_dict())


def test_hpc_ckpt_path_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r'ckpt_path="hpc"\)` is set but no HPC checkpoint was found'):
        _trainer(tmp_path).fit(P.Model(), *P.loaders(), ckpt_path="hpc")


# ---------------------------------------------------------------------------------------------
# two processes


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_signal_to_one_rank_stops_both_at_the_same_step_and_resumes_bit_identically(tmp_path):
    step = random.Random(os.getpid()).randrange(2, P.STEPS // 2 - 2)  # 18 steps with two ranks
    root = tmp_path / "run"
    rc, reports, err = _interrupt(root, step, "end", devices=2, rank=1)  # SIGTERM to rank 1 alone
    assert [r["rank"] for r in reports] == [0, 1], err[-3000:]
    assert reports[0]["global_step"] == reports[1]["global_step"]
    _check_stopped(rc, reports, err, reports[0]["global_step"])
    assert step <= reports[0]["global_step"] <= step + 1  # within one step
    assert (reports[0]["user_handler_calls"], reports[1]["user_handler_calls"]) == (0, 1)
    assert sorted(n for n in os.listdir(root) if n.startswith("hpc_ckpt")) == ["hpc_ckpt_1.ckpt"]
    final = _run("finish", root, devices=2)
    ref = _run("reference", tmp_path / "ref", devices=2)
    assert final["global_step"] == ref["global_step"] == P.STEPS // 2
    assert _same_weights(final["state_dict"], ref["state_dict"])
