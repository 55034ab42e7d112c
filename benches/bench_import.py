"""W4 — import time: `import X` after `import torch`, in a fresh interpreter, median of N runs,
for ferrotrain and (when installed) lightning, side by side in one run.

    python benches/bench_import.py [--runs 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys

CODE = "import time, torch; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"


def measure(module: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CODE.format(mod=module)], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows = [("ferrotrain", measure("ferrotrain", args.runs)),
            # The Trainer and its loops load on first use: this row includes them.
            ("+ Trainer", measure("ferrotrain; ferrotrain.Trainer", args.runs))]
    if importlib.util.find_spec("lightning") is not None:
        rows.append(("lightning", measure("lightning", args.runs)))
    print(f"W4: import after torch, median of {args.runs} fresh interpreters")
    print("(run once without PYTHONDONTWRITEBYTECODE first: an installed package has its bytecode)")
    print(f"{'module':<12}{'seconds':>10}{'vs ferrotrain':>16}")
    for name, t in rows:
        print(f"{name:<12}{t:>10.4f}{t / rows[0][1]:>16.1f}")


if __name__ == "__main__":
    main()
