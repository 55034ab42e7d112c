"""W2: does the prefetcher hide a slow loader behind the step?

A dataset of 64 items whose `__getitem__` sleeps 2 ms (I/O-like: the GIL is free meanwhile), read
with `batch_size=None`; each step expands x to 64 rows and trains a 256-1024-1024-1 MLP (MSE,
SGD, one torch thread). Measured side by side, per epoch of 64 batches:

- t_load: iterating the loader alone;
- t_step: 64 steps alone on a cached batch;
- raw: the plain loop (`for batch in loader: step(batch)`), load and step in series;
- prefetch: the same loop taking batches from `ferrotrain.data.Prefetcher(loader)`.

Each loop is reported against the ideal `max(t_load, t_step)`. Plain script, prints a table:

    PYTHONPATH=python python benches/bench_w2.py [--rounds 5] [--depth 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ferrotrain.data import Prefetcher

ITEMS = 64
ROWS = 64
SLEEP_S = 0.002


class SlowDataset(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(ITEMS, 256, generator=g)
        self.y = torch.randn(ITEMS, 1, generator=g)

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int):
        time.sleep(SLEEP_S)
        return self.x[i], self.y[i]


def make_step() -> Callable[[tuple[torch.Tensor, torch.Tensor]], None]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        loss = loss_fn(model(x.expand(ROWS, -1)), y.expand(ROWS, -1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="epochs per measurement (median kept)")
    ap.add_argument("--depth", type=int, default=2, help="Prefetcher depth")
    args = ap.parse_args()
    torch.set_num_threads(1)

    loader = DataLoader(SlowDataset(), batch_size=None)
    step = make_step()
    cached = next(iter(loader))

    def load_only() -> None:
        for _ in loader:
            pass

    def step_only() -> None:
        for _ in range(ITEMS):
            step(cached)

    def raw() -> None:
        for batch in loader:
            step(batch)

    def prefetched() -> None:
        with Prefetcher(loader, depth=args.depth) as p:
            for batch, _is_last in p:
                step(batch)

    loops = {"t_load": load_only, "t_step": step_only, "raw": raw, "prefetch": prefetched}
    for fn in loops.values():  # warm-up
        fn()
    # Interleaved rounds, so that drift in machine load hits every loop alike.
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, fn in loops.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ideal = max(med["t_load"], med["t_step"])

    print(f"W2: {ITEMS} batches/epoch, getitem sleeps {SLEEP_S * 1e3:.0f} ms, depth={args.depth}, "
          f"median of {args.rounds} epochs, torch threads=1")
    print(f"{'loop':<10}{'ms/epoch':>10}{'ms/batch':>10}{'vs ideal':>10}")
    for name, t in med.items():
        print(f"{name:<10}{t * 1e3:>10.1f}{t * 1e3 / ITEMS:>10.2f}{t / ideal:>9.2f}x")
    print(f"ideal = max(t_load, t_step) = {ideal * 1e3:.1f} ms; raw/prefetch = {med['raw'] / med['prefetch']:.2f}x")


if __name__ == "__main__":
    main()
