"""A LightningCLI script: `python cli_example.py fit --config cli_example.yaml`."""
import torch
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain as L
from ferrotrain.cli import LightningCLI


class RegressionModel(L.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RegressionData(L.LightningDataModule):
    def __init__(self, batch_size: int = 16, size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.size = size

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.size, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=self.batch_size)


if __name__ == "__main__":
    LightningCLI(RegressionModel, RegressionData)
