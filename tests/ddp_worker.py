"""A training script the DDP tests run as real processes (`python tests/ddp_worker.py MODE OUT`).

MODE `fit`: 2 processes on the CPU (`devices=2`, the Trainer starts the second); `fail`: rank 1
raises in its third step; `nodes`: one process per "node" under torchrun (`num_nodes=2`).
Each rank writes what it saw to OUT/rank<r>.pt. MODE `spawn`: `strategy="ddp_spawn"`; the main
process (which trains nothing itself) writes what it sees after fit, validate and predict to
OUT/main.pt; `spawn_fail`: the same, rank 1 raising in its third step. MODE `stop`: every rank sets
`trainer.should_stop` in a batch, then one rank alone at an epoch's end, then only one rank's
EarlyStopping wants to stop, then predict.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain as L
from ferrotrain.callbacks import Callback
from ferrotrain.loggers import CSVLogger
from ferrotrain.utilities.rank_zero import rank_zero_only

N, DIM = 256, 8
torch.set_num_threads(1)


def dataset(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(N, DIM, generator=g), torch.randn(N, 1, generator=g))


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


class Model(L.LightningModule):
    def __init__(self, fail_rank: int = -1) -> None:
        super().__init__()
        self.net = make_net()
        self.fail_rank = fail_rank
        self.seen = {}

    def training_step(self, batch, batch_idx):
        if self.global_rank == self.fail_rank and batch_idx == 2:
            raise ValueError(f"boom on rank {self.global_rank}")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss_synced", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("loss_local", loss, on_step=False, on_epoch=True)
        self.log("rank_step", float(self.global_rank), on_step=True, on_epoch=False, sync_dist=True)
        if batch_idx == 0 and self.current_epoch == 0:
            self.seen["gathered"] = self.all_gather(torch.tensor([float(self.global_rank), 1.0]))
            self.seen["model_type"] = type(self.trainer.model).__name__
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return batch[0].flatten()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(Callback):
    """Counts DDP all-reduces (a comm hook) and what the loaders look like on each rank."""

    def __init__(self) -> None:
        self.allreduces = 0
        self.epochs = []

    def on_train_start(self, trainer, pl_module):
        model = trainer.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting(state, bucket):
                self.allreduces += 1
                return allreduce_hook(state, bucket)

            model.register_comm_hook(None, counting)

    def on_train_epoch_start(self, trainer, pl_module):
        s = trainer.train_dataloader.sampler
        self.epochs.append((type(s).__name__, getattr(s, "epoch", None), getattr(s, "shuffle", None),
                            len(trainer.train_dataloader)))


def main(mode: str, out: str) -> None:
    fail = 1 if mode == "fail" else -1
    record = Record()
    common = dict(max_epochs=2, enable_progress_bar=False, enable_model_summary=False,
                  logger=CSVLogger(out, name="logs"), callbacks=[record], default_root_dir=out,
                  num_sanity_val_steps=0)
    if mode == "nodes":
        trainer = L.Trainer(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", accumulate_grad_batches=2, **common)
    else:
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", accumulate_grad_batches=2, **common)
    model = Model(fail_rank=fail)
    train = DataLoader(dataset(0), batch_size=32)
    val = DataLoader(dataset(1), batch_size=32)
    trainer.fit(model, train, val)
    m = trainer.callback_metrics
    info = {
        "world_size": trainer.world_size, "global_rank": trainer.global_rank, "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank, "is_global_zero": trainer.is_global_zero,
        "rank_zero_only": rank_zero_only.rank, "model_type_in_fit": model.seen.get("model_type"),
        "gathered": model.seen.get("gathered"), "allreduces": record.allreduces, "epochs": record.epochs,
        "loss_synced": float(m["loss_synced"]), "loss_local": float(m["loss_local"]),
        "rank_step": float(m["rank_step"]), "val_loss": float(m["val_loss"]),
        "ckpt": trainer.checkpoint_callback.best_model_path, "global_step": trainer.global_step,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "dist_initialized": dist.is_initialized(),
    }
    torch.save(info, os.path.join(out, f"rank{trainer.global_rank}.pt"))


class StopInBatch(Callback):
    """Every rank sets `trainer.should_stop` after batch `batch_idx` of epoch 1 (a per-batch stop
    must be requested on every rank, as in Lightning)."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == self.batch_idx:
            trainer.should_stop = True


class StopOnRankAtEpochEnd(Callback):
    """Only rank `rank` sets `trainer.should_stop`, at the end of epoch 1."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank == self.rank and trainer.current_epoch == 1:
            trainer.should_stop = True


class RankMetric(Model):
    """Logs a validation metric that only improves on rank 0 (no sync_dist): rank 1's EarlyStopping
    wants to stop after its second validation, rank 0's never does."""

    def validation_step(self, batch, batch_idx):
        sign = -1.0 if self.global_rank == 0 else 1.0
        self.log("rank_metric", torch.tensor(sign * self.current_epoch))


def stop_main(out: str) -> None:
    from ferrotrain.callbacks import EarlyStopping

    common = dict(accelerator="cpu", devices=2, strategy="ddp", max_epochs=5, enable_progress_bar=False,
                  enable_model_summary=False, logger=False, enable_checkpointing=False, default_root_dir=out,
                  num_sanity_val_steps=0)
    info = {}
    trainer = L.Trainer(callbacks=[StopInBatch(1)], **common)
    trainer.fit(Model(), DataLoader(dataset(0), batch_size=32))
    info["stop_in_batch"] = (trainer.global_step, trainer.current_epoch, trainer.should_stop)
    trainer = L.Trainer(callbacks=[StopOnRankAtEpochEnd(1)], **common)
    trainer.fit(Model(), DataLoader(dataset(0), batch_size=32))
    info["stop"] = (trainer.global_step, trainer.current_epoch, trainer.should_stop)
    early = EarlyStopping(monitor="rank_metric", patience=1, mode="min")
    trainer = L.Trainer(callbacks=[early], **common)
    trainer.fit(RankMetric(), DataLoader(dataset(0), batch_size=32), DataLoader(dataset(1), batch_size=64))
    info["early"] = (trainer.global_step, trainer.current_epoch, early.stopped_epoch)
    trainer = L.Trainer(**common)
    loader = DataLoader(TensorDataset(torch.arange(10.0).reshape(10, 1)), batch_size=4, shuffle=True)
    info["predictions"] = [p.tolist() for p in trainer.predict(Model(), loader)]
    torch.save(info, os.path.join(out, f"rank{trainer.global_rank}.pt"))


def spawn_main(out: str, fail: bool = False) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", accumulate_grad_batches=2, max_epochs=2,
                        enable_progress_bar=False, enable_model_summary=False, logger=CSVLogger(out, name="logs"),
                        default_root_dir=out, num_sanity_val_steps=0)
    model = Model(fail_rank=1 if fail else -1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, DataLoader(dataset(0), batch_size=32), DataLoader(dataset(1), batch_size=32))
    info = {
        "before": before, "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "best": trainer.checkpoint_callback.best_model_path, "global_step": trainer.global_step,
        "epoch": trainer.current_epoch, "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "status": trainer.state.status.value, "lightning_module_is_model": trainer.lightning_module is model,
        "dist_initialized_in_main": dist.is_initialized(),
    }
    info["validate"] = trainer.validate(model, DataLoader(dataset(1), batch_size=32), verbose=False)
    preds = trainer.predict(model, DataLoader(TensorDataset(torch.arange(10.0).reshape(10, 1)), batch_size=4))
    info["predictions"] = preds
    torch.save(info, os.path.join(out, "main.pt"))


if __name__ == "__main__":
    if sys.argv[1] == "stop":
        stop_main(sys.argv[2])
    elif sys.argv[1] in ("spawn", "spawn_fail"):
        spawn_main(sys.argv[2], fail=sys.argv[1] == "spawn_fail")
    else:
        main(sys.argv[1], sys.argv[2])
