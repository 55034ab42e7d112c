"""Quickstart: train a small classifier on data this script makes, validate it, test it.

    python examples/quickstart.py [--epochs 5] [--root quickstart_logs]

It shows the progress bar, writes logs (TensorBoard when installed, else CSV) and a checkpoint
under the root folder, and prints where they are. Swap `import ferrotrain as L` for
`import lightning as L` and it runs unchanged.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import ferrotrain as L
from ferrotrain.callbacks import EarlyStopping, ModelCheckpoint


def make_data(n: int = 6000, seed: int = 0) -> TensorDataset:
    """Three Gaussian blobs in 20 dimensions: an easy, learnable classification problem."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 20, generator=g) * 2.0
    labels = torch.randint(0, 3, (n,), generator=g)
    x = centers[labels] + torch.randn(n, 20, generator=g)
    return TensorDataset(x, labels)


class Classifier(L.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/acc", acc, prog_bar=stage != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": sched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--root", default="quickstart_logs")
    args = ap.parse_args()

    L.seed_everything(42)
    data = make_data()
    train, val, test = random_split(data, [4800, 600, 600], generator=torch.Generator().manual_seed(0))
    checkpoint = ModelCheckpoint(monitor="val/loss", mode="min", save_last=True)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.root,
        callbacks=[checkpoint, EarlyStopping(monitor="val/loss", patience=3)],
        log_every_n_steps=10,
    )
    model = Classifier()
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256))
    results = trainer.test(model, DataLoader(test, batch_size=256), ckpt_path="best")
    print(f"\ntest accuracy: {results[0]['test/acc']:.3f}")
    print(f"logs:        {os.path.abspath(trainer.log_dir)}")
    print(f"best model:  {checkpoint.best_model_path}")
    print(f"last model:  {checkpoint.last_model_path}")


if __name__ == "__main__":
    main()
