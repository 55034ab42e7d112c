"""Checkpoint I/O benchmark: ferrotrain.checkpoint vs a plain write+fsync and torch.save/load.

Model: Linear(4096, 4096) -> Linear(4096, 4096) with Adam state after one step (~384 MiB of
tensors). Measured in one run, side by side (median of --repeat runs, page cache warm):

- `submit` blocking time of AsyncCheckpointWriter (first call, which allocates the snapshot
  buffer, and steady state), and the time until the file is durable (submit + wait);
- synchronous `save` (durable);
- the baseline: one sequential `write` of the same number of bytes from memory, then fsync;
- `load` (memory-mapped, with and without checksum verification) vs `torch.load` of the same
  dict saved with `torch.save`.

Usage: python benches/bench_checkpoint.py [--dir FOLDER] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch
from torch import nn

from ferrotrain.checkpoint import AsyncCheckpointWriter, load, save


def build_checkpoint() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096), nn.Linear(4096, 4096))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 4096)).sum().backward()
    opt.step()
    return {
        "epoch": 0,
        "global_step": 1,
        "state_dict": model.state_dict(),
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "rng_states": {"torch": torch.get_rng_state()},
    }


def tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_write(path: str, payload: memoryview) -> None:
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="folder to write into (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="ferrotrain-bench-", dir=args.dir)
    try:
        run(folder, args.repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(folder: str, repeat: int) -> None:
    ckpt = build_checkpoint()
    nbytes = tensor_bytes(ckpt)
    payload = torch.empty(nbytes, dtype=torch.uint8).fill_(7).numpy().data
    p_plain = os.path.join(folder, "plain.bin")
    p_sync = os.path.join(folder, "sync.ckpt")
    p_async = os.path.join(folder, "async.ckpt")
    p_torch = os.path.join(folder, "torch.pt")

    rows: dict[str, list[float]] = {k: [] for k in (
        "plain write+fsync", "save (sync, durable)", "submit blocks (first)", "submit blocks",
        "submit -> durable", "load (mmap, verify)", "load (mmap, no verify)", "torch.save",
        "torch.load", "torch.load(mmap=True)")}

    writer = AsyncCheckpointWriter()
    first = True
    for _ in range(repeat):
        rows["plain write+fsync"].append(timed(lambda: plain_write(p_plain, payload)))
        rows["save (sync, durable)"].append(timed(lambda: save(p_sync, ckpt)))
        t0 = time.perf_counter()
        writer.submit(p_async, ckpt)
        blocked = time.perf_counter() - t0
        writer.wait()
        durable = time.perf_counter() - t0
        rows["submit blocks (first)" if first else "submit blocks"].append(blocked)
        rows["submit -> durable"].append(durable)
        first = False
        rows["load (mmap, verify)"].append(timed(lambda: load(p_sync)))
        rows["load (mmap, no verify)"].append(timed(lambda: load(p_sync, verify=False)))
        rows["torch.save"].append(timed(lambda: torch.save(ckpt, p_torch)))
        rows["torch.load"].append(timed(lambda: torch.load(p_torch, weights_only=False)))
        rows["torch.load(mmap=True)"].append(timed(lambda: torch.load(p_torch, weights_only=False, mmap=True)))
    writer.close()

    med = {k: statistics.median(v) for k, v in rows.items() if v}
    best = {k: min(v) for k, v in rows.items() if v}
    size = os.path.getsize(p_sync)
    print(f"checkpoint: {nbytes / 2**20:.1f} MiB of tensors, file {size / 2**20:.1f} MiB, "
          f"{repeat} runs (median and best), folder {folder}")
    print(f"extra host memory (AsyncCheckpointWriter buffer): {writer.buffer_nbytes / 2**20:.1f} MiB")
    print()
    print(f"{'operation':<28}{'median s':>10}{'best s':>9}{'GiB/s':>8}")
    for k, v in med.items():
        print(f"{k:<28}{v:>10.3f}{best[k]:>9.3f}{nbytes / v / 2**30:>8.2f}")
    print()
    steady = "submit blocks" if "submit blocks" in med else "submit blocks (first)"

    def ratio(a: str, b: str) -> str:
        return f"{med[a] / med[b]:6.3f}x median {best[a] / best[b]:6.3f}x best"

    print("ratios (goal in brackets):")
    print(f"  submit blocks                  {med[steady]:.3f} s median {best[steady]:.3f} s best   [<= 0.10 s]")
    print(f"  submit -> durable / plain      {ratio('submit -> durable', 'plain write+fsync')}   [<= 1.2x]")
    print(f"  save (sync) / plain            {ratio('save (sync, durable)', 'plain write+fsync')}")
    print(f"  torch.save / plain             {ratio('torch.save', 'plain write+fsync')} (not fsynced)")
    print(f"  load (verify) / torch.load     {ratio('load (mmap, verify)', 'torch.load')}")
    print(f"  load (no verify) / torch.load  {ratio('load (mmap, no verify)', 'torch.load')}")
    print(f"  load (verify) / torch.load(mmap=True) {ratio('load (mmap, verify)', 'torch.load(mmap=True)')}")


if __name__ == "__main__":
    main()
