"""DDP step time: ferrotrain's `Trainer(strategy="ddp", devices=2)` on the CPU against a
hand-written DDP loop, side by side in the same two processes (gloo).

W1's model (see `bench_w1.py`), a global batch of 64 (32 per process). `python benches/bench_ddp.py`
starts as rank 0; the Trainer starts rank 1 by re-running this script, and both ranks then time,
interleaved: the hand-written loop (DistributedDataParallel + DistributedSampler + SGD) and the
Trainer (no progress bar, logger or checkpointing), each over a short and a long run on the same
process group. The cost per step is the slope between the two (start-up apart). Rank 0 prints the
medians and the ratio.

    python benches/bench_ddp.py [--repeats 3] [--short 1] [--long 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

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


def ferro_run(L) -> Callable[[int, object], None]:  # noqa: N803
    cls = module_class(L)

    def run(epochs: int, ds) -> None:
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0)
        trainer.fit(cls(), DataLoader(ds, batch_size=PER_RANK, shuffle=False))

    return run


def timed(fn: Callable[[int, object], None], epochs: int, ds) -> float:
    dist.barrier()  # both ranks start together
    t0 = time.perf_counter()
    fn(epochs, ds)
    dist.barrier()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short", type=int, default=1)
    ap.add_argument("--long", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ferrotrain

    ds = make_data()
    ferro = ferro_run(ferrotrain)
    ferro(1, ds)  # starts rank 1 and the process group; warms up
    rank = dist.get_rank()
    configs: Dict[str, Callable[[int, object], None]] = {"hand-written DDP": raw_ddp_loop, "ferrotrain ddp": ferro}
    raw_ddp_loop(1, ds)
    steps_per_epoch = N // GLOBAL_BATCH
    per_step: Dict[str, List[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for name, fn in configs.items():  # interleaved: drift on a shared machine hits both alike
            t_short = timed(fn, args.short, ds)
            t_long = timed(fn, args.long, ds)
            per_step[name].append((t_long - t_short) / ((args.long - args.short) * steps_per_epoch))
    if rank == 0:
        base = statistics.median(per_step["hand-written DDP"])
        print(f"2 processes (gloo, CPU), global batch {GLOBAL_BATCH}, {steps_per_epoch} steps/epoch, "
              f"{args.repeats} repeats")
        print(f"{'configuration':<20} {'ms/step (median)':>17} {'ratio':>7}")
        for name, values in per_step.items():
            med = statistics.median(values)
            print(f"{name:<20} {med * 1e3:>17.3f} {med / base:>7.3f}")


if __name__ == "__main__":
    main()
