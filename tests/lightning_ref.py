"""Shared helpers for the tests that pin ferrotrain to Lightning 2.x.

A scenario is a function `scenario(L)` taking the library namespace (`ferrotrain`, or `lightning`
when cross-checking) and returning what a user observes. The expected values in the tests were
measured under Lightning and are pinned as literals, because CI has no Lightning. Set
`FERROTRAIN_CROSSCHECK=1` (with `lightning` installed) to also run every scenario under Lightning
and assert that it still observes the same values.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Any, Callable, Dict, List

import torch
from torch.utils.data import DataLoader, TensorDataset

import ferrotrain

CROSSCHECK = os.environ.get("FERROTRAIN_CROSSCHECK") == "1" and importlib.util.find_spec("lightning") is not None

QUIET = dict(
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


def libraries() -> List[Any]:
    libs: List[Any] = [ferrotrain]
    if CROSSCHECK:
        libs.append(importlib.import_module("lightning"))
    return libs


def is_lightning(L: Any) -> bool:
    return L.__name__ == "lightning"


def misconfiguration(L: Any) -> type:
    if is_lightning(L):
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        return MisconfigurationException
    return ferrotrain.errors.MisconfigurationException


def callbacks_module(L: Any) -> Any:
    """`ferrotrain.callbacks` or `lightning.pytorch.callbacks`."""
    return importlib.import_module("lightning.pytorch.callbacks" if is_lightning(L) else "ferrotrain.callbacks")


def csv_logger(L: Any, path: Any, **kwargs: Any) -> Any:
    if is_lightning(L):
        from lightning.pytorch.loggers import CSVLogger
    else:
        from ferrotrain.loggers import CSVLogger
    return CSVLogger(path, **kwargs)


def trainer(L: Any, **kwargs: Any) -> Any:
    return L.Trainer(**{**QUIET, **kwargs})


def close(got: Any, expected: Any, rel: float) -> bool:
    """Equal, with floats equal to `rel`: the figures were measured on one CPU, and another
    CPU's kernels may round the last digits differently (Lightning's runs too)."""
    if isinstance(got, float) and isinstance(expected, float):
        return got == expected or abs(got - expected) <= rel * max(abs(got), abs(expected))
    if isinstance(got, (list, tuple)) and type(got) is type(expected):
        return len(got) == len(expected) and all(close(g, e, rel) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(close(got[k], expected[k], rel) for k in got)
    return got == expected


def check(scenario: Callable[[Any], Any], expected: Any, rel: float = 1e-5) -> None:
    """Run `scenario` under ferrotrain (and Lightning when cross-checking); compare with `expected`."""
    for L in libraries():
        if is_lightning(L):
            with warnings.catch_warnings():
                # Lightning's advice (num_workers, log intervals) is not what these tests check.
                warnings.simplefilter("ignore")
                got = scenario(L)
        else:
            got = scenario(L)
        assert close(got, expected, rel), f"{L.__name__}: {got!r} != {expected!r}"


def dataset(n: int, features: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader(n: int, batch_size: int = 2, seed: int = 0) -> DataLoader:
    return DataLoader(dataset(n, seed=seed), batch_size=batch_size)


class Unsized:
    """An iterable of batches with no `__len__` (a generator-like source)."""

    def __init__(self, n: int, batch_size: int = 2) -> None:
        self.batches = list(loader(n, batch_size))

    def __iter__(self) -> Any:
        return iter(list(self.batches))


def round_floats(obj: Any, digits: int = 5) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return round(float(obj), digits)
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(round_floats(v, digits) for v in obj)
    return obj


Obs = Dict[str, Any]


def model_class(L: Any) -> type:
    """A linear regression module that records, per training and validation batch, what the
    loop looks like from inside (`self.seen`)."""
    import torch.nn.functional as F

    class Model(L.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)
            self.lr = lr
            self.seen: List[Any] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.seen.append(("train", self.current_epoch, batch_idx, self.global_step))
            x, y = batch
            return F.mse_loss(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            kind = "sanity" if self.trainer.sanity_checking else "val"
            self.seen.append((kind, self.current_epoch, batch_idx, self.global_step))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    return Model


def memory_logger(L: Any) -> Any:
    """A logger that keeps every `log_metrics` call as `(step, {name: rounded value})`."""
    if is_lightning(L):
        from lightning.pytorch.loggers import Logger
    else:
        from ferrotrain.loggers import Logger

    class MemoryLogger(Logger):
        def __init__(self) -> None:
            super().__init__()
            self.calls: List[Any] = []

        @property
        def name(self) -> str:
            return "memory"

        @property
        def version(self) -> int:
            return 0

        def log_metrics(self, metrics: Dict[str, float], step: Any = None) -> None:
            self.calls.append((step, round_floats(dict(sorted(metrics.items())))))

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

    return MemoryLogger()


def tiny_net() -> torch.nn.Module:
    """The small regressor the parity tests train under both libraries (seeded)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def state_of(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A detached copy of `module`'s state dict, to compare final weights."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
