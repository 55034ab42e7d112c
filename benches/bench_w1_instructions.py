"""W1 in instructions, not seconds: a figure that the machine's other load cannot move.

Each configuration (the raw loop, ferrotrain with defaults, ferrotrain quiet, and Lightning's two
when it is installed) runs in a fresh interpreter under valgrind's callgrind, once for a short and
once for a long fit; the cost per step is the difference of the training thread's instruction
counts divided by the steps between them (start-up cancels out, as in `bench_w1.py`). Background
threads (the checkpoint and event-file writers) are not counted: they do not hold up the loop.

Instructions are not time (a cache miss costs more than an add), but the count is the same from
run to run, so a change of a fraction of a percent in per-step work shows, where wall clocks on a
shared machine move by 10-15% between identical runs. It takes long (valgrind runs about 50 times
slower): about 4 minutes per run, 2 runs per configuration.

    python benches/bench_w1_instructions.py [--short 1] [--long 3] [--only raw,ferrotrain]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

# One configuration's fit, run in the measured interpreter.
CHILD = """
import contextlib, io, logging, shutil, sys, tempfile, warnings
import torch
from torch.utils.data import DataLoader
from ferrotrain.bench.workloads import w1_data, w1_module_class, w1_raw, W1_BATCH
torch.set_num_threads(1)
warnings.filterwarnings("ignore")
config, epochs = sys.argv[1], int(sys.argv[2])
ds = w1_data(4096)
if config.startswith("raw"):
    w1_raw(epochs, ds, direct_read=config == "raw-direct")
else:
    lib, mode = config.split("-")
    L = __import__(lib)
    for name in ("ferrotrain", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    root = tempfile.mkdtemp()
    kw = dict(max_epochs=epochs, default_root_dir=root, enable_model_summary=False, num_sanity_val_steps=0)
    if mode == "quiet":
        kw.update(enable_progress_bar=False, logger=False, enable_checkpointing=False)
    if lib == "lightning":
        kw.update(accelerator="cpu", devices=1)
    with contextlib.redirect_stdout(io.StringIO()):
        L.Trainer(**kw).fit(w1_module_class(L)(), DataLoader(ds, batch_size=W1_BATCH, shuffle=False))
    shutil.rmtree(root, ignore_errors=True)
"""


def main_thread_instructions(config: str, epochs: int, workdir: str) -> int:
    out = os.path.join(workdir, f"{config}-{epochs}.cg")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}.%p",
         sys.executable, "-c", CHILD, config, str(epochs)],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # Thread 1 is the interpreter's main thread: the training loop's.
    (path,) = glob.glob(f"{out}.*-01")
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=1)
    ap.add_argument("--long", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated parts of configuration names")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: this benchmark counts instructions with callgrind")
    # raw-direct: the raw loop reading batches as ferrotrain does (see bench_w1.py).
    configs = ["raw", "raw-direct", "ferrotrain-defaults", "ferrotrain-quiet"]
    if importlib.util.find_spec("lightning") is not None:
        configs += ["lightning-defaults", "lightning-quiet"]
    if args.only:
        wanted = args.only.split(",")
        configs = [c for c in configs if c.startswith("raw") or any(w in c for w in wanted)]
    steps = (args.long - args.short) * 4096 // 32
    per_step: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="w1-cg-") as workdir:
        for config in configs:
            counts: List[int] = [main_thread_instructions(config, e, workdir) for e in (args.short, args.long)]
            per_step[config] = (counts[1] - counts[0]) / steps
            print(f"  {config}: {per_step[config]:,.0f} instructions/step", flush=True)
    raw, direct = per_step["raw"], per_step["raw-direct"]
    print(f"\nW1 in instructions on the training thread: slope between {args.short} and {args.long} epochs")
    print(f"{'configuration':<22}{'instr/step':>14}{'vs raw':>10}{'overhead':>10}{'vs direct':>11}")
    for config, n in per_step.items():
        print(f"{config:<22}{n:>14,.0f}{n / raw:>10.3f}{(n / raw - 1) * 100:>9.1f}%{n / direct:>11.3f}")


if __name__ == "__main__":
    main()
