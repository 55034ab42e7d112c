"""The redirect (`python -m ferrotrain.lightning`, `ferrotrain.lightning.install()`), run as users
run it: real scripts in subprocesses, written against Lightning's import paths."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import ferrotrain

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ferrotrain.__file__)))


def env_with(*dirs: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *dirs, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run(tmp_path, source: str, *args: str, redirect: bool = True, extra_path: tuple = ()) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    prefix = [sys.executable, "-m", "ferrotrain.lightning"] if redirect else [sys.executable]
    env = env_with(*extra_path)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(prefix + [str(script), *args], capture_output=True, text=True, timeout=190,
                          env=env, cwd=tmp_path)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lightning_names_are_ferrotrain_objects(tmp_path):
    proc = run(tmp_path, """
        import json, sys
        import lightning.pytorch as pl
        import pytorch_lightning as ptl
        import lightning as L
        from lightning.pytorch.callbacks import ModelCheckpoint
        from pytorch_lightning.loggers import CSVLogger
        from lightning.pytorch.callbacks.progress.tqdm_progress import TQDMProgressBar
        from lightning.pytorch.core.mixins import HyperparametersMixin
        import ferrotrain, ferrotrain.callbacks, ferrotrain.loggers
        print(json.dumps({
            "pl": pl is ferrotrain, "ptl": ptl is ferrotrain,
            "callbacks": sys.modules["lightning.pytorch.callbacks"] is ferrotrain.callbacks,
            "checkpoint": ModelCheckpoint is ferrotrain.callbacks.ModelCheckpoint,
            "csv": CSVLogger is ferrotrain.loggers.CSVLogger,
            "tqdm": TQDMProgressBar is ferrotrain.callbacks.TQDMProgressBar,
            "root": [L.Trainer is ferrotrain.Trainer, L.LightningModule is ferrotrain.LightningModule,
                     L.LightningDataModule is ferrotrain.LightningDataModule, L.Callback is ferrotrain.Callback,
                     L.seed_everything is ferrotrain.seed_everything],
            "mixin": HyperparametersMixin is ferrotrain.core.hparams.HyperparametersMixin,
            "attribute": L.pytorch is ferrotrain and L.pytorch.loggers is ferrotrain.loggers,
            "spec": ferrotrain.callbacks.__spec__.name,
            "argv": sys.argv[1:], "name": __name__,
        }))
    """, "--lr", "0.1")
    got = last_json(proc)
    assert got == {"pl": True, "ptl": True, "callbacks": True, "checkpoint": True, "csv": True, "tqdm": True,
                   "root": [True] * 5, "mixin": True, "attribute": True, "spec": "ferrotrain.callbacks",
                   "argv": ["--lr", "0.1"], "name": "__main__"}


def test_script_trains_on_ferrotrain(tmp_path):
    (tmp_path / "helper.py").write_text("STEPS = 3\n")  # the script's folder leads sys.path
    proc = run(tmp_path, """
        import json
        import torch
        import pytorch_lightning as ptl
        import lightning.pytorch as pl
        from helper import STEPS

        class Model(ptl.LightningModule):
            def __init__(self, lr=0.1):
                super().__init__()
                self.save_hyperparameters()
                self.layer = torch.nn.Linear(4, 1)
            def training_step(self, batch, batch_idx):
                return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
        model = Model()
        trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
        print(json.dumps({"trainer": type(trainer).__module__, "steps": trainer.global_step,
                          "isinstance": isinstance(model, pl.LightningModule), "hparams": dict(model.hparams)}))
    """)
    assert last_json(proc) == {"trainer": "ferrotrain.trainer.trainer", "steps": 3, "isinstance": True,
                               "hparams": {"lr": 0.1}}


def test_module_ferrotrain_lacks_is_an_import_error_naming_it(tmp_path):
    # (`lightning.pytorch.overrides`: Lightning's DDP wrappers, which ferrotrain's strategies do without.)
    proc = run(tmp_path, "import lightning.pytorch.overrides\n")
    assert proc.returncode == 1
    assert "ModuleNotFoundError: No module named 'lightning.pytorch.overrides'" in proc.stderr
    assert "ferrotrain.overrides" in proc.stderr
    # Probing for a module (as libraries do before importing optional parts) answers, not crashes.
    proc = run(tmp_path, """
        import importlib.util
        try:
            importlib.util.find_spec("pytorch_lightning.overrides")
        except ModuleNotFoundError as exc:
            print(exc.name)
    """)
    assert proc.stdout.strip() == "pytorch_lightning.overrides"


def test_fabric_without_lightning_is_an_import_error_naming_it(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('lightning') is None)"],
                           capture_output=True, text=True, env=env_with(), timeout=60)
    if probe.stdout.strip() != "True":
        pytest.skip("a real lightning is installed: lightning.fabric is its own")
    proc = run(tmp_path, "import lightning.fabric\n")
    assert "No module named 'lightning.fabric'" in proc.stderr
    proc = run(tmp_path, "import lightning\nlightning.Fabric\n")
    assert "lightning.Fabric is Lightning Fabric, which ferrotrain does not provide" in proc.stderr


def test_install_in_process_and_uninstall(tmp_path):
    proc = run(tmp_path, """
        import json, sys
        import ferrotrain.lightning
        ferrotrain.lightning.install()
        ferrotrain.lightning.install()  # a second call does nothing
        import lightning.pytorch as pl
        import ferrotrain
        installed = [ferrotrain.lightning.is_installed(), pl is ferrotrain,
                     sum(type(f).__name__ == "RedirectFinder" for f in sys.meta_path)]
        ferrotrain.lightning.uninstall()
        gone = [ferrotrain.lightning.is_installed(), "lightning.pytorch" in sys.modules, "lightning" in sys.modules]
        print(json.dumps({"installed": installed, "gone": gone}))
    """, redirect=False)
    assert last_json(proc) == {"installed": [True, True, 1], "gone": [False, False, False]}


def test_install_after_lightning_was_imported_is_refused(tmp_path):
    # A stand-in for a real Lightning imported before the redirect: a package at Lightning's name.
    fake = tmp_path / "fake" / "pytorch_lightning"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("class LightningModule: pass\n")
    proc = run(tmp_path, """
        import pytorch_lightning
        import ferrotrain.lightning
        try:
            ferrotrain.lightning.install()
        except RuntimeError as exc:
            print(exc)
    """, redirect=False, extra_path=(str(tmp_path / "fake"),))
    assert proc.returncode == 0, proc.stderr
    assert "install() must run before Lightning is imported, but pytorch_lightning is imported already" in proc.stdout


def test_module_form_and_usage(tmp_path):
    (tmp_path / "mymod.py").write_text(
        "import sys, lightning.pytorch as pl, ferrotrain\nprint(__name__, pl is ferrotrain, sys.argv[1:])\n"
    )
    proc = subprocess.run([sys.executable, "-m", "ferrotrain.lightning", "-m", "mymod", "x"], capture_output=True,
                          text=True, timeout=120, env=env_with(str(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "__main__ True ['x']"
    proc = subprocess.run([sys.executable, "-m", "ferrotrain.lightning", "-c",
                           "import sys, pytorch_lightning, ferrotrain; print(pytorch_lightning is ferrotrain, sys.argv)", "y"],
                          capture_output=True, text=True, timeout=120, env=env_with())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True ['-c', 'y']"
    proc = subprocess.run([sys.executable, "-m", "ferrotrain.lightning"], capture_output=True, text=True,
                          timeout=60, env=env_with())
    assert proc.returncode == 2 and "usage: python -m ferrotrain.lightning" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ferrotrain.lightning", str(tmp_path / "missing.py")],
                          capture_output=True, text=True, timeout=60, env=env_with())
    assert proc.returncode == 2 and "missing.py" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_ddp_ranks_run_under_the_redirect_too(tmp_path):
    # The launcher starts rank 1 with the same command line, redirect included: every rank trains
    # a `pytorch_lightning.LightningModule` that is ferrotrain's.
    proc = run(tmp_path, """
        import json, os, sys
        import torch
        import pytorch_lightning as ptl
        import ferrotrain

        class Model(ptl.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(4, 1)
            def training_step(self, batch, batch_idx):
                return self.layer(batch[0]).pow(2).mean()
            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        data = torch.utils.data.TensorDataset(torch.randn(16, 4))
        trainer = ptl.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=2, logger=False,
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=4))
        with open(f"rank{trainer.global_rank}.json", "w") as f:
            json.dump({"ours": ptl is ferrotrain, "world": trainer.world_size, "steps": trainer.global_step}, f)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"ours": True, "world": 2, "steps": 2}
