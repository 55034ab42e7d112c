"""The import-layer contract (`.importlinter`) holds on the package and fails on an upward import.

`make test` runs `lint-imports` on the tree; these tests show the contract is not vacuous: the same
contract, run on a copy of the package with one upward import added, fails and names the import.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ferrotrain

CONFIG = Path(__file__).resolve().parents[1] / ".importlinter"
PACKAGE = Path(ferrotrain.__file__).resolve().parent

pytest.importorskip("importlinter", reason="import-linter is in the test extra")


def lint(pythonpath: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(CONFIG), "--no-cache"],
        cwd=pythonpath, env=dict(os.environ, PYTHONPATH=str(pythonpath)),
        capture_output=True, text=True, timeout=120,
    )


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "ferrotrain", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    return tmp_path


def test_the_package_keeps_its_import_layers():
    result = lint(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, edge", [
    ("core/module.py", "from ferrotrain.trainer import states as _upward\n",
     "ferrotrain.core.module -> ferrotrain.trainer.states"),
    # Function-level imports count as much as module-level ones.
    ("utilities/rank_zero.py", "def _upward():\n    from ferrotrain.callbacks import early_stopping\n",
     "ferrotrain.utilities.rank_zero -> ferrotrain.callbacks.early_stopping"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, edge):
    root = copy_package(tmp_path)
    with open(root / "ferrotrain" / module, "a") as f:
        f.write("\n" + line)
    result = lint(root)
    assert result.returncode != 0
    assert "1 broken" in result.stdout
    assert edge in result.stdout
