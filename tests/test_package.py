"""The package as users meet it: public names, a light import, and a wheel that installs and
imports in a clean virtualenv without a Rust toolchain."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import ferrotrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_public_names() -> None:
    for name in ("Trainer", "LightningModule", "LightningDataModule", "Callback", "seed_everything"):
        assert name in ferrotrain.__all__ and hasattr(ferrotrain, name)
    from ferrotrain.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint  # noqa: F401
    from ferrotrain.loggers import CSVLogger, Logger, TensorBoardLogger  # noqa: F401


def test_import_pulls_in_nothing_heavy() -> None:
    """`import ferrotrain` must not import tensorboard, lightning or the progress-bar/rich stacks."""
    code = (
        "import sys, json, torch; before = set(sys.modules); import ferrotrain; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    new = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in new if m.split(".")[0] in ("tensorboard", "lightning", "pytorch_lightning", "yaml", "rich", "tqdm", "numpy")]
    assert heavy == []


def test_seed_everything_is_reproducible() -> None:
    import torch

    ferrotrain.seed_everything(123, verbose=False)
    a = torch.rand(3)
    ferrotrain.seed_everything(123, verbose=False)
    assert torch.equal(a, torch.rand(3))
    with pytest.raises(ValueError, match="seed"):
        ferrotrain.seed_everything(-1)


def _maturin() -> str:
    exe = shutil.which("maturin", path=os.path.dirname(sys.executable)) or shutil.which("maturin")
    if exe is None:
        pytest.skip("maturin is not installed")
    return exe


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installs_and_imports_in_a_clean_virtualenv(tmp_path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([_maturin(), "build", "--release", "--out", str(dist)], cwd=ROOT, check=True,
                   capture_output=True)
    wheels = glob.glob(str(dist / "ferrotrain-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    assert "abi3" in os.path.basename(wheel)
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("ferrotrain/__init__.py", "ferrotrain/_core.pyi", "ferrotrain/py.typed", "ferrotrain/trainer/trainer.py"):
        assert expected in names, expected
    assert any(n.startswith("ferrotrain/_core") and n.endswith(".so") for n in names)
    assert not any(n.endswith(".rs") for n in names)

    # A fresh virtualenv: the wheel installed without dependencies, torch taken from this
    # environment's site-packages through a path file (installing torch again would take minutes).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], check=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import torch

    with open(os.path.join(site, "zz_torch_from_parent.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not os.path.exists(os.path.join(p, "cargo")))
    code = (
        "import ferrotrain, torch, tempfile; from torch.utils.data import DataLoader, TensorDataset;\n"
        "assert ferrotrain.__file__.startswith(%r), ferrotrain.__file__\n"
        "class M(ferrotrain.LightningModule):\n"
        "    def __init__(self):\n        super().__init__(); self.l = torch.nn.Linear(2, 1)\n"
        "    def training_step(self, b, i): return self.l(b[0]).pow(2).mean()\n"
        "    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "t = ferrotrain.Trainer(max_epochs=1, default_root_dir=tempfile.mkdtemp(), enable_progress_bar=False, logger=False)\n"
        "t.fit(M(), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)); print('steps', t.global_step)\n"
    ) % (str(venv),)
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "steps 2" in out.stdout
