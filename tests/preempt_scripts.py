"""Programs the preemption tests run as real processes (`python preempt_scripts.py MODE ROOT ...`).

`train ROOT STEP WHERE [DEVICES [RANK]]`: a fit that pauses at global step STEP, on the rank RANK
(0 by default), and prints `ready <pid>`: WHERE is `end` (in `on_train_batch_end`, after the
optimizer step) or `step` (in `training_step` of the next batch, before its optimizer step).
It waits there until its own handler of the signal (SIGTERM, or PREEMPT_SIGNAL; installed before
`fit`, so ours chains to it) has seen the signal the parent sends. It prints `saving` when a
checkpoint is built after that, and on the way out one line `REPORT <json>`: what it saw.
`finish ROOT [DEVICES]`: a new process runs `fit()` to the end from ROOT (ckpt_path from the
environment variable CKPT_PATH, "last" when unset; "none" passes None, as a requeued SLURM job
does) and saves the final weights to ROOT/final-rank<r>.pt; `reference ROOT [DEVICES]`: the
same fit, never stopped, in a fresh folder.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain as L
from ferrotrain.callbacks import Callback, ModelCheckpoint
from ferrotrain.loggers import CSVLogger

torch.set_num_threads(1)
if os.environ.get("PREEMPT_DEBUG"):
    import faulthandler
    faulthandler.register(signal.SIGUSR2, all_threads=True)

EPOCHS, BATCHES, BATCH = 3, 12, 4  # 36 optimizer steps
STEPS = EPOCHS * BATCHES


class Model(L.LightningModule):
    """Dropout, a shuffled loader, Adam and a step scheduler: every piece of state a resume
    must restore exactly shows in the final weights."""

    def __init__(self, big: int = 0) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))
        # A larger parameter makes the checkpoint write take a while (the second-signal test).
        self.big = torch.nn.Parameter(torch.zeros(big)) if big else None
        self.pause_step = -1
        self.pause_in_step = False
        self.on_pause = None

    def training_step(self, batch, batch_idx):
        if self.pause_in_step and self.global_step == self.pause_step:
            self.on_pause()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.big is not None:
            loss = loss + self.big[:2].sum()
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 5, 0.7),
                                                    "interval": "step"}}


def data(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(BATCHES * BATCH, 6, generator=g), torch.randn(BATCHES * BATCH, 1, generator=g))


class PauseAtEnd(Callback):
    def __init__(self, model: Model) -> None:
        self.model = model

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.model.pause_in_step and trainer.global_step == self.model.pause_step:
            self.model.on_pause()


def make_trainer(root: str, devices: int, log_version: int = 0, **kw) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=os.path.join(root, "checkpoints"), save_last=True)
    strategy = {"strategy": "ddp"} if devices > 1 else {}
    return L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=devices, default_root_dir=root,
                     val_check_interval=0.5, log_every_n_steps=2, enable_progress_bar=False,
                     enable_model_summary=False, logger=CSVLogger(root, name="logs", version=log_version),
                     callbacks=[ckpt] + kw.pop("callbacks", []), **strategy, **kw)


def loaders() -> tuple:
    return (DataLoader(data(0), batch_size=BATCH, shuffle=True), DataLoader(data(1), batch_size=BATCH))


def train(root: str, step: int, where: str, devices: int, rank_to_pause: int) -> None:
    seen = []

    def user_handler(signum, frame):  # installed before fit: ours must call it
        seen.append(signum)

    sig = getattr(signal, os.environ.get("PREEMPT_SIGNAL", "SIGTERM"))
    signal.signal(sig, user_handler)
    L.seed_everything(0)
    model = Model(big=int(os.environ.get("BIG", "0")))
    trainer = make_trainer(root, devices, callbacks=[PauseAtEnd(model)])
    model.pause_step, model.pause_in_step = step, where == "step"

    def pause() -> None:
        if trainer.global_rank != rank_to_pause:
            return
        print(f"ready {os.getpid()}", flush=True)
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            time.sleep(0.005)
        model.pause_step = -1
        model.signaled_at = time.monotonic()

    model.on_pause = pause

    class SayWhenSaving(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            if seen:
                print("saving", flush=True)
                time.sleep(0.3)  # the parent's second signal arrives while this save is under way

    trainer.callbacks.append(SayWhenSaving())
    report = {"rank": None}
    try:
        trainer.fit(model, *loaders())
        report["returned"] = True
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        report["raised"] = type(exc).__name__
        report["code"] = getattr(exc, "code", None)
        raise
    finally:
        report.update(
            rank=trainer.global_rank, global_step=trainer.global_step, user_handler_calls=len(seen),
            handler_restored=signal.getsignal(sig) is user_handler,
            interrupted=trainer.interrupted, threads=sorted(t.name for t in __import__("threading").enumerate()),
            stop_s=round(time.monotonic() - getattr(model, "signaled_at", time.monotonic()), 3),
        )
        print("REPORT " + json.dumps(report), flush=True)


def finish(root: str, devices: int, ckpt_path) -> None:
    # The restarted job runs the same script (with several processes the samplers shuffle from
    # this seed, as in Lightning); the RNG states the run goes on with are the checkpoint's.
    L.seed_everything(0)
    model = Model()
    trainer = make_trainer(root, devices, log_version=1)  # its own log folder
    trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
    torch.save({"state_dict": model.state_dict(), "global_step": trainer.global_step, "ckpt_path": trainer.ckpt_path},
               os.path.join(root, f"final-rank{trainer.global_rank}.pt"))


def reference(root: str, devices: int) -> None:
    L.seed_everything(0)
    model = Model()
    trainer = make_trainer(root, devices)
    trainer.fit(model, *loaders())
    torch.save({"state_dict": model.state_dict(), "global_step": trainer.global_step},
               os.path.join(root, f"final-rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    mode, root = sys.argv[1], sys.argv[2]
    if mode == "train":
        train(root, int(sys.argv[3]), sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 1,
              int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    elif mode == "finish":
        path = os.environ.get("CKPT_PATH", "last")
        finish(root, int(sys.argv[3]) if len(sys.argv) > 3 else 1, None if path == "none" else path)
    elif mode == "reference":
        reference(root, int(sys.argv[3]) if len(sys.argv) > 3 else 1)
