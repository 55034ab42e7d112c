"""DDP step time: ferrotrain's `Trainer(strategy="ddp", devices=2)` on the CPU against a
hand-written DDP loop, side by side in the same two processes (gloo).

W1's model (see `bench_w1.py`), a global batch of 64 (32 per process), the same samples in the
same order on both sides (a DistributedSampler without shuffle), the same steps. `python
benches/bench_ddp.py` starts as rank 0; the Trainer starts rank 1 by re-running this script, and
both ranks then time, interleaved: the hand-written loop (DistributedDataParallel +
DistributedSampler + SGD), the same loop again (a control row: the run's noise floor), and the
Trainer (no progress bar, logger or checkpointing), each over a short and a long run on the same
process group. The cost per step is the slope between the two (start-up apart), on the wall clock
and on rank 0's main-thread CPU clock (which the machine's other load does not inflate). Rank 0
prints the medians and the ratios.

Like for like, both sides read their batches in the main thread: the "ferrotrain ddp" row sets
`trainer.prefetch_batches = 0`. The "prefetch forced" row reads them on the native prefetcher's
thread from the first batch: collating the next batch then overlaps the gloo all-reduce (which
releases the GIL), which the hand-written loop does not do. That overlap, switched on by the
adaptive fetcher misreading preemption on a loaded machine as waiting (fixed since), is what once
made ferrotrain look faster than the hand-written loop (0.70x).

    python benches/bench_ddp.py [--repeats 5] [--short 1] [--long 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_w1 import N, make_data, make_net, module_class  # noqa: E402

GLOBAL_BATCH = 64
PER_RANK = GLOBAL_BATCH // 2


def raw_ddp_loop(epochs: int, ds) -> None:
    net = torch.nn.parallel.DistributedDataParallel(make_net())
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    sampler = DistributedSampler(ds, shuffle=False)
    loader = DataLoader(ds, batch_size=PER_RANK, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def ferro_run(L, prefetch: str) -> Callable[[int, object], None]:  # noqa: N803
    """`prefetch`: "off" (main thread, as the hand-written loop), "forced" (the prefetcher from
    the first batch) or "adaptive" (the default: decided from the first batches of each epoch)."""
    cls = module_class(L)

    def run(epochs: int, ds) -> None:
        try:  # the fetch module's home since the loops package; earlier trees for same-run comparisons
            from ferrotrain.loops import fetch as fetching
        except ImportError:
            from ferrotrain.trainer import fetching

        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0)
        probe = fetching.PROBE_BATCHES
        if prefetch == "off":
            trainer.prefetch_batches = 0
        elif prefetch == "forced":
            fetching.PROBE_BATCHES = 0
        try:
            trainer.fit(cls(), DataLoader(ds, batch_size=PER_RANK, shuffle=False))
        finally:
            fetching.PROBE_BATCHES = probe

    return run


def timed(fn: Callable[[int, object], None], epochs: int, ds) -> Tuple[float, float]:
    """(wall seconds, rank 0's main-thread CPU seconds) of one run."""
    dist.barrier()  # both ranks start together
    t0, c0 = time.perf_counter(), time.thread_time()
    fn(epochs, ds)
    dist.barrier()
    return time.perf_counter() - t0, time.thread_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--short", type=int, default=1)
    ap.add_argument("--long", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ferrotrain

    ds = make_data()
    ferro_off = ferro_run(ferrotrain, "off")
    ferro_off(1, ds)  # starts rank 1 and the process group; warms up
    rank = dist.get_rank()
    configs: Dict[str, Callable[[int, object], None]] = {
        "hand-written DDP": raw_ddp_loop,
        "hand-written (control)": raw_ddp_loop,
        "ferrotrain ddp": ferro_off,
        "ferrotrain, prefetch forced": ferro_run(ferrotrain, "forced"),
    }
    raw_ddp_loop(1, ds)
    steps_per_epoch = N // GLOBAL_BATCH
    steps = (args.long - args.short) * steps_per_epoch
    wall: Dict[str, List[float]] = {k: [] for k in configs}
    cpu: Dict[str, List[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for name, fn in configs.items():  # interleaved: drift on a shared machine hits all alike
            w_short, c_short = timed(fn, args.short, ds)
            w_long, c_long = timed(fn, args.long, ds)
            wall[name].append((w_long - w_short) / steps)
            cpu[name].append((c_long - c_short) / steps)
    if rank == 0:
        base_w = statistics.median(wall["hand-written DDP"])
        base_c = statistics.median(cpu["hand-written DDP"])
        print(f"2 processes (gloo, CPU), global batch {GLOBAL_BATCH}, {steps_per_epoch} steps/epoch, "
              f"{args.repeats} repeats, medians")
        print(f"{'configuration':<28} {'wall ms/step':>12} {'ratio':>6} {'cpu ms/step':>12} {'ratio':>6}")
        for name in configs:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            print(f"{name:<28} {w * 1e3:>12.3f} {w / base_w:>6.2f} {c * 1e3:>12.3f} {c / base_c:>6.2f}")


if __name__ == "__main__":
    main()
