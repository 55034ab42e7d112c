"""A training script the FSDP tests run as real processes (`python tests/fsdp_worker.py MODE OUT [ARGS]`).

MODE `fit SHARDING`: 2 processes on the CPU (the Trainer starts the second), FSDP with a wrap and
an activation-checkpointing policy, gradient accumulation and clipping by norm; each rank writes
the gathered weights it ends with. MODE `resume full|sharded`: one 2-epoch fit, then a 1-epoch fit
that checkpoints and a second Trainer that resumes it to 2 epochs; each rank writes both results.
MODE `single`: one process with strategy="fsdp" and "ddp". Each rank writes OUT/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain as L
from ferrotrain.callbacks import ModelCheckpoint

N, DIM = 256, 8
CLIP = 0.3
torch.set_num_threads(1)


def dataset(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(N, DIM, generator=g), torch.randn(N, 1, generator=g))


class Block(torch.nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(i, o)

    def forward(self, x):
        return torch.tanh(self.lin(x))


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(Block(DIM, 16), Block(16, 16), torch.nn.Linear(16, 1))


def make_optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.seen = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        if batch_idx == 0 and self.current_epoch == 0:
            self.seen["model_type"] = type(self.trainer.model).__name__
            self.note_first_step()
        return loss

    def note_first_step(self) -> None:
        # Each rank holds only its shard of the first layer's weight.
        self.seen["local_numel"] = self.net[0].lin.weight.numel()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return make_optimizer(self.parameters())


def full_weights(trainer) -> dict:
    """The whole model's weights on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in sd.items()}


def trainer(out: str, epochs: int, strategy, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=epochs, enable_progress_bar=False,
                     enable_model_summary=False, logger=False, default_root_dir=out, num_sanity_val_steps=0,
                     accumulate_grad_batches=2, gradient_clip_val=CLIP, **kw)


def loaders():
    return DataLoader(dataset(0), batch_size=32), DataLoader(dataset(1), batch_size=32)


def fit_mode(out: str, sharding: str) -> dict:
    from ferrotrain.strategies import FSDPStrategy

    strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block},
                            sharding_strategy=sharding)
    t = trainer(out, 2, strategy, enable_checkpointing=False)
    model = Model()
    t.fit(model, *loaders())
    return {"state_dict": full_weights(t), "model_type": model.seen["model_type"],
            "local_numel": model.seen["local_numel"], "val_loss": float(t.callback_metrics["val_loss"]),
            "global_step": t.global_step, "world_size": t.world_size, "global_rank": t.global_rank}


def resume_mode(out: str, kind: str) -> dict:
    from ferrotrain.strategies import FSDPStrategy

    def strategy():
        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type=kind)

    t = trainer(os.path.join(out, "straight"), 2, strategy(), enable_checkpointing=False)
    t.fit(Model(), *loaders())
    straight = full_weights(t)

    ckpt_dir = os.path.join(out, "ckpts")
    t = trainer(os.path.join(out, "first"), 1, strategy(), callbacks=[ModelCheckpoint(dirpath=ckpt_dir)])
    t.fit(Model(), *loaders())
    path = t.checkpoint_callback.best_model_path
    first_weights = full_weights(t)

    t = trainer(os.path.join(out, "second"), 2, strategy(), enable_checkpointing=False)
    t.fit(Model(), *loaders(), ckpt_path=path)
    resumed = full_weights(t)
    # Evaluating from the checkpoint with a fresh model and Trainer: the checkpoint's weights.
    t = trainer(os.path.join(out, "eval"), 1, strategy(), enable_checkpointing=False)
    model = Model()
    val = t.validate(model, loaders()[1], ckpt_path=path, verbose=False)
    return {"straight": straight, "resumed": resumed, "path": path, "first": first_weights,
            "eval_weights": full_weights(t), "val": val, "global_step": t.global_step}


def single_mode(out: str) -> dict:
    """One process (devices=1) with strategy="fsdp" and "ddp": a one-process group, no launcher."""
    steps = {}
    for name in ("fsdp", "ddp"):
        t = L.Trainer(accelerator="cpu", devices=1, strategy=name, max_epochs=1, enable_progress_bar=False,
                      enable_model_summary=False, logger=False, enable_checkpointing=False, default_root_dir=out)
        t.fit(Model(), *loaders())
        steps[name] = (t.global_step, t.world_size, type(t.model).__name__)
    return steps


def main(mode: str, out: str, arg: str) -> None:
    if mode == "single":
        torch.save(single_mode(out), os.path.join(out, "rank0.pt"))
        return
    info = fit_mode(out, arg) if mode == "fit" else resume_mode(out, arg)
    import torch.distributed as dist

    torch.save(info, os.path.join(out, f"rank{dist.get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
