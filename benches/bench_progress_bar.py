"""Per-step cost of the progress bar's `on_train_batch_end`, side by side with an empty hook call
(what any per-step callback costs the Trainer) and with a bar that is switched off. Prints
nanoseconds per step and the ratios; asserts nothing.

    PYTHONPATH=python python benches/bench_progress_bar.py
"""

from __future__ import annotations

import io
import sys
import time
from types import SimpleNamespace

from ferrotrain.callbacks import Callback, TQDMProgressBar


class _Empty(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pass


def _trainer(steps: int) -> SimpleNamespace:
    return SimpleNamespace(
        current_epoch=0, global_step=0, max_epochs=1, max_steps=-1, num_training_batches=steps,
        num_val_batches=[0], sanity_checking=False, state=SimpleNamespace(fn="fit"), is_global_zero=True,
        loggers=[], progress_bar_metrics={"train_loss": 0.123},
    )


def _per_step_ns(cb, trainer, steps: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        if isinstance(cb, TQDMProgressBar):
            cb.on_train_epoch_start(trainer, None)
        hook = cb.on_train_batch_end
        start = time.perf_counter_ns()
        for i in range(steps):
            hook(trainer, None, None, None, i)
        best = min(best, (time.perf_counter_ns() - start) / steps)
    return best


def main(steps: int = 200_000) -> None:
    trainer = _trainer(steps)
    real_stdout = sys.stdout
    results = {}
    for label, stream in (("terminal", None), ("log file", io.StringIO())):
        if stream is None:
            class _Tty(io.StringIO):
                def isatty(self):
                    return True
            stream = _Tty()
        sys.stdout = stream
        try:
            bar = TQDMProgressBar()
            bar.setup(trainer, None, "fit")
            bar.on_train_start(trainer, None)
            results[f"bar ({label})"] = _per_step_ns(bar, trainer, steps)
        finally:
            sys.stdout = real_stdout
    off = TQDMProgressBar(refresh_rate=0)
    off.setup(trainer, None, "fit")
    off.on_train_start(trainer, None)
    results["bar (off)"] = _per_step_ns(off, trainer, steps)
    results["empty hook"] = _per_step_ns(_Empty(), trainer, steps)
    base = results["empty hook"]
    for name, ns in results.items():
        print(f"{name:<16} {ns:8.1f} ns/step   x{ns / base:5.2f} of an empty hook")


if __name__ == "__main__":
    main()
