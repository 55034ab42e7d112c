"""A long run keeps memory flat: after a warm-up, neither the process's resident memory nor the
number of live Python objects grows with the step count (logged metrics, the progress bar, the
loggers, checkpoint bookkeeping). Measured on W1's model, the workload of `benches/bench_w1.py`."""

from __future__ import annotations

import contextlib
import gc
import os
import sys

import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.callbacks import Callback, TQDMProgressBar
from ferrotrain.loggers import CSVLogger

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches"))
from bench_w1 import BATCH, make_data, module_class  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
STEPS = 3000
PROBES = (1000, 2000, 3000)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Probe(Callback):
    def __init__(self) -> None:
        self.at = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in PROBES:
            gc.collect()
            self.at[step] = (rss_bytes(), len(gc.get_objects()))


def test_memory_stays_flat_over_a_long_run(tmp_path, capsys):
    probe = Probe()
    bar = TQDMProgressBar(refresh_rate=1)
    trainer = L.Trainer(max_steps=STEPS, logger=CSVLogger(save_dir=tmp_path), log_every_n_steps=1,
                        callbacks=[probe, bar], enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    model = module_class(L)()
    # The bar draws every step; its text goes nowhere (an in-memory buffer would itself grow).
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        trainer.fit(model, DataLoader(make_data(), batch_size=BATCH))
    assert trainer.global_step == STEPS
    (rss0, obj0), (rss1, obj1), (rss2, obj2) = (probe.at[s] for s in PROBES)
    window = PROBES[1] - PROBES[0]
    first, second = (rss1 - rss0) / window, (rss2 - rss1) / window
    with capsys.disabled():
        print(f"\nmemory at steps {PROBES}: RSS {rss0 / 2**20:.1f}, {rss1 / 2**20:.1f}, {rss2 / 2**20:.1f} MiB "
              f"({first:.1f} then {second:.1f} B/step), live Python objects {obj0}, {obj1}, {obj2}")
    # A leak grows in every window; the allocator's occasional new arena is a one-off step. One
    # small dict or tensor kept per step would be hundreds of objects and bytes per step.
    assert max(obj1 - obj0, obj2 - obj1) < 50, (obj0, obj1, obj2)
    assert min(first, second) < 64, (first, second)
