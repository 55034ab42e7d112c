"""W1 with each experiment tracker as the logger, against W1 with `CSVLogger` (see the reference
workloads; the goal is within 2% of CSVLogger).

Each tracker runs offline or against a local store: MLflow with a `file:` tracking URI, W&B
offline, Comet offline; a tracker whose client is not installed is skipped. Every run is its own
subprocess, so a tracker's threads and service processes, its global run and its imports never
reach the next configuration; the configurations run interleaved (the order turned each round),
`--repeats` rounds of each.

Figures per configuration, each the median over the rounds and its ratio to CSVLogger, all over
the steps from the start of epoch 3 to `on_train_end` of a 13-epoch run: the steps of W1's slope
(between a 3- and a 13-epoch run), with the tracker's start before them (its run is created on
the first log, and its client's start-up work runs on beside the first epochs) and its
`finalize` after them.
- `wall`: wall-clock time per step, the figure the goal is about.
- `train cpu`: CPU time per step of the training thread: the work a tracker leaves on it.
- `tree cpu`: CPU time per step of the whole process tree, the tracker's threads and its service
  processes (W&B's) included: the work a tracker does anywhere while training.
On a machine whose cores are busy with other work, wall time swings by far more than 2% from run
to run while CPU times hold; read the CPU figures there.

Each run also reads back, with the tracker's own reader, how many `train_loss` points it logged,
so a tracker that skips work cannot look fast (`points`, the same for every configuration; -1
where no reader is used).

`--progress-bar` turns the Trainer's bar on (W1's defaults): a tracker that captures the console
(W&B, Comet) then sees every bar write.

    python benches/bench_trackers.py [--repeats 5] [--epochs 13] [--skip 3] [--progress-bar]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from typing import Any, Dict, List, Tuple

N = 4096
_ALL = ("CSVLogger", "MLFlowLogger", "WandbLogger", "CometLogger")
_CLIENT = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb", "CometLogger": "comet_ml"}


def _make_logger(name: str, root: str) -> Any:
    from ferrotrain import loggers

    if name == "CSVLogger":
        return loggers.CSVLogger(root)
    if name == "MLFlowLogger":
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return loggers.MLFlowLogger(tracking_uri=f"file:{root}/mlruns")
    if name == "WandbLogger":
        os.environ.update(WANDB_SILENT="true", WANDB_MODE="offline")
        return loggers.WandbLogger(save_dir=root, offline=True, project="bench")
    os.environ["COMET_OFFLINE_DIRECTORY"] = os.path.join(root, "comet")
    return loggers.CometLogger(project="bench", online=False)


def _points(name: str, logger: Any, root: str) -> int:
    """How many `train_loss` points the tracker's own reader finds (-1: no reader used)."""
    if name == "CSVLogger":
        import csv

        with open(os.path.join(logger.log_dir, "metrics.csv")) as fp:
            return sum(1 for row in csv.DictReader(fp) if row.get("train_loss"))
    if name == "MLFlowLogger":
        import mlflow

        return len(mlflow.tracking.MlflowClient(logger._tracking_uri).get_metric_history(logger.run_id, "train_loss"))
    if name == "CometLogger":
        (archive,) = glob.glob(os.path.join(root, "comet", "*.zip"))
        with zipfile.ZipFile(archive) as zf:
            lines = zf.read("messages.json").decode().splitlines()
        messages = [json.loads(line) for line in lines if line.strip()]
        return sum(1 for m in messages if m["type"] == "metric_msg" and m["payload"]["metric"]["metricName"] == "train_loss")
    return -1


def _tree_cpu_s() -> float:
    """CPU seconds of this process (all its threads) and of its running descendants (read from
    /proc where there is one: W&B's service process, for one)."""
    total = time.process_time()
    try:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fp:
                        fields = fp.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # gone meanwhile
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    except OSError:
        return total
    tick = os.sysconf("SC_CLK_TCK")
    parents = {os.getpid()}
    while True:
        children = {pid for pid, (ppid, _) in stats.items() if ppid in parents and pid not in parents}
        if not children:
            break
        parents |= children
        total += sum(stats[pid][1] for pid in children) / tick
    return total


def _worker(name: str, epochs: int, skip: int, progress_bar: bool = False) -> None:
    """One fit with `name` as the logger; prints the timings as one JSON line."""
    from torch.utils.data import DataLoader

    import ferrotrain as L
    from ferrotrain.bench.workloads import W1_BATCH, w1_data, w1_module_class

    class Clock(L.Callback):
        """(wall, training-thread CPU, process-tree CPU) at each epoch start and at the end."""

        def __init__(self) -> None:
            self.epoch_starts: List[Tuple[float, float, float]] = []
            self.train_end = (0.0, 0.0, 0.0)

        @staticmethod
        def now() -> Tuple[float, float, float]:
            return time.perf_counter(), time.thread_time(), _tree_cpu_s()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epoch_starts.append(self.now())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.train_end = self.now()

    warnings.filterwarnings("ignore")
    root = tempfile.mkdtemp(prefix="trackers-")
    try:
        clock = Clock()
        logger = _make_logger(name, root)
        trainer = L.Trainer(max_epochs=epochs, logger=logger, default_root_dir=root, callbacks=[clock],
                            enable_progress_bar=progress_bar, enable_model_summary=False, enable_checkpointing=False,
                            num_sanity_val_steps=0)
        loader = DataLoader(w1_data(N), batch_size=W1_BATCH, shuffle=False)
        t0 = time.perf_counter()
        trainer.fit(w1_module_class(L)(), loader)
        fit_s = time.perf_counter() - t0
        steps_per_epoch = N // W1_BATCH
        steps = (epochs - skip) * steps_per_epoch
        wall, train_cpu, tree_cpu = ((end - start) / steps for end, start in zip(clock.train_end, clock.epoch_starts[skip]))
        result = {"wall": wall, "train_cpu": train_cpu, "tree_cpu": tree_cpu, "fit": fit_s / (epochs * steps_per_epoch),
                  "points": _points(name, logger, root)}
        print(json.dumps(result), flush=True)
    finally:
        if name == "WandbLogger":
            import wandb

            wandb.finish()
        shutil.rmtree(root, ignore_errors=True)


def _run_worker(name: str, epochs: int, skip: int, progress_bar: bool) -> Dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--epochs", str(epochs), "--skip", str(skip)]
                         + (["--progress-bar"] if progress_bar else []),
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{name} run failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=13)
    parser.add_argument("--skip", type=int, default=3, help="epochs before the loop figure starts")
    parser.add_argument("--progress-bar", action="store_true", help="the Trainer's progress bar on (W1's defaults)")
    parser.add_argument("--worker", choices=_ALL, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.skip < args.epochs:
        parser.error(f"--skip {args.skip}: expected 0 < skip < epochs ({args.epochs})")
    if args.worker:
        return _worker(args.worker, args.epochs, args.skip, args.progress_bar)
    names = [n for n in _ALL if n not in _CLIENT or importlib.util.find_spec(_CLIENT[n])]
    runs: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for round_ in range(args.repeats):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:  # interleaved: the machine's drift hits each alike
            runs[name].append(_run_worker(name, args.epochs, args.skip, args.progress_bar))

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    keys = (("wall", "wall"), ("train_cpu", "train cpu"), ("tree_cpu", "tree cpu"), ("fit", "fit"))
    print(f"{'logger':<14}" + "".join(f" {label + ' us/step':>17} {'vs CSV':>7}" for _, label in keys) + f" {'points':>7}")
    for name in names:
        points = sorted({int(r["points"]) for r in runs[name]})
        cells = "".join(f" {med(name, k) * 1e6:17.1f} {med(name, k) / med('CSVLogger', k):6.3f}x" for k, _ in keys)
        print(f"{name:<14}{cells} {'/'.join(map(str, points)):>7}")


if __name__ == "__main__":
    main()
