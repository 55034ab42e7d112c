"""Shared fixtures: small deterministic data and a minimal module, as users would write them."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain as L

torch.set_num_threads(1)

# A shell that starts a command in the background (`make test &`, nohup, some CI runners) makes it
# ignore SIGINT, and Python then raises no KeyboardInterrupt, so the Ctrl-C tests could not send
# one. Put back Python's own handler: this process and the processes it starts get Ctrl-C again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def make_dataset(n: int = 64, dim: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, dim, generator=g), torch.randn(n, 1, generator=g))


class BoringModel(L.LightningModule):
    """A linear regressor with training, validation, test and predict steps."""

    def __init__(self, dim: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(dim, 1)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@pytest.fixture
def loaders():
    ds = make_dataset()
    return DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16)


@pytest.fixture
def quiet(tmp_path):
    """Trainer keyword arguments for a fast, silent run under a temporary root."""
    return dict(
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )


@pytest.fixture
def caplog(caplog):
    """pytest's caplog, seeing ferrotrain's INFO messages: the "ferrotrain" logger has its own
    stderr handler and does not propagate to the root logger (as Lightning's), so let it
    propagate for the test."""
    logger = logging.getLogger("ferrotrain")
    propagate = logger.propagate
    logger.propagate = True
    caplog.set_level(logging.INFO, logger="ferrotrain")
    yield caplog
    logger.propagate = propagate


@pytest.fixture(autouse=True)
def _restore_process_environment():
    # A DDP launch in this process exports MASTER_PORT/MASTER_ADDR/rank variables, as Lightning's
    # launcher does; a later test's processes would otherwise inherit a port chosen for an earlier run.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
