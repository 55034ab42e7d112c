"""A training script the DeepSpeed tests run as real processes
(`python tests/deepspeed_worker.py MODE OUT STAGE`).

MODE `fit`: 2 processes on the CPU (the Trainer starts the second), ZeRO stage STAGE, gradient
accumulation and clipping by norm; each rank writes the consolidated weights it ends with. MODE
`resume`: one 2-epoch fit, then a 1-epoch fit that checkpoints and a second Trainer that resumes it
to 2 epochs, then a fresh Trainer that validates from the checkpoint; each rank writes the results.
Each rank writes OUT/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.callbacks import ModelCheckpoint

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fsdp_worker  # noqa: E402
from fsdp_worker import CLIP, dataset  # noqa: E402

torch.set_num_threads(1)


class Model(fsdp_worker.Model):
    """The FSDP worker's model; the first step records the engine's optimizer."""

    def note_first_step(self) -> None:
        self.seen["optimizer_type"] = type(self.trainer.optimizers[0]).__name__


def trainer(out: str, epochs: int, stage: str, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=2, strategy=f"deepspeed_stage_{stage}", max_epochs=epochs,
                     enable_progress_bar=False, enable_model_summary=False, logger=False, default_root_dir=out,
                     num_sanity_val_steps=0, accumulate_grad_batches=2, gradient_clip_val=CLIP, **kw)


def loaders():
    return DataLoader(dataset(0), batch_size=32), DataLoader(dataset(1), batch_size=32)


def full_weights(t: L.Trainer) -> dict:
    """The whole model's weights on every rank (gathered from the partitions with ZeRO-3)."""
    import deepspeed

    module = t.lightning_module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=t.strategy.zero_stage_3):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit_mode(out: str, stage: str) -> dict:
    t = trainer(out, 2, stage, enable_checkpointing=False)
    model = Model()
    t.fit(model, *loaders())
    return {"state_dict": full_weights(t), "model_type": model.seen["model_type"],
            "optimizer_type": model.seen["optimizer_type"], "val_loss": float(t.callback_metrics["val_loss"]),
            "global_step": t.global_step, "world_size": t.world_size, "global_rank": t.global_rank,
            "config": t.strategy.deepspeed_engine.config if hasattr(t.strategy.deepspeed_engine, "config") else None}


def resume_mode(out: str, stage: str) -> dict:
    t = trainer(os.path.join(out, "straight"), 2, stage, enable_checkpointing=False)
    t.fit(Model(), *loaders())
    straight = full_weights(t)

    ckpt_dir = os.path.join(out, "ckpts")
    t = trainer(os.path.join(out, "first"), 1, stage, callbacks=[ModelCheckpoint(dirpath=ckpt_dir)])
    t.fit(Model(), *loaders())
    path = t.checkpoint_callback.best_model_path
    first = full_weights(t)

    t = trainer(os.path.join(out, "second"), 2, stage, enable_checkpointing=False)
    t.fit(Model(), *loaders(), ckpt_path=path)
    resumed = full_weights(t)
    resumed_step = t.global_step
    # A fresh model and Trainer evaluating from the checkpoint folder: its consolidated weights.
    t = trainer(os.path.join(out, "eval"), 1, stage, enable_checkpointing=False)
    model = Model()
    val = t.validate(model, loaders()[1], ckpt_path=path, verbose=False)
    return {"straight": straight, "resumed": resumed, "path": path, "first": first, "resumed_step": resumed_step,
            "eval_weights": {k: v.detach().clone() for k, v in model.state_dict().items()}, "val": val}


def main(mode: str, out: str, stage: str) -> None:
    info = fit_mode(out, stage) if mode == "fit" else resume_mode(out, stage)
    import torch.distributed as dist

    torch.save(info, os.path.join(out, f"rank{dist.get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
