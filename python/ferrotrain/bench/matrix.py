"""The loop-overhead matrix: everyday Trainer configurations, each against its own hand-written
loop over the same DataLoader, under a pseudo-terminal (the progress bar is drawn) and with the
output redirected to a file.

Every case runs in a child process whose stdout is a pseudo-terminal or a file, so the bar sees
what a user's terminal or log gives it. Inside a child the configurations run interleaved
(repeat after repeat: raw loop, Trainer, raw loop, Trainer, ...), so a change of load on a shared
machine hits them alike. The figure is the per-step slope of the main thread's CPU time between
a short and a long run, (t(long) - t(short)) / (steps(long) - steps(short)): start-up cancels
out, per-epoch work (checkpoints, epoch-end logging, validation) stays in. A raw-vs-raw control
row shows the run's noise floor.

The raw loop does the same work as the module: the same model, loss and metric tensors, the same
accumulation, clipping and validation; what it leaves out is what the Trainer adds (logging,
progress bar, checkpoints, hooks).
"""

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ferrotrain.bench.workloads import lightning_module

FEATURES, BATCH = 32, 32
OUTPUTS = ("terminal", "redirected")


@dataclasses.dataclass(frozen=True)
class Case:
    """One Trainer configuration of the matrix (the Trainer's defaults unless said otherwise)."""

    name: str
    data: str = "map"  # "map": a map-style Dataset read item by item; "tensor": a TensorDataset
    batch: str = "dict"  # "dict" ({"x", "y"}) or "tuple" ((x, y)); a TensorDataset gives tuples
    metrics: int = 2  # values logged per step with `self.log` (the loss first)
    prog_bar: int = 1  # how many of them are on the progress bar
    dropout: bool = True
    accumulate: int = 1
    clip: bool = False
    validate: bool = False  # a validation loop after every epoch
    bar: str = "tqdm"  # "tqdm", "rich" or "off"
    logger: bool = True
    checkpointing: bool = True
    w1_net: bool = False  # W1's two-layer model instead of the three-layer MLP
    lightning: bool = False  # also run Lightning's Trainer, when it is importable


CASES: Tuple[Case, ...] = (
    Case("W1 (tensor/tuple, 2 layers, 1 metric on bar)", data="tensor", batch="tuple", metrics=1, dropout=False,
         w1_net=True),
    Case("map/dict, dropout, 2 metrics (1 on bar)", lightning=True),
    Case("map/dict, bar off", bar="off"),
    Case("map/dict, logger=False", logger=False),
    Case("map/dict, bar off, logger=False", bar="off", logger=False),
    Case("map/tuple", batch="tuple"),
    Case("tensor/tuple", data="tensor", batch="tuple", lightning=True),
    Case("tensor/tuple, bar off", data="tensor", batch="tuple", bar="off"),
    Case("1 metric on bar", metrics=1, prog_bar=1),
    Case("1 metric, not on bar", metrics=1, prog_bar=0),
    Case("3 metrics, 2 on bar", metrics=3, prog_bar=2),
    Case("3 metrics, none on bar", metrics=3, prog_bar=0),
    Case("no dropout", dropout=False),
    Case("accumulate_grad_batches=2", accumulate=2),
    Case("gradient_clip_val=1.0", clip=True),
    Case("validation every epoch", validate=True),
    Case("RichProgressBar", bar="rich"),
    Case("quiet: bar off, logger=False, no checkpointing", bar="off", logger=False, checkpointing=False),
)


@dataclasses.dataclass(frozen=True)
class Run:
    """Where the matrix runs: the device, the precision, and the sync check on CUDA (`sync`:
    "" none, "warn" counts host-device syncs per step, "error" makes any sync raise)."""

    device: str = "cpu"
    precision: str = "32-true"
    sync: str = ""

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


@dataclasses.dataclass
class Sizes:
    train_samples: int = 4096  # 128 steps an epoch
    val_samples: int = 512
    short_epochs: int = 1
    long_epochs: int = 4
    eval_short: int = 50  # batches (W7)
    eval_long: int = 550

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(train_samples=256, val_samples=64, short_epochs=1, long_epochs=2, eval_short=2, eval_long=4)


# ---------------------------------------------------------------------- data, model, step
class MapDataset(Dataset):
    """A plain map-style dataset: one item per `__getitem__`, collated by the DataLoader."""

    def __init__(self, n: int, as_dict: bool, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=g)
        self.y = torch.randn(n, 1, generator=g)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        return {"x": self.x[i], "y": self.y[i]} if self.as_dict else (self.x[i], self.y[i])


def make_dataset(case: Case, n: int, seed: int = 0) -> Dataset:
    if case.data == "tensor":
        g = torch.Generator().manual_seed(seed)
        return TensorDataset(torch.randn(n, FEATURES, generator=g), torch.randn(n, 1, generator=g))
    return MapDataset(n, case.batch == "dict", seed)


def make_net(case: Case) -> torch.nn.Module:
    """Three linear layers, with dropout between them when asked (a module whose train/eval mode
    matters); W1's two layers for its row."""
    if case.w1_net:
        from ferrotrain.bench.workloads import w1_net

        return w1_net()
    dropout = case.dropout
    torch.manual_seed(0)
    drop = [torch.nn.Dropout(0.1)] if dropout else []
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), *drop, torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), *drop, torch.nn.Linear(64, 1))


def _xy(batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    return (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch[0], batch[1])


def step_values(net: torch.nn.Module, batch: Any, metrics: int) -> List[torch.Tensor]:
    """The loss and the other metric tensors of one batch: what both loops compute."""
    x, y = _xy(batch)
    out = net(x)
    loss = torch.nn.functional.mse_loss(out, y)
    values = [loss]
    if metrics > 1:
        values.append((out - y).abs().mean().detach())
    if metrics > 2:
        values.append(out.detach().mean())
    return values


_METRIC_NAMES = ("train_loss", "train_mae", "train_mean")


# ---------------------------------------------------------------------- the raw loop
def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return [v.to(device, non_blocking=True) for v in batch]


def _autocast(run: Run) -> Any:
    if run.precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.float16 if run.precision == "16-mixed" else torch.bfloat16
    return torch.autocast(run.device, dtype=dtype)


def raw_fit(case: Case, epochs: int, train: Dataset, val: Optional[Dataset], run: Run = Run()) -> None:
    device = torch.device(run.device)
    net = make_net(case).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(run.device) if run.precision == "16-mixed" else None
    loader = DataLoader(train, batch_size=BATCH, pin_memory=run.cuda)
    val_loader = DataLoader(val, batch_size=BATCH, pin_memory=run.cuda) if val is not None else None
    acc = case.accumulate
    net.train()
    for _ in range(epochs):
        for i, batch in enumerate(loader):
            if run.cuda:
                batch = _to(batch, device)
            with _autocast(run):
                loss = step_values(net, batch, case.metrics)[0]
            if acc > 1:
                loss = loss / acc
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if (i + 1) % acc == 0:
                if scaler is not None:
                    if case.clip:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    scaler.step(opt)
                    scaler.update()
                else:
                    if case.clip:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                opt.zero_grad()
        if val_loader is not None:
            net.eval()
            with torch.no_grad(), _autocast(run):
                for batch in val_loader:
                    x, y = _xy(_to(batch, device) if run.cuda else batch)
                    torch.nn.functional.mse_loss(net(x), y)
            net.train()


# ---------------------------------------------------------------------- the Trainer
def module_class(L: Any, case: Case) -> type:  # noqa: N803 - the framework, as users import it
    names = _METRIC_NAMES[: case.metrics]

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net(case)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            values = step_values(self.net, batch, case.metrics)
            for k, (name, value) in enumerate(zip(names, values)):
                self.log(name, value, prog_bar=k < case.prog_bar)
            return values[0]

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = _xy(batch)
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Model


def _framework_kwargs(L: Any, root: str, run: Run = Run()) -> Dict[str, Any]:  # noqa: N803
    kw: Dict[str, Any] = dict(default_root_dir=root, enable_model_summary=False, num_sanity_val_steps=0)
    kw.update(accelerator="gpu" if run.cuda else "cpu", devices=1, precision=run.precision)
    return kw


def trainer_fit(L: Any, case: Case, run: Run = Run()) -> Callable[[int, Dataset, Optional[Dataset]], None]:  # noqa: N803
    cls = module_class(L, case)
    callbacks = importlib_callbacks(L)
    pin = run.cuda

    def fit(epochs: int, train: Dataset, val: Optional[Dataset]) -> None:
        root = tempfile.mkdtemp(prefix="matrix-")
        kw = _framework_kwargs(L, root, run)
        kw.update(max_epochs=epochs, accumulate_grad_batches=case.accumulate)
        if case.clip:
            kw["gradient_clip_val"] = 1.0
        if case.bar == "off":
            kw["enable_progress_bar"] = False
        elif case.bar == "rich":
            kw["callbacks"] = [callbacks.RichProgressBar()]
        if not case.logger:
            kw["logger"] = False
        if not case.checkpointing:
            kw["enable_checkpointing"] = False
        if not case.validate:
            kw["limit_val_batches"] = 0
        try:
            val_loader = DataLoader(val, batch_size=BATCH, pin_memory=pin) if val is not None else None
            L.Trainer(**kw).fit(cls(), DataLoader(train, batch_size=BATCH, pin_memory=pin), val_loader)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return fit


def importlib_callbacks(L: Any) -> Any:  # noqa: N803
    import importlib

    return importlib.import_module("lightning.pytorch.callbacks" if L.__name__ == "lightning" else f"{L.__name__}.callbacks")


# ---------------------------------------------------------------------- W7: validate() / predict()
class EvalModelFactory:
    """W7: a two-layer MLP over a map-style Dataset, `self.log` of the loss in `validation_step`."""

    @staticmethod
    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    @staticmethod
    def module(L: Any) -> type:  # noqa: N803
        class Eval(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = EvalModelFactory.net()

            def validation_step(self, batch: Any, batch_idx: int) -> None:
                x, y = batch
                self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

            def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                return self.net(batch[0])

        return Eval


def raw_eval(kind: str, data: Dataset) -> None:
    net = EvalModelFactory.net()
    net.eval()
    with torch.inference_mode():
        for x, y in DataLoader(data, batch_size=BATCH):
            out = net(x)
            if kind == "validate":
                torch.nn.functional.mse_loss(out, y)


def trainer_eval(L: Any, kind: str) -> Callable[[Dataset], None]:  # noqa: N803
    cls = EvalModelFactory.module(L)

    def run(data: Dataset) -> None:
        root = tempfile.mkdtemp(prefix="matrix-eval-")
        try:
            trainer = L.Trainer(**_framework_kwargs(L, root))
            getattr(trainer, kind)(cls(), DataLoader(data, batch_size=BATCH))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return run


# ---------------------------------------------------------------------- measuring (in the child)
def _rich_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rich") is not None


class _SyncCounter:
    """Counts the host-device syncs that `torch.cuda.set_sync_debug_mode("warn")` reports."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def counting(self) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        self.count += sum("synchronizing" in str(w.message) for w in caught)


def _slope(fn: Callable[[int], None], short: int, long: int, steps_each: int, run: Run,
           syncs: Optional[List[float]] = None) -> float:
    """Seconds per step between a short and a long run: the main thread's CPU time on the CPU
    (other load on a shared machine does not inflate it), wall time to the last kernel on CUDA.
    With `syncs`, the host-device syncs per step are appended to it."""
    if run.cuda:
        def clock() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
    else:
        clock = time.thread_time
    counter = _SyncCounter()
    t0 = clock()
    with counter.counting():
        fn(short)
    t1, n1 = clock(), counter.count
    with counter.counting():
        fn(long)
    t2 = clock()
    per = (long - short) * steps_each
    if syncs is not None:
        syncs.append(((counter.count - n1) - n1) / per)
    return ((t2 - t1) - (t1 - t0)) / per


def measure(cases: List[Case], sizes: Sizes, repeats: int, with_lightning: bool, run: Run = Run(),
            with_eval: bool = True, controls: bool = False) -> Dict[str, Dict[str, List[float]]]:
    """{row: {"raw": [slope...], "ferrotrain": [...], "lightning": [...], "ferrotrain syncs/step": [...]}},
    seconds per step. `controls`: a raw-vs-raw control in every row, not only the first."""
    import ferrotrain

    logging.getLogger("ferrotrain").setLevel(logging.ERROR)
    L_ref = lightning_module(logging.ERROR) if with_lightning else None  # noqa: N806
    torch.set_num_threads(1)
    if run.cuda and run.sync:
        torch.cuda.set_sync_debug_mode(run.sync)
    steps = sizes.train_samples // BATCH
    plan: List[Tuple[str, str, Callable[[int], None], int]] = []  # (row, column, run(n), steps per n)
    for case in cases:
        if case.bar == "rich" and not _rich_available():
            continue
        train = make_dataset(case, sizes.train_samples)
        val = make_dataset(case, sizes.val_samples, seed=1) if case.validate else None

        def bind(fit: Callable[..., None], c: Case = case, t: Dataset = train, v: Optional[Dataset] = val) -> Any:
            return (lambda n: fit(c, n, t, v, run)) if fit is raw_fit else (lambda n: fit(n, t, v))

        plan.append((case.name, "raw", bind(raw_fit), steps))
        if case is cases[0] or controls:
            plan.append((case.name, "raw (control)", bind(raw_fit), steps))
        plan.append((case.name, "ferrotrain", bind(trainer_fit(ferrotrain, case, run)), steps))
        if case.lightning and L_ref is not None:
            plan.append((case.name, "lightning", bind(trainer_fit(L_ref, case, run)), steps))
    if with_eval and not run.cuda:
        eval_data = {n: MapDataset(n * BATCH, as_dict=False) for n in (sizes.eval_short, sizes.eval_long)}
        per_eval = sizes.eval_long - sizes.eval_short
        for kind in ("validate", "predict"):
            row = f"W7 {kind}()"

            def bind_eval(fn: Callable[[Dataset], None]) -> Any:
                return lambda n: fn(eval_data[sizes.eval_short if n == 0 else sizes.eval_long])

            plan.append((row, "raw", bind_eval(lambda d, k=kind: raw_eval(k, d)), per_eval))
            if controls:
                plan.append((row, "raw (control)", bind_eval(lambda d, k=kind: raw_eval(k, d)), per_eval))
            plan.append((row, "ferrotrain", bind_eval(trainer_eval(ferrotrain, kind)), per_eval))
            if L_ref is not None:
                plan.append((row, "lightning", bind_eval(trainer_eval(L_ref, kind)), per_eval))
    results: Dict[str, Dict[str, List[float]]] = {}
    for row, column, fn, _ in plan:  # warm-up: imports, first allocations
        fn(0 if row.startswith("W7") else sizes.short_epochs)
        results.setdefault(row, {})[column] = []
        if run.sync == "warn" and column != "raw (control)":
            results[row][f"{column} syncs/step"] = []
    for _ in range(repeats):
        for row, column, fn, per in plan:
            short, long = (0, 1) if row.startswith("W7") else (sizes.short_epochs, sizes.long_epochs)
            syncs = results[row].get(f"{column} syncs/step")
            results[row][column].append(_slope(fn, short, long, per, run, syncs))
    return results


# ---------------------------------------------------------------------- the parent: children, table, chart
def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass  # the child closed the terminal


def run_child(output: str, args: List[str]) -> Dict[str, Dict[str, List[float]]]:
    """Run the measurement in a child whose stdout is a pseudo-terminal ("terminal") or a file
    ("redirected"); its results come back through a JSON file."""
    with tempfile.TemporaryDirectory(prefix="matrix-") as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "ferrotrain.bench.matrix", "--child", result, *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if output == "terminal":
            import pty

            master, slave = pty.openpty()
            drain = threading.Thread(target=_drain, args=(master,), daemon=True)
            drain.start()
            try:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=env)
            finally:
                os.close(slave)
                drain.join(timeout=5)
                os.close(master)
        else:
            with open(os.path.join(tmp, "stdout.log"), "w") as log:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.PIPE, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"the {output} run of the matrix failed:\n{proc.stderr.decode(errors='replace')[-4000:]}")
        with open(result) as f:
            return json.load(f)


@dataclasses.dataclass
class MatrixRow:
    config: str
    output: str
    raw_us: float  # raw loop, microseconds per step (median)
    ratios: Dict[str, float]  # column -> median slope / raw median slope
    syncs: Dict[str, float] = dataclasses.field(default_factory=dict)  # column -> host-device syncs per step


def summarize(output: str, results: Dict[str, Dict[str, List[float]]]) -> List[MatrixRow]:
    rows = []
    for config, columns in results.items():
        raw = statistics.median(columns["raw"])
        ratios = {k: statistics.median(v) / raw for k, v in columns.items()
                  if k != "raw" and not k.endswith("syncs/step") and raw > 0}
        syncs = {k: statistics.median(v) for k, v in columns.items() if k.endswith("syncs/step") and v}
        rows.append(MatrixRow(config, output, raw * 1e6, ratios, syncs))
    return rows


COLUMNS = ("raw (control)", "ferrotrain", "lightning")


def format_matrix(rows: List[MatrixRow], goal: float = 1.03) -> str:
    sync_cols = sorted({k for r in rows for k in r.syncs})
    head = ("configuration", "output", "raw us/step", *(f"{c} / raw" for c in COLUMNS), *sync_cols, "")
    body = []
    for r in rows:
        cells = [f"{r.ratios[c]:.3f}" if c in r.ratios else "" for c in COLUMNS]
        cells += [f"{r.syncs[c]:.3f}" if c in r.syncs else "" for c in sync_cols]
        over = "over" if r.ratios.get("ferrotrain", 0.0) > goal else ""
        body.append((r.config, r.output, f"{r.raw_us:.1f}", *cells, over))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths))).rstrip()
             for x in [head, *body]]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, lines[0], rule, *lines[1:], rule, f"'over': ferrotrain above {goal:.2f}x its raw loop"])


def write_matrix_chart(rows: List[MatrixRow], path: str, goal: float = 1.03) -> Optional[str]:
    """Horizontal bars of ferrotrain / raw per row and output (Lightning's beside it when
    measured); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [f"{r.config} [{r.output}]" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * max(len(rows), 2) + 1.5))
    y = list(range(len(rows)))
    ax.barh([i - 0.2 for i in y], [r.ratios.get("ferrotrain", 0.0) for r in rows], height=0.4, label="ferrotrain")
    ax.barh([i + 0.2 for i in y], [r.ratios.get("raw (control)", 0.0) for r in rows], height=0.4,
            color="tab:gray", label="raw (control)")
    light = [(i, r.ratios["lightning"]) for i, r in enumerate(rows) if "lightning" in r.ratios]
    for i, v in light:
        ax.text(1.0, i + 0.2, f" lightning {v:.2f}x", va="center", fontsize=6, color="tab:orange")
    ax.set_yticks(y, labels, fontsize=6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(goal, color="tab:red", linewidth=0.8, linestyle="--", label=f"goal {goal:.2f}x")
    shown = [v for r in rows for k, v in r.ratios.items() if k != "lightning"]
    ax.set_xlim(min([0.8] + [v - 0.05 for v in shown]), max([1.3] + [v + 0.05 for v in shown]))
    ax.invert_yaxis()
    ax.set_xlabel("per-step slope / the row's raw loop (median of interleaved repeats; lower is better)")
    ax.set_title("ferrotrain loop overhead matrix (one run)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ferrotrain.bench --matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians are reported)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: checks that everything runs, measures nothing")
    ap.add_argument("--only", default="", help="';'-separated substrings of the configurations to run (names hold commas)")
    ap.add_argument("--outputs", default=",".join(OUTPUTS), help="terminal, redirected or both")
    ap.add_argument("--no-lightning", action="store_true", help="skip Lightning even when it is installed")
    ap.add_argument("--chart", default="ferrotrain-matrix.png", help="where to write the PNG chart")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="32-true", choices=PRECISIONS)
    ap.add_argument("--sync-debug", default="", choices=("", "warn", "error"),
                    help="CUDA: 'warn' counts host-device syncs per step, 'error' makes any sync raise")
    ap.add_argument("--no-eval", action="store_true", help="skip the validate()/predict() rows (W7)")
    ap.add_argument("--control-every-row", action="store_true",
                    help="time each row's raw loop twice, so every row shows its own noise floor")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure, write JSON here
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    if any(o not in OUTPUTS for o in outputs):
        ap.error(f"--outputs: choose from {', '.join(OUTPUTS)}, got {args.outputs!r}")
    wanted = [w.strip() for w in args.only.split(";") if w.strip()]
    cases = [c for c in CASES if not wanted or any(w in c.name for w in wanted)]
    sizes = Sizes.tiny() if args.tiny else Sizes()
    run = Run(args.device, args.precision, args.sync_debug)
    if run.cuda and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if args.child:
        with contextlib.redirect_stderr(io.StringIO()):
            results = measure(cases, sizes, args.repeats, not args.no_lightning, run,
                              not args.no_eval and (not wanted or any(w.upper().startswith("W7") for w in wanted)),
                              args.control_every_row)
        with open(args.child, "w") as f:
            json.dump(results, f)
        return 0
    rows: List[MatrixRow] = []
    for output in outputs:
        t0 = time.perf_counter()
        rows += summarize(output, run_child(output, _child_args(args)))
        print(f"{output} run done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(format_matrix(rows))
    if not args.no_chart:
        path = write_matrix_chart(rows, args.chart)
        print("matplotlib is not installed: no chart (pip install 'ferrotrain[bench]')" if path is None
              else f"chart: {path}")
    return 0


def _child_args(args: Any) -> List[str]:
    out = ["--repeats", str(args.repeats)]
    if args.tiny:
        out.append("--tiny")
    if args.only:
        out += ["--only", args.only]
    if args.no_lightning:
        out.append("--no-lightning")
    if args.no_eval:
        out.append("--no-eval")
    if args.control_every_row:
        out.append("--control-every-row")
    out += ["--device", args.device, "--precision", args.precision, "--sync-debug", args.sync_debug]
    return out


if __name__ == "__main__":
    sys.exit(main())
