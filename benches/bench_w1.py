"""W1 — loop overhead on a tiny model (see the reference workloads).

Runs, side by side in one process: the hand-written PyTorch loop, ferrotrain with defaults,
ferrotrain quiet (no progress bar, logger or checkpointing), and Lightning when it is importable.
Each configuration's cost per step is the slope between a short and a long run (start-up is
reported apart). Prints a table of medians and ratios against the raw loop, and against the raw
loop reading its batches as ferrotrain reads a TensorDataset (one call per tensor instead of the
DataLoader's per-sample collation; same tensors): that column is the Trainer's own cost.

A second figure, less moved by the machine's other load (which only ever makes an epoch slower):
each configuration's fastest epoch, from the start of one epoch to the start of the next (so the
epoch's checkpoint, logging and bar are in it), over every epoch but the first of every run.

    python benches/bench_w1.py [--repeats 3] [--short 3] [--long 13] [--only raw,ferro,...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset

from ferrotrain.bench.workloads import W1_BATCH as BATCH, w1_data, w1_module_class as module_class, w1_net as make_net, w1_raw  # noqa: F401

N = 4096
# The clock at each epoch's start and at the end of the run being timed (see `epoch_times`).
EPOCH_STARTS: List[float] = []


def raw_loop(epochs: int, ds: TensorDataset) -> None:
    w1_raw(epochs, ds, EPOCH_STARTS)


def raw_loop_direct(epochs: int, ds: TensorDataset) -> None:
    w1_raw(epochs, ds, EPOCH_STARTS, direct_read=True)


def stamp_callback(L):  # noqa: N803
    """A callback that records the clock at every epoch's start and at the end of training."""

    class Stamp(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            EPOCH_STARTS.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            EPOCH_STARTS.append(time.perf_counter())

    return Stamp()


def make_data() -> TensorDataset:
    return w1_data(N)


def trainer_run(L, quiet: bool, prefetch: str = "adaptive") -> Callable[[int, TensorDataset], None]:  # noqa: N803
    """`prefetch` (ferrotrain only): "adaptive" (the default: decide from the first batches of each
    epoch), "forced" (prefetch depth 2 from the first batch) or "off" (`prefetch_batches = 0`)."""
    cls = module_class(L)

    def run(epochs: int, ds: TensorDataset) -> None:
        root = tempfile.mkdtemp(prefix="w1-")
        kw = dict(max_epochs=epochs, default_root_dir=root, enable_model_summary=False, num_sanity_val_steps=0,
                  callbacks=[stamp_callback(L)])
        if quiet:
            kw.update(enable_progress_bar=False, logger=False, enable_checkpointing=False)
        if L.__name__ == "lightning":
            kw["accelerator"] = "cpu"
            kw["devices"] = 1
        trainer = L.Trainer(**kw)
        fetching, probe = None, 0
        if prefetch == "off":
            trainer.prefetch_batches = 0
        elif prefetch == "forced":
            try:  # the fetch module's home since the loops package; earlier trees for same-run comparisons
                from ferrotrain.loops import fetch as fetching
            except ImportError:
                from ferrotrain.trainer import fetching

            probe, fetching.PROBE_BATCHES = fetching.PROBE_BATCHES, 0  # the prefetcher starts with batch 0
        try:
            trainer.fit(cls(), DataLoader(ds, batch_size=BATCH, shuffle=False))
        finally:
            if fetching is not None:
                fetching.PROBE_BATCHES = probe
            shutil.rmtree(root, ignore_errors=True)

    return run


# wall: the reference figure. thread: the main thread's CPU time, which the machine's other load
# and steal time do not inflate (work moved to background threads is not counted). cpu: the
# whole process's CPU time.
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time, "cpu": time.process_time}


def time_run(fn: Callable[[int, TensorDataset], None], epochs: int, ds: TensorDataset, show: bool,
             clock: Callable[[], float] = time.perf_counter, epochs_out: Optional[List[float]] = None) -> float:
    """The run's time on `clock`; its epoch durations but the first go to `epochs_out`."""
    sink = contextlib.nullcontext() if show else contextlib.redirect_stdout(io.StringIO())
    err = contextlib.nullcontext() if show else contextlib.redirect_stderr(io.StringIO())
    EPOCH_STARTS.clear()
    with sink, err:
        t0 = clock()
        fn(epochs, ds)
        elapsed = clock() - t0
    if epochs_out is not None:
        epochs_out.extend(b - a for a, b in zip(EPOCH_STARTS[1:], EPOCH_STARTS[2:]))
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short", type=int, default=3)
    ap.add_argument("--long", type=int, default=13)
    ap.add_argument("--only", default="")
    ap.add_argument("--show", action="store_true", help="let progress bars print (run under a terminal)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time (the reference figure), the main thread's CPU time, or the process's CPU time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ferrotrain

    configs: Dict[str, Callable[[int, TensorDataset], None]] = {
        "raw loop": raw_loop,
        # The same raw loop again, timed in its own slot: its ratio is this run's noise floor.
        "raw loop (control)": raw_loop,
        # The raw loop reading its batches as ferrotrain does (one call per tensor, not per
        # sample): against it, the Trainer's own cost shows apart from the faster read.
        "raw loop, direct read": raw_loop_direct,
        "ferrotrain defaults": trainer_run(ferrotrain, quiet=False),
        "ferrotrain quiet": trainer_run(ferrotrain, quiet=True),
        "ferro quiet forced-pf": trainer_run(ferrotrain, quiet=True, prefetch="forced"),
        "ferro quiet no-pf": trainer_run(ferrotrain, quiet=True, prefetch="off"),
    }
    try:
        import warnings

        warnings.filterwarnings("ignore")
        import lightning

        configs["lightning defaults"] = trainer_run(lightning, quiet=False)
        configs["lightning quiet"] = trainer_run(lightning, quiet=True)
    except ImportError:
        print("lightning is not installed: its rows are skipped")
    if args.only:
        wanted = set(args.only.split(","))
        configs = {k: v for k, v in configs.items() if any(w in k for w in wanted) or k.startswith("raw loop")}
    ds = make_data()
    steps_per_epoch = N // BATCH
    per_step: Dict[str, List[float]] = {k: [] for k in configs}
    startup: Dict[str, List[float]] = {k: [] for k in configs}
    epoch_times: Dict[str, List[float]] = {k: [] for k in configs}
    for name, fn in configs.items():  # warm-up: imports, first allocations
        time_run(fn, 1, ds, False)
    for _ in range(args.repeats):
        # Interleave configurations so drift on a shared machine hits all of them alike.
        for name, fn in configs.items():
            t_short = time_run(fn, args.short, ds, args.show, CLOCKS[args.clock], epoch_times[name])
            t_long = time_run(fn, args.long, ds, args.show, CLOCKS[args.clock], epoch_times[name])
            slope = (t_long - t_short) / ((args.long - args.short) * steps_per_epoch)
            per_step[name].append(slope)
            startup[name].append(t_short - slope * args.short * steps_per_epoch)
    raw = statistics.median(per_step["raw loop"])
    print(f"\nW1: {N} samples, batch {BATCH}, {steps_per_epoch} steps/epoch; slope between {args.short} and {args.long} epochs, "
          f"median of {args.repeats}, {args.clock} clock")
    raw_epoch = min(epoch_times["raw loop"])
    direct = statistics.median(per_step["raw loop, direct read"])
    direct_epoch = min(epoch_times["raw loop, direct read"])
    print(f"{'configuration':<23}{'us/step':>9}{'vs raw':>9}{'overhead':>10}{'vs direct':>11}{'start-up s':>12}"
          f"{'fastest epoch ms':>18}{'vs raw':>8}{'vs direct':>11}")
    for name in configs:
        us = statistics.median(per_step[name]) * 1e6
        ratio = statistics.median(per_step[name]) / raw
        fastest = min(epoch_times[name])
        print(f"{name:<23}{us:>9.1f}{ratio:>9.3f}{(ratio - 1) * 100:>9.1f}%{statistics.median(per_step[name]) / direct:>11.3f}"
              f"{statistics.median(startup[name]):>12.3f}{fastest * 1e3:>18.2f}{fastest / raw_epoch:>8.3f}"
              f"{fastest / direct_epoch:>11.3f}")


if __name__ == "__main__":
    sys.exit(main())
