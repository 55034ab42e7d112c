"""W2: does the prefetcher hide a slow loader behind the step?

A dataset of 64 items whose `__getitem__` sleeps 2 ms (I/O-like: the GIL is free meanwhile), read
with `batch_size=None`; each step expands x to 64 rows and trains a 256-1024-1024-1 MLP (MSE,
SGD, one torch thread). Measured side by side, per epoch of 64 batches:

- t_load: iterating the loader alone;
- t_step: 64 steps alone on a cached batch;
- raw: the plain loop (`for batch in loader: step(batch)`), load and step in series;
- prefetch: the same loop taking batches from `ferrotrain.data.Prefetcher(loader)`;
- ferrotrain / lightning: `Trainer.fit` on the same loader with the same step as a
  `LightningModule` (no progress bar, logger, checkpointing or summary; default prefetch settings),
  timed from `on_train_epoch_start` to `on_train_epoch_end` of a fit's second epoch.

Each loop is reported against the ideal `max(t_load, t_step)`. Plain script, prints a table:

    PYTHONPATH=python python benches/bench_w2.py [--rounds 5] [--depth 2] [--sleep-ms 2]

On a loaded machine the step slows down far more than the sleep: `--sleep-ms` lets the load time
be brought back near the step time (where overlapping matters most); W2 itself is 2 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ferrotrain.data import Prefetcher

ITEMS = 64
ROWS = 64
SLEEP_S = 0.002
sleep_s = SLEEP_S  # --sleep-ms


class SlowDataset(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(ITEMS, 256, generator=g)
        self.y = torch.randn(ITEMS, 1, generator=g)

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int):
        time.sleep(sleep_s)
        return self.x[i], self.y[i]


def make_step() -> Callable[[tuple[torch.Tensor, torch.Tensor]], None]:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        loss = loss_fn(model(x.expand(ROWS, -1)), y.expand(ROWS, -1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1))


def trainer_epoch(L: Any, loader: DataLoader) -> Callable[[], float]:  # noqa: N803 - the framework module
    """One fit of two epochs with `L.Trainer`; returns the second epoch's wall time."""

    class W2(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()
            self.loss_fn = nn.MSELoss()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.loss_fn(self.net(x.expand(ROWS, -1)), y.expand(ROWS, -1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.times.append(time.perf_counter() - self._t0)

    def run() -> float:
        root = tempfile.mkdtemp(prefix="w2-")
        timer = EpochTimer()
        kw: Dict[str, Any] = dict(max_epochs=2, default_root_dir=root, enable_progress_bar=False, logger=False,
                                  enable_checkpointing=False, enable_model_summary=False, callbacks=[timer])
        if L.__name__ == "lightning":
            kw.update(accelerator="cpu", devices=1)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                L.Trainer(**kw).fit(W2(), loader)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return timer.times[-1]

    return run


def lightning_module() -> Optional[Any]:
    try:
        warnings.filterwarnings("ignore")
        import logging

        import lightning

        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

        return lightning
    except ImportError:
        return None


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="epochs per measurement (median kept)")
    ap.add_argument("--depth", type=int, default=2, help="Prefetcher depth")
    ap.add_argument("--sleep-ms", type=float, default=SLEEP_S * 1e3, help="getitem's wait (W2: 2 ms)")
    args = ap.parse_args()
    global sleep_s
    sleep_s = args.sleep_ms / 1e3
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

    import ferrotrain

    loops = {"t_load": load_only, "t_step": step_only, "raw": raw, "prefetch": prefetched}
    # Trainer rows time their own epoch (the fit's set-up is not part of it).
    fits = {"ferrotrain": trainer_epoch(ferrotrain, loader)}
    lightning = lightning_module()
    if lightning is None:
        print("lightning is not installed: its row is skipped")
    else:
        fits["lightning"] = trainer_epoch(lightning, loader)
    for fn in loops.values():  # warm-up
        fn()
    for fit in fits.values():
        fit()
    # Interleaved rounds, so that drift in machine load hits every loop alike.
    times: dict[str, list[float]] = {name: [] for name in [*loops, *fits]}
    for _ in range(args.rounds):
        for name, fn in loops.items():
            times[name].append(timed(fn))
        for name, fit in fits.items():
            times[name].append(fit())
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ideal = max(med["t_load"], med["t_step"])

    print(f"W2: {ITEMS} batches/epoch, getitem sleeps {sleep_s * 1e3:g} ms, depth={args.depth}, "
          f"median of {args.rounds} epochs, torch threads=1")
    print(f"{'loop':<10}{'ms/epoch':>10}{'ms/batch':>10}{'vs ideal':>10}")
    for name, t in med.items():
        print(f"{name:<10}{t * 1e3:>10.1f}{t * 1e3 / ITEMS:>10.2f}{t / ideal:>9.2f}x")
    print(f"ideal = max(t_load, t_step) = {ideal * 1e3:.1f} ms; raw/prefetch = {med['raw'] / med['prefetch']:.2f}x")


if __name__ == "__main__":
    main()
