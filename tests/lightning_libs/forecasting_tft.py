"""A tiny pytorch-forecasting run (TemporalFusionTransformer on synthetic series), written for
Lightning as the library's users write it; prints the per-step training losses as JSON.
Run as is (real Lightning) or under `python -m ferrotrain.lightning` (ferrotrain)."""

import json
import sys
import warnings

import numpy as np
import pandas as pd
import torch

import lightning.pytorch as pl
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

warnings.filterwarnings("ignore")


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def main():
    pl.seed_everything(0)
    rng = np.random.default_rng(0)
    n_series, length = 3, 30
    data = pd.DataFrame({
        "series": np.repeat([f"s{i}" for i in range(n_series)], length),
        "time_idx": np.tile(np.arange(length), n_series),
        "value": (np.sin(np.arange(n_series * length) / 4.0) + 0.1 * rng.standard_normal(n_series * length)).astype("float32"),
    })
    dataset = TimeSeriesDataSet(
        data, time_idx="time_idx", target="value", group_ids=["series"],
        max_encoder_length=8, max_prediction_length=2,
        time_varying_unknown_reals=["value"], time_varying_known_reals=["time_idx"],
    )
    train = dataset.to_dataloader(train=True, batch_size=8, num_workers=0, shuffle=False)
    val = TimeSeriesDataSet.from_dataset(dataset, data, predict=True, stop_randomization=True).to_dataloader(
        train=False, batch_size=8, num_workers=0)
    model = TemporalFusionTransformer.from_dataset(
        dataset, hidden_size=4, attention_head_size=1, hidden_continuous_size=2, dropout=0.0, learning_rate=0.01,
    )
    recorder = LossRecorder()
    trainer = pl.Trainer(
        max_steps=int(sys.argv[1]) if len(sys.argv) > 1 else 6, accelerator="cpu", deterministic=True,
        gradient_clip_val=0.1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder], limit_val_batches=1,
    )
    trainer.fit(model, train, val)
    print(json.dumps({"trainer": type(trainer).__module__, "losses": recorder.losses, "global_step": trainer.global_step}))


if __name__ == "__main__":
    main()
