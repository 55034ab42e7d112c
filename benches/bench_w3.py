"""W3 — checkpoint stall through the Trainer (see the reference workloads).

Model `Linear(4096,4096) -> Linear(4096,4096)` with Adam (a ~384 MiB checkpoint), 64 rows in
batches of 8, one torch thread, a `ModelCheckpoint(save_top_k=-1)` saving at every epoch end.
For ferrotrain and for Lightning (when importable), side by side in one run:

- held up per checkpoint: median interval between consecutive `on_train_epoch_start` calls with
  checkpoints, minus the same without checkpoints (this includes the background write competing
  with training for the cores, and is noisy on a shared machine), and, measured directly, how
  long the epoch-end save call holds the loop (the first save apart);
- time to durable: ferrotrain's `trainer.save_checkpoint` (atomic, fsynced) and Lightning's
  (`torch.save`, then an fsync of the file and its folder), each against a plain sequential
  write+fsync of the same number of bytes measured next to it;
- load time: ferrotrain's `load` (owned memory, checksums verified; and with `mmap=True`) and
  `load_from_checkpoint`; Lightning's `torch.load(weights_only=True)` and `load_from_checkpoint`;
- the control, in ferrotrain's run: a plain `torch.save` of the same checkpoint dict (then an
  fsync, for durability), which is also how long it would hold the loop, and `torch.load` of it.

    python benches/bench_w3.py [--epochs 6] [--only ferrotrain,lightning] [--dir FOLDER]

Use fewer epochs (at least 3) for a quicker, noisier run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from typing import Any, Dict, List

import torch
from torch.utils.data import DataLoader, TensorDataset

ROWS, DIM, BATCH = 64, 4096, 8


def make_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(ROWS, DIM, generator=g)), batch_size=BATCH, shuffle=False)


def module_class(L: Any) -> type:
    class Big(L.LightningModule):
        def __init__(self, dim: int = DIM) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim))

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    return Big


def epoch_starts(L: Any) -> tuple:
    times: List[float] = []

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            times.append(time.perf_counter())

    return Clock(), times


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_write(path: str, nbytes: int) -> float:
    payload = memoryview(bytearray(b"\x07") * nbytes)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(os.path.dirname(path))
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def timed_checkpoint(L: Any, dirpath: str, blocked: List[float]) -> Any:
    """A ModelCheckpoint that records how long each epoch-end save holds the loop."""
    base = L.pytorch.callbacks.ModelCheckpoint if hasattr(L, "pytorch") else L.callbacks.ModelCheckpoint

    class TimedCheckpoint(base):
        def on_train_epoch_end(self, trainer, pl_module):
            t0 = time.perf_counter()
            super().on_train_epoch_end(trainer, pl_module)
            blocked.append(time.perf_counter() - t0)

    return TimedCheckpoint(dirpath=dirpath, save_top_k=-1)


def fit_intervals(L: Any, folder: str, epochs: int, checkpoints: bool, blocked: List[float]) -> List[float]:
    torch.manual_seed(0)
    clock, times = epoch_starts(L)
    callbacks = [clock]
    if checkpoints:
        callbacks.append(timed_checkpoint(L, os.path.join(folder, "ckpts"), blocked))
    trainer = L.Trainer(default_root_dir=folder, max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=checkpoints,
                        callbacks=callbacks)
    trainer.fit(module_class(L)(), make_loader())
    shutil.rmtree(os.path.join(folder, "ckpts"), ignore_errors=True)
    # The first interval includes warm-up (first Adam step allocates its state): drop it.
    return [b - a for a, b in zip(times[1:], times[2:])]


def durable_and_load(L: Any, name: str, folder: str) -> Dict[str, float]:
    torch.manual_seed(0)
    Big = module_class(L)
    trainer = L.Trainer(default_root_dir=folder, max_epochs=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Big(), make_loader())
    path = os.path.join(folder, f"{name}.ckpt")
    out: Dict[str, float] = {}
    for _ in range(2):  # the second save reuses buffers and replaces a file, as in training
        t0 = time.perf_counter()
        trainer.save_checkpoint(path)
        if name == "lightning":  # torch.save does not fsync: make it durable for the comparison
            fsync_path(path)
            fsync_path(folder)
        out["durable"] = time.perf_counter() - t0
        out["plain"] = plain_write(os.path.join(folder, "plain.bin"), os.path.getsize(path))
    out["file MiB"] = os.path.getsize(path) / 2**20
    t0 = time.perf_counter()
    if name == "lightning":
        torch.load(path, weights_only=True)
    else:
        L.checkpoint.load(path)
    out["load dict"] = time.perf_counter() - t0
    if name == "ferrotrain":
        t0 = time.perf_counter()
        L.checkpoint.load(path, mmap=True)
        out["load dict, mmap"] = time.perf_counter() - t0
        # The control: torch's own save and load of the same dict, in the same run.
        from ferrotrain.trainer import checkpointing

        ckpt = checkpointing.dump(trainer, False)
        plain = os.path.join(folder, "torch-save.ckpt")
        for _ in range(2):
            t0 = time.perf_counter()
            torch.save(ckpt, plain)
            fsync_path(plain)
            fsync_path(folder)
            out["torch.save durable"] = time.perf_counter() - t0
        del ckpt
        t0 = time.perf_counter()
        torch.load(plain)
        out["torch.load"] = time.perf_counter() - t0
        os.remove(plain)
    t0 = time.perf_counter()
    Big.load_from_checkpoint(path)
    out["load_from_checkpoint"] = time.perf_counter() - t0
    os.remove(path)
    return out


def run(name: str, folder: str, epochs: int) -> Dict[str, Any]:
    L = importlib.import_module("ferrotrain" if name == "ferrotrain" else "lightning")
    sub = os.path.join(folder, name)
    os.makedirs(sub, exist_ok=True)
    blocked: List[float] = []
    without = fit_intervals(L, sub, epochs, checkpoints=False, blocked=blocked)
    with_ckpt = fit_intervals(L, sub, epochs, checkpoints=True, blocked=blocked)
    res: Dict[str, Any] = {
        "epoch interval without (s)": statistics.median(without),
        "epoch interval with (s)": statistics.median(with_ckpt),
    }
    res["held up per checkpoint (s)"] = res["epoch interval with (s)"] - res["epoch interval without (s)"]
    # The first save allocates the snapshot buffer (ferrotrain): reported apart.
    res["save blocks the loop, first (s)"] = blocked[0]
    res["save blocks the loop, then (s)"] = statistics.median(blocked[1:])
    res.update(durable_and_load(L, name, sub))
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--only", default="ferrotrain,lightning")
    parser.add_argument("--dir", default=None, help="folder to write into (default: a temporary folder)")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (the first interval is dropped)")
    torch.set_num_threads(1)
    names = [n for n in args.only.split(",") if n]
    if "lightning" in names and importlib.util.find_spec("lightning") is None:
        print("lightning is not importable: skipped")
        names.remove("lightning")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    folder = tempfile.mkdtemp(prefix="ferrotrain-w3-", dir=args.dir)
    results: Dict[str, Dict[str, Any]] = {}
    try:
        for name in names:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results[name] = run(name, folder, args.epochs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"W3: {args.epochs} epochs, checkpoint every epoch end, medians (first interval dropped)")
    rows = list(next(iter(results.values())))
    print(f"{'':34}" + "".join(f"{n:>14}" for n in results))
    for r in rows:
        print(f"{r:34}" + "".join(f"{results[n].get(r, float('nan')):>14.3f}" for n in results))
    print("ratios:")
    for n, res in results.items():
        print(f"  {n}: durable / plain write+fsync = {res['durable'] / res['plain']:.3f}x   [goal <= 1.2x for ferrotrain]")
    if "ferrotrain" in results:
        f = results["ferrotrain"]
        print(f"  ferrotrain held up per checkpoint = {f['held up per checkpoint (s)']:.3f} s (interval difference), "
              f"{f['save blocks the loop, then (s)']:.3f} s (save call)   [goal <= 0.04 s]")
    if "ferrotrain" in results:
        f = results["ferrotrain"]
        stall = f["save blocks the loop, then (s)"]
        print(f"  vs a plain torch.save of the same dict (same run): stall {stall / f['torch.save durable']:.3f}x, "
              f"durable {f['durable'] / f['torch.save durable']:.2f}x, load {f['load dict'] / f['torch.load']:.2f}x "
              f"(mmap {f['load dict, mmap'] / f['torch.load']:.2f}x)")
    if len(results) == 2:
        f, lt = results["ferrotrain"], results["lightning"]
        print(f"  ferrotrain / lightning: stall {f['save blocks the loop, then (s)'] / lt['save blocks the loop, then (s)']:.3f}x, "
              f"durable {f['durable'] / lt['durable']:.2f}x, load {f['load dict'] / lt['load dict']:.2f}x")
        print(f"  save call blocks: lightning / ferrotrain = {lt['save blocks the loop, then (s)'] / f['save blocks the loop, then (s)']:.1f}x")
        print(f"  load_from_checkpoint: lightning / ferrotrain = {lt['load_from_checkpoint'] / f['load_from_checkpoint']:.2f}x")


if __name__ == "__main__":
    main()
