"""The README's quickstart, run as a user runs it: a real training run that leaves logs and
checkpoints under its root folder."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_trains_and_leaves_logs_and_checkpoints(tmp_path) -> None:
    root = tmp_path / "qs"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "quickstart.py"), "--epochs", "2", "--root", str(root)],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Epoch 1" in out.stdout
    acc_line = [l for l in out.stdout.splitlines() if l.startswith("test accuracy")]
    assert acc_line and float(acc_line[0].split(":")[1]) > 0.9
    version = root / "lightning_logs" / "version_0"
    ckpts = sorted(os.listdir(version / "checkpoints"))
    assert "last.ckpt" in ckpts and any(c.startswith("epoch=") for c in ckpts)
    assert (version / "hparams.yaml").exists()
    assert any(f.startswith("events.out.tfevents") or f == "metrics.csv" for f in os.listdir(version))
