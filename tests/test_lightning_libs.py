"""Libraries built on Lightning, trained unchanged under the redirect: each script in
`tests/lightning_libs/` is run twice in subprocesses, as is (on real Lightning) and under
`python -m ferrotrain.lightning`, and the per-step training losses must agree. Skipped when the
library (the `lightning-libs` extra) or real Lightning, the comparison, is not installed."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import ferrotrain

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lightning_libs")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ferrotrain.__file__)))

# script -> (the library it trains, the Lightning package it imports, its argument: steps/epochs)
LIBRARIES = {
    "forecasting_tft.py": ("pytorch_forecasting", "lightning", "6"),
    "tabular_mlp.py": ("pytorch_tabular", "pytorch_lightning", "2"),
}


def run(script: str, arg: str, redirect: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONHASHSEED"] = "0"
    prefix = [sys.executable, "-m", "ferrotrain.lightning"] if redirect else [sys.executable]
    proc = subprocess.run(prefix + [os.path.join(HERE, script), arg], capture_output=True, text=True,
                          timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(LIBRARIES))
def test_library_trains_as_on_lightning(script):
    library, lightning_package, arg = LIBRARIES[script]
    for needed in (library, lightning_package, "lightning"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed (the lightning-libs extra)")
    ours = run(script, arg, redirect=True)
    theirs = run(script, arg, redirect=False)
    assert ours["trainer"] == "ferrotrain.trainer.trainer"
    assert theirs["trainer"].startswith(lightning_package + ".")
    assert ours["global_step"] == theirs["global_step"] > 0
    assert len(ours["losses"]) == len(theirs["losses"]) == theirs["global_step"]
    assert all(close(a, b) for a, b in zip(ours["losses"], theirs["losses"])), (ours["losses"], theirs["losses"])
    if "test" in theirs:
        for got, want in zip(ours["test"], theirs["test"]):
            assert got.keys() == want.keys() and all(close(got[k], want[k]) for k in want)
