"""Reproducibility: `Trainer(deterministic=...)` sets torch's flags as Lightning does,
`seed_everything(seed, workers=True)` gives DataLoaders Lightning's worker seeding, and two fits
with the same seed (shuffling, dropout, random augmentation in two worker processes) end with
bit-identical parameters."""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import warnings
from typing import Any, Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import ferrotrain
from ferrotrain.utilities.seed import pl_worker_init_function
from tests.lightning_ref import is_lightning, libraries, loader, trainer

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def torch_flags():
    """Each test leaves torch's global flags and the environment as it found them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    env = {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _flags() -> Dict[str, Any]:
    return dict(
        deterministic=torch.are_deterministic_algorithms_enabled(),
        warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        benchmark=torch.backends.cudnn.benchmark,
        cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


@pytest.mark.parametrize("value, warn_only", [(True, False), ("warn", True)])
def test_deterministic_sets_torch_flags_as_lightning(torch_flags, value, warn_only):
    for L in libraries():
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        trainer(L, deterministic=value)
        assert _flags() == dict(deterministic=True, warn_only=warn_only, benchmark=False, cublas=":4096:8"), L.__name__
    # cuDNN's own flag too (Lightning 1.x set it; torch's deterministic mode implies it).
    assert torch.backends.cudnn.deterministic


def test_deterministic_default_leaves_torch_flags_alone_and_false_turns_them_off(torch_flags):
    for L in libraries():
        torch.use_deterministic_algorithms(True, warn_only=True)
        trainer(L)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        trainer(L, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_with_benchmark_warns(torch_flags):
    for L in libraries():
        with pytest.warns(UserWarning, match="benchmark=True"):
            trainer(L, deterministic=True, benchmark=True)
        assert torch.backends.cudnn.benchmark


def test_worker_init_function_derives_lightnings_seeds():
    # Values measured with `lightning.fabric.utilities.seed.pl_worker_init_function`, in worker 1
    # of a loader whose base seed is 1234 (torch seeds worker i with base + i).
    torch.manual_seed(1234 + 1)
    pl_worker_init_function(1, rank=0)
    assert (torch.rand(1).item(), random.random(), float(np.random.rand())) == (
        0.9482391476631165, 0.643804146946211, 0.6726819280425754)


def _loader(**kwargs: Any) -> DataLoader:
    return DataLoader(loader(8).dataset, batch_size=4, **kwargs)


def test_seed_workers_installs_worker_init_fn_on_loaders_without_one(torch_flags):
    mine = lambda worker_id: None  # noqa: E731
    for L in libraries():
        L.seed_everything(3, workers=True, verbose=False)
        train, own, val = _loader(), _loader(worker_init_fn=mine), _loader()
        model = _Model(L)
        t = trainer(L, max_epochs=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice on num_workers
            t.fit(model, train, [own, val])
        for dl in (train, val):
            assert isinstance(dl.worker_init_fn, functools.partial) and dl.worker_init_fn.keywords == {"rank": 0}
            assert dl.worker_init_fn.func.__name__ == "pl_worker_init_function"
        assert own.worker_init_fn is mine
    ferrotrain.seed_everything(3, workers=False, verbose=False)
    plain = _loader()
    trainer(ferrotrain, max_epochs=1).fit(_Model(ferrotrain), plain)
    assert plain.worker_init_fn is None


class Noisy(Dataset):
    """Random augmentation from numpy, Python and torch, drawn in the worker processes."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(24, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = float(np.random.randn()) + random.gauss(0, 1) + float(torch.randn(()))
        return self.x[i] + 0.01 * noise, self.y[i]


def _Model(L: Any) -> Any:
    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                           torch.nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            pass

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    return M()


def _seeded_fit(seed: int, deterministic: bool) -> Dict[str, torch.Tensor]:
    ferrotrain.seed_everything(seed, workers=True, verbose=False)
    model = _Model(ferrotrain)  # initial weights from the seed too
    data = DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=2, multiprocessing_context=FORK)
    trainer(ferrotrain, max_epochs=1, deterministic=deterministic).fit(model, data)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("deterministic", [False, True])
def test_same_seed_gives_bit_identical_parameters(torch_flags, deterministic):
    a = _seeded_fit(7, deterministic)
    b = _seeded_fit(7, deterministic)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if deterministic:  # guards against a fit that ignores its data: another seed, other weights
        c = _seeded_fit(8, deterministic)
        assert not torch.equal(a["net.0.weight"], c["net.0.weight"])
