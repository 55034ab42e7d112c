"""Programs the fault tests run in a subprocess (so they can be killed or interrupted for real).

`python fault_scripts.py kill9 FOLDER POINTS`: kill -9 a training run while it writes checkpoints,
at POINTS different moments, and check each time what was left; prints one JSON line per point.
`python fault_scripts.py sigint FOLDER`: a fit that the parent interrupts with SIGINT mid-epoch;
prints one JSON line with what the run saw.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain as L
from ferrotrain.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint

torch.set_num_threads(1)

BIG = 1 << 20  # float32 parameters: with the momentum buffer, an 8 MiB checkpoint


class BigModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.big = torch.nn.Parameter(torch.zeros(BIG))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y) + self.big[:4].sum()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=4)


class Signal(Callback):
    """Writes one byte to a pipe each time a checkpoint starts being written."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        os.write(self.fd, b"s")


def quiet(folder: str, **kw):
    return dict(default_root_dir=folder, enable_progress_bar=False, enable_model_summary=False, logger=False, **kw)


def train_until_killed(folder: str, fd: int) -> None:
    ckpt = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(max_steps=10_000, callbacks=[ckpt, Signal(fd)], **quiet(folder))
    trainer.fit(BigModel(), loader())


def step_of(path: str) -> int:
    return int(os.path.basename(path).split("step=")[1].split(".")[0].split("-")[0])


def inspect_and_resume(folder: str) -> dict:
    """What a user finds after the crash, and whether the newest checkpoint resumes the run."""
    from ferrotrain.checkpoint import load
    from ferrotrain.trainer.checkpointing import _latest_in

    names = sorted(os.listdir(folder))
    ckpts = [os.path.join(folder, n) for n in names if n.endswith(".ckpt")]
    report = {"files": names, "temp_left": [n for n in names if not n.endswith(".ckpt")]}
    steps = []
    for p in ckpts:
        ck = load(p)  # verifies every checksum; raises on a damaged file
        assert ck["global_step"] == step_of(p), (p, ck["global_step"])
        # torch's own reader, with its defaults, takes every surviving file too.
        assert torch.load(p)["global_step"] == ck["global_step"], p
        steps.append(ck["global_step"])
    report["steps"] = sorted(steps)
    latest = _latest_in(folder)
    report["latest"] = os.path.basename(latest)
    if not steps:
        report["resumed"] = None
        return report
    assert step_of(latest) == max(steps), (latest, steps)
    # A fresh process resumes with ckpt_path="last" (the newest complete file in the folder).
    resume_cb = ModelCheckpoint(dirpath=folder, save_top_k=0)
    trainer = L.Trainer(max_steps=max(steps) + 2, callbacks=[resume_cb], **quiet(folder))
    model = BigModel()
    trainer.fit(model, loader(), ckpt_path="last")
    assert trainer.ckpt_path == latest, (trainer.ckpt_path, latest)
    assert trainer.global_step == max(steps) + 2
    report["resumed"] = trainer.global_step
    return report


def warm_up(folder: str) -> None:
    """One short run in the parent first, so each forked child starts with everything imported."""
    sub = os.path.join(folder, "warm")
    ckpt = ModelCheckpoint(dirpath=sub, every_n_train_steps=1)
    L.Trainer(max_steps=2, callbacks=[ckpt], **quiet(sub)).fit(BigModel(), loader())
    for p in glob.glob(os.path.join(sub, "*")):
        os.remove(p)


def kill9(folder: str, points: int) -> None:
    warm_up(folder)
    for i in range(points):
        sub = os.path.join(folder, f"point{i}")
        os.makedirs(sub)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the training process
            os.close(r)
            try:
                train_until_killed(sub, w)
            finally:
                os._exit(0)
        os.close(w)
        # Kill during the k-th checkpoint write, at a fraction of the time one write takes.
        k = 1 + i % 3
        frac = (i * 7 % points) / points
        t_prev = None
        gap = 0.0
        for n in range(k + 1):
            os.read(r, 1)
            now = time.perf_counter()
            if t_prev is not None:
                gap = now - t_prev
            t_prev = now
        delay = frac * (gap or 0.02)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        out = {"point": i, "during_save": k + 1, "delay_s": round(delay, 4)}
        try:
            out.update(inspect_and_resume(sub))
            out["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            out["ok"] = False
            out["error"] = f"{type(e).__name__}: {e}"
        for p in glob.glob(os.path.join(sub, "*")) + glob.glob(os.path.join(sub, ".*")):
            os.remove(p)
        print(json.dumps(out), flush=True)


class Record(Callback):
    def __init__(self) -> None:
        self.exceptions = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 5:
            print("running", flush=True)  # the parent sends SIGINT now
            time.sleep(30)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.exceptions.append(type(exception).__name__)


def sigint(folder: str) -> None:
    from ferrotrain.loggers import CSVLogger

    class Logger(CSVLogger):
        status = None

        def finalize(self, status: str) -> None:
            super().finalize(status)
            Logger.status = status

    rec = Record()
    on_exc = OnExceptionCheckpoint(dirpath=folder)
    logger = Logger(save_dir=folder)
    trainer = L.Trainer(max_epochs=1000, callbacks=[rec, on_exc], logger=logger, log_every_n_steps=1,
                        default_root_dir=folder, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    exit_code = None
    try:
        trainer.fit(BigModel(), loader())
    except SystemExit as exc:  # Ctrl-C ends the program as Lightning's does, after the shutdown
        exit_code = exc.code
    out = {
        "exit_code": exit_code,
        # Ctrl-C works again after the shutdown (it was ignored while the shutdown ran).
        "sigint_restored": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "interrupted": trainer.interrupted,
        "on_exception": rec.exceptions,
        "logger_status": Logger.status,
        "global_step": trainer.global_step,
        "checkpoint": os.path.isfile(on_exc.ckpt_path),
        "metrics_rows": sum(1 for _ in open(os.path.join(logger.log_dir, "metrics.csv"))) - 1,
    }
    # The checkpoint resumes the run where it broke.
    t2 = L.Trainer(max_steps=trainer.global_step + 1, callbacks=[OnExceptionCheckpoint(dirpath=folder)],
                   **quiet(folder, enable_checkpointing=False))
    t2.fit(BigModel(), loader(), ckpt_path=on_exc.ckpt_path)
    out["resumed_to"] = t2.global_step
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "kill9":
        kill9(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "sigint":
        sigint(sys.argv[2])
