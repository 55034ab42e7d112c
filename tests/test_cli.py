"""LightningCLI run as a real script in a subprocess: fits from a YAML config,
saves the config in the log dir, and --print_config output is a config that
parses back to the same values."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jsonargparse")
yaml = pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(tmp_path, *args):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "cli_example.py", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def script_dir(tmp_path):
    for name in ("cli_example.py", "cli_example.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    return tmp_path


def test_fit_from_yaml_saves_config(script_dir):
    proc = _run(script_dir, "fit", "--config", "cli_example.yaml",
                "--trainer.default_root_dir=out", "--model.hidden=4")
    assert proc.returncode == 0, proc.stderr
    version = script_dir / "out" / "lightning_logs" / "version_0"
    saved = yaml.safe_load((version / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2
    assert saved["model"] == {"hidden": 4, "lr": 0.1}
    assert saved["data"]["batch_size"] == 8
    assert saved["seed_everything"] == 7
    # 64 samples / batch 8 = 8 steps an epoch, two epochs
    assert [p.name for p in (version / "checkpoints").iterdir()] == ["epoch=1-step=16.ckpt"]


def test_print_config_round_trips(script_dir):
    printed = _run(script_dir, "fit", "--config", "cli_example.yaml", "--print_config")
    assert printed.returncode == 0, printed.stderr
    first = yaml.safe_load(printed.stdout)
    assert first["model"]["lr"] == 0.1
    (script_dir / "printed.yaml").write_text(printed.stdout)
    again = _run(script_dir, "fit", "--config", "printed.yaml", "--print_config")
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(again.stdout) == first
    # print_config must not train
    assert not (script_dir / "lightning_logs").exists()


def _example_module():
    """examples/cli_example.py, imported (it stays in sys.modules for class_path lookups)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import cli_example
    finally:
        sys.path.pop(0)
    return cli_example


def test_run_false_builds_objects_without_fitting(tmp_path):
    cli_example = _example_module()
    from ferrotrain.cli import LightningCLI

    cli = LightningCLI(cli_example.RegressionModel, cli_example.RegressionData, run=False,
                       trainer_defaults={"max_epochs": 3, "default_root_dir": str(tmp_path)},
                       args=["--model.hidden=5", "--data.batch_size=4"])
    assert cli.model.hparams.hidden == 5
    assert cli.datamodule.batch_size == 4
    assert cli.trainer.max_epochs == 3
    assert cli.trainer.global_step == 0


def test_unknown_subcommand_is_an_error(script_dir):
    proc = _run(script_dir, "train")
    assert proc.returncode != 0
    assert "fit" in proc.stderr


def test_missing_jsonargparse_names_the_package():
    code = (
        "import sys; sys.modules['jsonargparse'] = None\n"
        "import ferrotrain.cli as cli\n"
        "try:\n    cli.LightningCLI(run=False, args=[])\n"
        "except ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout and "jsonargparse" in out.stdout, out.stderr


def test_subclass_mode_takes_class_path(tmp_path):
    cli_example = _example_module()
    import ferrotrain as L
    from ferrotrain.cli import LightningCLI

    cli = LightningCLI(L.LightningModule, cli_example.RegressionData, run=False,
                       subclass_mode_model=True,
                       args=["--model.class_path=cli_example.RegressionModel",
                             "--model.init_args.hidden=3",
                             f"--trainer.default_root_dir={tmp_path}"])
    assert type(cli.model).__name__ == "RegressionModel"
    assert cli.model.hparams.hidden == 3


def test_model_checkpoint_annotations_parse_on_the_command_line():
    """Its signature holds real types (not strings), so an argument parser can use one directly:
    `save_last` takes booleans in words and "link", as in Lightning."""
    import inspect

    pytest.importorskip("jsonargparse")
    from jsonargparse import ArgumentParser

    from ferrotrain.callbacks import ModelCheckpoint

    annotation = inspect.signature(ModelCheckpoint).parameters["save_last"].annotation
    assert not isinstance(annotation, str)
    parser = ArgumentParser()
    parser.add_argument("--a", type=annotation)
    assert [parser.parse_args(["--a", v]).a for v in ("true", "no", "link")] == [True, False, "link"]
