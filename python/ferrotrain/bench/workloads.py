"""The reference workloads (W1..W5), each run side by side in one process: the hand-written
PyTorch loop (or torch's own function), ferrotrain, and Lightning when it is importable.

Each workload returns `Row`s: one measured configuration, its median over the repetitions, and
the configuration it is compared with (the baseline of its workload). Sizes come from `Sizes`, so
the smoke test runs the same code on tiny inputs. Absolute times on a shared machine drift; only
the ratios of one run mean anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


@dataclasses.dataclass
class Sizes:
    """Workload sizes. The defaults follow the reference text, W3 scaled down (`w3_features`)."""

    w1_samples: int = 4096
    w1_short_epochs: int = 2
    w1_long_epochs: int = 8
    w2_items: int = 64
    w2_sleep_s: float = 0.002
    w2_epochs: int = 2
    w3_features: int = 1024
    w3_epochs: int = 4
    w4_runs: int = 5
    w5_cases: tuple = ((200, 1000), (8, 1_000_000))

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(w1_samples=256, w1_short_epochs=1, w1_long_epochs=2, w2_items=8, w2_sleep_s=0.001, w2_epochs=1,
                   w3_features=64, w3_epochs=2, w4_runs=1, w5_cases=((20, 100),))


@dataclasses.dataclass
class Row:
    workload: str
    config: str
    median_s: float
    unit: str  # what the median is: "s/step", "s/checkpoint", "s", "s/call"
    baseline: Optional[str] = None  # config of the same workload this one is compared with


def lightning_module(log_level: int = logging.WARNING) -> Any:
    """`lightning` when importable (its warnings silenced, its loggers at `log_level`), else None."""
    try:
        warnings.filterwarnings("ignore")
        import lightning

        # Its start-up banners go through `logging`, not through the redirected streams.
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(log_level)
        return lightning
    except ImportError:
        return None


@contextlib.contextmanager
def _quiet_output() -> Any:
    # ferrotrain's own messages go through `logging` (its handler holds the real stderr).
    ours = logging.getLogger("ferrotrain")
    level = ours.level
    ours.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        ours.setLevel(level)


def _trainer(L: Any, root: str, quiet: bool, **kw: Any) -> Any:  # noqa: N803 - the framework, as users import it
    kw = dict(default_root_dir=root, enable_model_summary=False, num_sanity_val_steps=0, **kw)
    if quiet:
        kw.update(enable_progress_bar=False, logger=False, enable_checkpointing=False)
    if L.__name__ == "lightning":
        kw.update(accelerator="cpu", devices=1)
    return L.Trainer(**kw)


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------- W1: loop overhead
W1_DIM, W1_BATCH = 32, 32


def w1_data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, W1_DIM, generator=g), torch.randn(n, 1, generator=g))


def w1_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(W1_DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


def w1_raw(epochs: int, ds: TensorDataset, epoch_starts: Optional[List[float]] = None,
           direct_read: bool = False) -> None:
    """The hand-written loop; `epoch_starts` gets the clock at each epoch's start and at the end.
    `direct_read`: the batches are read as ferrotrain reads them (`loader_batches`), the same
    tensors with one call per tensor instead of the DataLoader's per-sample collation, so that
    comparing against it shows the Trainer's own cost apart from the faster read."""
    from ferrotrain.data.tensor_batches import loader_batches

    net = w1_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = DataLoader(ds, batch_size=W1_BATCH, shuffle=False)
    for _ in range(epochs):
        if epoch_starts is not None:
            epoch_starts.append(time.perf_counter())
        for x, y in (loader_batches(loader) if direct_read else loader):
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    if epoch_starts is not None:
        epoch_starts.append(time.perf_counter())


def w1_module_class(L: Any) -> type:  # noqa: N803
    class W1(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = w1_net()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return W1


def w1_trainer_run(L: Any, quiet: bool) -> Callable[[int, TensorDataset], None]:  # noqa: N803
    cls = w1_module_class(L)

    def run(epochs: int, ds: TensorDataset) -> None:
        root = tempfile.mkdtemp(prefix="w1-")
        try:
            _trainer(L, root, quiet, max_epochs=epochs).fit(cls(), DataLoader(ds, batch_size=W1_BATCH, shuffle=False))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return run


def w1(sizes: Sizes, repeats: int, L_ref: Any) -> List[Row]:  # noqa: N803
    import ferrotrain

    ds = w1_data(sizes.w1_samples)
    configs: Dict[str, Callable[[int, TensorDataset], None]] = {
        "raw loop": w1_raw,
        # The same raw loop timed again in its own slot: its ratio is the run's noise floor.
        "raw loop (control)": w1_raw,
        "raw loop, direct read": lambda epochs, ds: w1_raw(epochs, ds, direct_read=True),
        "ferrotrain defaults": w1_trainer_run(ferrotrain, quiet=False),
        "ferrotrain quiet": w1_trainer_run(ferrotrain, quiet=True),
    }
    if L_ref is not None:
        configs["lightning defaults"] = w1_trainer_run(L_ref, quiet=False)
        configs["lightning quiet"] = w1_trainer_run(L_ref, quiet=True)
    steps = len(ds) // W1_BATCH
    short, long = sizes.w1_short_epochs, sizes.w1_long_epochs
    slopes: Dict[str, List[float]] = {k: [] for k in configs}
    with _quiet_output():
        for fn in configs.values():  # warm-up: imports, first allocations
            fn(1, ds)
        for _ in range(repeats):
            # Interleaved, so drift on a shared machine hits every configuration alike.
            # The main thread's CPU time: the loop runs there, and unlike wall time it is not
            # inflated by the rest of a shared machine's load (see benches/bench_w1.py --clock).
            for name, fn in configs.items():
                t0 = time.thread_time()
                fn(short, ds)
                t1 = time.thread_time()
                fn(long, ds)
                t2 = time.thread_time()
                slopes[name].append(((t2 - t1) - (t1 - t0)) / ((long - short) * steps))
    return [Row("W1 loop overhead (CPU)", k, statistics.median(v), "s/step", None if k == "raw loop" else "raw loop")
            for k, v in slopes.items()]


# ---------------------------------------------------------------------- W2: slow loader
class W2Dataset(Dataset):
    """Items whose read waits `sleep_s` without holding the GIL (disk or network stand-in)."""

    def __init__(self, items: int, sleep_s: float) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(items, 256, generator=g)
        self.y = torch.randn(items, 1, generator=g)
        self.sleep_s = sleep_s

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        time.sleep(self.sleep_s)
        return self.x[i], self.y[i]


def w2_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                               torch.nn.ReLU(), torch.nn.Linear(1024, 1))


def _w2_step(net: torch.nn.Module, opt: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    loss = torch.nn.functional.mse_loss(net(x.expand(64, -1)), y.expand(64, -1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def w2(sizes: Sizes, repeats: int, L_ref: Any) -> List[Row]:  # noqa: N803
    import ferrotrain

    ds = W2Dataset(sizes.w2_items, sizes.w2_sleep_s)
    loader = DataLoader(ds, batch_size=None, shuffle=False)
    n = len(ds) * sizes.w2_epochs

    def load_only() -> None:
        for _ in range(sizes.w2_epochs):
            for _b in loader:
                pass

    net = w2_net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    cached = ds.x[0], ds.y[0]

    def step_only() -> None:
        for _ in range(n):
            _w2_step(net, opt, cached)

    def raw() -> None:
        for _ in range(sizes.w2_epochs):
            for b in loader:
                _w2_step(net, opt, b)

    def trainer_run(L: Any) -> Callable[[], None]:  # noqa: N803
        class W2(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = w2_net()

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                return torch.nn.functional.mse_loss(self.net(x.expand(64, -1)), y.expand(64, -1))

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=1e-4)

        def run() -> None:
            root = tempfile.mkdtemp(prefix="w2-")
            try:
                _trainer(L, root, True, max_epochs=sizes.w2_epochs).fit(W2(), loader)
            finally:
                shutil.rmtree(root, ignore_errors=True)

        return run

    configs = {"raw loop": raw, "ferrotrain quiet": trainer_run(ferrotrain)}
    if L_ref is not None:
        configs["lightning quiet"] = trainer_run(L_ref)
    with _quiet_output():
        step_only()  # warm-up
        t_load = _median_time(load_only, repeats)
        t_step = _median_time(step_only, repeats)
        results = {k: _median_time(fn, repeats) for k, fn in configs.items()}
    rows = [Row("W2 slow loader", "ideal max(load, step)", max(t_load, t_step) / n, "s/step")]
    rows += [Row("W2 slow loader", k, v / n, "s/step", "ideal max(load, step)") for k, v in results.items()]
    return rows


# ---------------------------------------------------------------------- W3: checkpoint stall
def w3(sizes: Sizes, repeats: int, L_ref: Any) -> List[Row]:  # noqa: N803
    """How long the loop is held up per checkpoint: the median time between consecutive
    `on_train_epoch_start` calls with a `ModelCheckpoint` saving every epoch, minus without."""
    import ferrotrain

    f = sizes.w3_features
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(64, f, generator=g), torch.randn(64, f, generator=g))

    def run(L: Any, save: bool) -> float:  # noqa: N803
        cbs = __import__(f"{L.__name__}.pytorch.callbacks" if L.__name__ == "lightning" else f"{L.__name__}.callbacks",
                         fromlist=["ModelCheckpoint"])
        starts: List[float] = []

        class Clock(L.Callback):
            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                starts.append(time.perf_counter())

        class W3(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                torch.manual_seed(0)
                self.net = torch.nn.Sequential(torch.nn.Linear(f, f), torch.nn.Linear(f, f))

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                return torch.nn.functional.mse_loss(self.net(x), y)

            def configure_optimizers(self) -> Any:
                return torch.optim.Adam(self.parameters(), lr=1e-4)

        root = tempfile.mkdtemp(prefix="w3-")
        callbacks: List[Any] = [Clock()]
        if save:
            callbacks.append(cbs.ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), save_top_k=-1))
        try:
            if save:
                t = _trainer(L, root, False, max_epochs=sizes.w3_epochs, callbacks=callbacks,
                             enable_progress_bar=False, logger=False)
            else:
                t = _trainer(L, root, True, max_epochs=sizes.w3_epochs, callbacks=callbacks)
            t.fit(W3(), DataLoader(ds, batch_size=8, shuffle=False))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return statistics.median(b - a for a, b in zip(starts, starts[1:]))

    libs = [("ferrotrain", ferrotrain)] + ([("lightning", L_ref)] if L_ref is not None else [])
    rows = []
    with _quiet_output():
        for name, L in libs:
            stall = statistics.median(run(L, True) - run(L, False) for _ in range(repeats))
            rows.append(Row(f"W3 checkpoint stall ({f}x{f})", name, max(stall, 0.0), "s/checkpoint"))
    if len(rows) == 2:
        rows[0].baseline = "lightning"
    return rows


# ---------------------------------------------------------------------- W4: import time
def w4(sizes: Sizes, repeats: int, L_ref: Any) -> List[Row]:  # noqa: N803
    """`import X` after `import torch`, in a fresh interpreter, median of `w4_runs`."""

    def import_time(name: str) -> float:
        code = ("import time, warnings; warnings.simplefilter('ignore'); import torch; t = time.perf_counter(); "
                f"import {name}; print(time.perf_counter() - t)")
        out = []
        for _ in range(sizes.w4_runs):
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
            out.append(float(res.stdout.strip().splitlines()[-1]))
        return statistics.median(out)

    rows = [Row("W4 import time", "import ferrotrain", import_time("ferrotrain"), "s")]
    if L_ref is not None:
        rows.insert(0, Row("W4 import time", "import lightning", import_time("lightning"), "s"))
        rows[1].baseline = "import lightning"
    return rows


# ---------------------------------------------------------------------- W5: gradient clipping
def w5(sizes: Sizes, repeats: int, L_ref: Any) -> List[Row]:  # noqa: N803
    from ferrotrain.utilities.clip import clip_grad_norm_

    rows = []
    for count, numel in sizes.w5_cases:
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.zeros(numel)) for _ in range(count)]
        grads = [torch.randn(numel, generator=g) for _ in range(count)]
        calls = max(3, repeats * 5)

        def torch_clip() -> None:
            torch.nn.utils.clip_grad_norm_(params, 1.0, 2.0, foreach=True)

        def our_clip() -> None:
            clip_grad_norm_(params, 1.0, 2.0)

        # Timed alternately, call by call, so a change of load hits both alike; new gradients
        # before every call (as after `zero_grad(set_to_none=True)`), outside the timing.
        times: Dict[Callable[[], None], List[float]] = {torch_clip: [], our_clip: []}
        for _ in range(calls):
            for fn, out in times.items():
                for p, gr in zip(params, grads):
                    p.grad = gr.clone()
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        case = f"W5 clip {count}x{numel}"
        torch_s, ours_s = statistics.median(times[torch_clip]), statistics.median(times[our_clip])
        rows.append(Row(case, "torch clip_grad_norm_ (foreach)", torch_s, "s/call"))
        rows.append(Row(case, "ferrotrain clip_grad_norm_", ours_s, "s/call", "torch clip_grad_norm_ (foreach)"))
    return rows


WORKLOADS: Dict[str, Callable[[Sizes, int, Any], List[Row]]] = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5}
