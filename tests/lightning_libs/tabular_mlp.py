"""A tiny pytorch-tabular run (CategoryEmbeddingModel regression on a synthetic frame), written as
the library's users write it; prints the per-step training losses as JSON. pytorch-tabular imports
`pytorch_lightning`. Run as is (real Lightning) or under `python -m ferrotrain.lightning`."""

import json
import logging
import sys
import warnings

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from pytorch_tabular import TabularModel
from pytorch_tabular.config import DataConfig, OptimizerConfig, TrainerConfig
from pytorch_tabular.models import CategoryEmbeddingModelConfig

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def main():
    rng = np.random.default_rng(0)
    n = 96
    frame = pd.DataFrame({
        "a": rng.standard_normal(n), "b": rng.standard_normal(n), "c": rng.standard_normal(n),
        "kind": rng.choice(["x", "y", "z"], n),
    })
    frame["target"] = frame["a"] * 2 - frame["b"] + 0.1 * rng.standard_normal(n)
    train, valid = frame.iloc[:64], frame.iloc[64:]
    model = TabularModel(
        data_config=DataConfig(target=["target"], continuous_cols=["a", "b", "c"], categorical_cols=["kind"]),
        model_config=CategoryEmbeddingModelConfig(task="regression", layers="8-4", learning_rate=0.01, seed=42),
        optimizer_config=OptimizerConfig(),
        trainer_config=TrainerConfig(
            batch_size=16, max_epochs=int(sys.argv[1]) if len(sys.argv) > 1 else 2, accelerator="cpu",
            checkpoints=None, early_stopping=None, progress_bar="none", load_best=False, seed=42,
            trainer_kwargs={"enable_model_summary": False},
        ),
        verbose=False,
    )
    recorder = LossRecorder()
    model.fit(train=train, validation=valid, callbacks=[recorder], seed=42)
    result = model.evaluate(valid, verbose=False)
    print(json.dumps({"trainer": type(model.trainer).__module__, "losses": recorder.losses,
                      "global_step": model.trainer.global_step, "test": result}))


if __name__ == "__main__":
    main()
