"""W1 with each experiment tracker as the logger, against W1 with `CSVLogger`, side by side in
one process (see the reference workloads; the goal is within 2% of CSVLogger).

Each tracker runs offline or against a local store: MLflow with a `file:` tracking URI, W&B
offline, Comet offline; a tracker whose client is not installed is skipped. The configurations
run interleaved, `--repeats` rounds of each, and the table gives each one's median time per step
(the slope between a short and a long run, so start-up is apart) and its ratio to CSVLogger.

    python benches/bench_trackers.py [--repeats 5] [--short 2] [--long 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List

from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.bench.workloads import W1_BATCH, w1_data, w1_module_class

N = 4096


def _loggers() -> Dict[str, Callable[[str], Any]]:
    from ferrotrain import loggers

    found: Dict[str, Callable[[str], Any]] = {"CSVLogger": lambda root: loggers.CSVLogger(root)}
    if importlib.util.find_spec("mlflow"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        found["MLFlowLogger"] = lambda root: loggers.MLFlowLogger(tracking_uri=f"file:{root}/mlruns")
    if importlib.util.find_spec("wandb"):
        os.environ.update(WANDB_SILENT="true", WANDB_MODE="offline")
        found["WandbLogger"] = lambda root: loggers.WandbLogger(save_dir=root, offline=True, project="bench")
    if importlib.util.find_spec("comet_ml"):
        found["CometLogger"] = lambda root: (os.environ.__setitem__("COMET_OFFLINE_DIRECTORY", root),
                                             loggers.CometLogger(project="bench", online=False))[1]
    return found


def _run(make_logger: Callable[[str], Any], epochs: int) -> float:
    root = tempfile.mkdtemp(prefix="trackers-")
    try:
        trainer = L.Trainer(max_epochs=epochs, logger=make_logger(root), default_root_dir=root,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            num_sanity_val_steps=0)
        loader = DataLoader(w1_data(N), batch_size=W1_BATCH, shuffle=False)
        t0 = time.perf_counter()
        trainer.fit(w1_module_class(L)(), loader)
        elapsed = time.perf_counter() - t0
        if type(trainer.logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--short", type=int, default=2)
    parser.add_argument("--long", type=int, default=8)
    args = parser.parse_args()
    steps = (args.long - args.short) * (N // W1_BATCH)
    loggers = _loggers()
    per_step: Dict[str, List[float]] = {name: [] for name in loggers}
    warnings.filterwarnings("ignore")
    for _ in range(args.repeats):
        for name, make in loggers.items():  # interleaved: the machine's drift hits each alike
            per_step[name].append((_run(make, args.long) - _run(make, args.short)) / steps)
    base = statistics.median(per_step["CSVLogger"])
    print(f"{'logger':<14} {'us/step':>9} {'vs CSVLogger':>13}")
    for name, values in per_step.items():
        med = statistics.median(values)
        print(f"{name:<14} {med * 1e6:9.1f} {med / base:12.3f}x")


if __name__ == "__main__":
    main()
