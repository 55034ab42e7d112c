"""The stop-signal flags: real signals sent to this process, a stand-in `scontrol` on PATH."""

import os
import signal
import stat
import sys

import pytest

from ferrotrain.trainer.signals import SignalFlags, requeue_job, slurm_requeue_signal


def test_sigterm_sets_the_flag_and_restores_the_users_handler():
    seen = []
    user = lambda s, f: seen.append(s)
    old = signal.signal(signal.SIGTERM, user)
    try:
        with SignalFlags() as flags:
            assert not flags.stop_requested
            os.kill(os.getpid(), signal.SIGTERM)
            assert flags.received == signal.SIGTERM
            assert not flags.requeue_requested
        assert seen == [signal.SIGTERM]  # the user's handler still ran
        assert signal.getsignal(signal.SIGTERM) is user
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR1 is POSIX")
def test_requeue_signal_under_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm_requeue_signal() is None
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    sig = slurm_requeue_signal()
    assert sig == signal.SIGUSR1
    before = signal.getsignal(signal.SIGUSR1)
    with SignalFlags(requeue_signal=sig) as flags:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flags.requeue_requested
    assert signal.getsignal(signal.SIGUSR1) == before


@pytest.mark.skipif(sys.platform == "win32", reason="shell stand-in")
def test_requeue_calls_scontrol(tmp_path, monkeypatch):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert requeue_job() == 0
    assert log.read_text().split() == ["requeue", "1234"]


def test_requeue_without_slurm_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    with pytest.raises(RuntimeError, match="SLURM_JOB_ID"):
        requeue_job()
