"""`Tuner.lr_find` / `Tuner.scale_batch_size` and the `LearningRateFinder` / `BatchSizeFinder`
callbacks: the curve and suggestion of the range test, the batch size found under a simulated
memory limit, the attribute each sets, and that the model, optimizer, progress and RNG come out of
the tuning as Lightning leaves them (weights restored, no temporary checkpoint left), pinned to
Lightning 2.x through `lightning_ref.check`."""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any, List

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tests.lightning_ref import QUIET, check, libraries, dataset, is_lightning, misconfiguration, round_floats, state_of


def _tuner(L: Any) -> Any:
    return importlib.import_module("lightning.pytorch.tuner" if is_lightning(L) else "ferrotrain.tuner").Tuner


def _callbacks(L: Any) -> Any:
    return importlib.import_module("lightning.pytorch.callbacks" if is_lightning(L) else "ferrotrain.callbacks")


def _regressor(L: Any, **hparams: Any) -> Any:
    """A small regressor whose learning rate is `lr` (or the hparams given)."""

    class Regressor(L.LightningModule):
        def __init__(self, lr: float = 0.1, **kwargs: Any) -> None:
            super().__init__()
            if kwargs:
                self.save_hyperparameters(kwargs)
            else:
                self.lr = lr
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
            self.epochs: List[Any] = []

        def on_train_epoch_start(self) -> None:
            self.epochs.append((self.current_epoch, self.global_step))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            lr = self.hparams.get("learning_rate", getattr(self, "lr", 0.1))
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    return Regressor(**hparams)


def _train_loader() -> DataLoader:
    return DataLoader(dataset(160), batch_size=4, shuffle=True)


def _val_loader() -> DataLoader:
    return DataLoader(dataset(8, seed=1), batch_size=4)


# The range test of `test_lr_find_curve_and_suggestion`, measured under Lightning 2.6: the rates
# tried (first five), the number of points, the smoothed losses, the suggestion.
LR_HEAD = [1e-08, 2.51189e-08, 3.98107e-08, 6.30957e-08, 1e-07]
LOSSES = [
    1.3206, 1.9796, 1.8174, 1.8385, 1.7108, 2.3236, 2.1877, 3.0461, 3.0333, 3.3922, 3.2499, 3.5733, 3.6352,
    3.6387, 4.2097, 4.2629, 4.225, 4.5357, 4.6392, 4.6456, 4.8324, 4.8421, 4.7298, 4.6442, 4.4552, 4.3197,
    4.2021, 4.2616, 4.2871, 4.3096, 4.221, 4.1219, 3.9774, 3.8616, 3.8277, 3.883, 5.3847, 8.801, 17.1966,
    137.3931,
]
SUGGESTED_LR = 0.0003981071705534969


def _lr_find_scenario(tmp_path: Any, **kwargs: Any) -> Any:
    def scenario(L: Any) -> Any:
        model = _regressor(L, **kwargs)
        before = state_of(model)
        trainer = L.Trainer(**{**QUIET, "max_epochs": 2, "default_root_dir": str(tmp_path)})
        torch.manual_seed(1)
        finder = _tuner(L)(trainer).lr_find(model, _train_loader(), _val_loader(), num_training=40,
                                            early_stop_threshold=None)
        restored = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        return (
            round_floats(finder.results["lr"][:5], 13), len(finder.results["lr"]),
            round_floats(finder.results["loss"], 4), finder.suggestion(),
            getattr(model, "lr", None), dict(model.hparams),
            restored, trainer.global_step, trainer.current_epoch, os.listdir(tmp_path),
            model.epochs,  # the test's own epoch ran
            round(float(torch.rand(1)), 6),  # the test's batches ran inside isolate_rng
            [type(cb).__name__ for cb in trainer.callbacks],
        )

    return scenario


def test_lr_find_curve_suggestion_and_restore(tmp_path):
    check(_lr_find_scenario(tmp_path), (
        LR_HEAD, 40, LOSSES, SUGGESTED_LR, SUGGESTED_LR, {}, True, 0, 0, [], [(0, 0)], 0.757632, [],
    ))


def test_lr_find_updates_hparams(tmp_path):
    # `learning_rate` saved with save_hyperparameters: found there and updated there.
    check(_lr_find_scenario(tmp_path, learning_rate=0.1), (
        LR_HEAD, 40, LOSSES, SUGGESTED_LR, None, {"learning_rate": SUGGESTED_LR}, True, 0, 0, [], [(0, 0)],
        0.757632, [],
    ))


def test_lr_find_attribute_errors():
    def scenario(L: Any) -> Any:
        model = _regressor(L)
        del model.lr
        errors = []
        # A fresh Trainer each time: after a failed `lr_find` Lightning leaves its callback in
        # `trainer.callbacks` (ferrotrain removes it), so a second call would fail differently.
        for kwargs in ({}, {"attr_name": "my_lr"}):
            with pytest.raises(AttributeError) as err:
                _tuner(L)(L.Trainer(**QUIET, max_epochs=1)).lr_find(model, _train_loader(), **kwargs)
            errors.append(str(err.value))
        for kwargs, exc in (({"method": "test"}, misconfiguration(L)), ({"dataloaders": _val_loader()}, misconfiguration(L)),
                            ({"mode": "cubic"}, ValueError)):
            with pytest.raises(exc) as err:
                _tuner(L)(L.Trainer(**QUIET, max_epochs=1)).lr_find(model, _train_loader(), **kwargs)
            errors.append(str(err.value))
        return errors

    check(scenario, [
        "When using the learning rate finder, either `model` or `model.hparams` should have one of these fields: "
        "('lr', 'learning_rate'). If your model has a different name for the learning rate, set it with "
        "`.lr_find(attr_name=...)`.",
        "The attribute name for the learning rate was set to my_lr, but could not find this as a field in `model` "
        "or `model.hparams`.",
        "method='fit' is the only valid configuration to run lr finder.",
        "In tuner with method='fit', `dataloaders` argument should be None, please consider setting "
        "`train_dataloaders` and `val_dataloaders` instead.",
        "`mode` should be either of ('linear', 'exponential')",
    ])


def test_learning_rate_finder_callback_then_trains(tmp_path):
    """As a callback, the test runs when the fit starts; the fit then trains from the original
    weights with the suggested rate (linear mode, stopped early on divergence)."""

    def scenario(L: Any) -> Any:
        cb = _callbacks(L).LearningRateFinder(min_lr=1e-4, max_lr=10.0, num_training_steps=30, mode="linear")
        model = _regressor(L)
        trainer = L.Trainer(**{**QUIET, "max_epochs": 2, "callbacks": [cb], "default_root_dir": str(tmp_path)})
        torch.manual_seed(1)
        trainer.fit(model, _train_loader(), _val_loader())
        finder = cb.optimal_lr
        return (
            len(finder.results["loss"]), round_floats(finder.suggestion(), 8), round_floats(model.lr, 8),
            round_floats([g["lr"] for g in trainer.optimizers[0].param_groups], 8),
            model.epochs, trainer.global_step, os.listdir(tmp_path),
        ), [round(float(v.sum()), 5) for v in model.state_dict().values()]

    check(lambda L: scenario(L)[0], CALLBACK_EXPECTED)
    # 80 steps at lr=0.1 after a diverging test amplify each CPU's last-digit rounding (a bias
    # sum moves by 2x between machines, under Lightning too), so the trained weights are
    # compared with Lightning's run on the same machine, when Lightning is installed.
    if len(libraries()) > 1:
        ours = scenario(libraries()[0])[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's own deprecation warnings
            theirs = scenario(libraries()[1])[1]
        assert ours == theirs


# Measured under Lightning 2.6: the test stopped after 4 steps (diverging), too few points for a
# suggestion, so the fit trains with the module's own lr from the original weights.
CALLBACK_EXPECTED = (4, None, 0.1, [0.1], [(0, 0), (0, 0), (1, 40)], 80, [])


def test_lr_find_skipped_with_fast_dev_run():
    def scenario(L: Any) -> Any:
        trainer = L.Trainer(**{**QUIET, "fast_dev_run": True})
        with pytest.warns(UserWarning, match="Skipping learning rate finder since `fast_dev_run` is enabled."):
            return _tuner(L)(trainer).lr_find(_regressor(L), _train_loader())

    check(scenario, None)


def test_lr_finder_plot_needs_matplotlib_or_draws(tmp_path):
    import importlib.util

    from ferrotrain.tuner.lr_finder import _LRFinder

    finder = _LRFinder("exponential", 1e-8, 1.0, 40)
    finder.results = {"lr": [1e-8 * 10 ** (i / 5) for i in range(40)], "loss": [1.0 / (i + 1) for i in range(40)]}
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(ferrotrain_errors().MisconfigurationException, match="you must have Matplotlib installed"):
            finder.plot()
    else:
        import matplotlib

        matplotlib.use("Agg")
        fig = finder.plot(suggest=True)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "Learning rate" and ax.get_ylabel() == "Loss"
        assert len(ax.lines) == 2  # the curve and the suggested point


def ferrotrain_errors() -> Any:
    import ferrotrain.errors

    return ferrotrain.errors


# ---------------------------------------------------------------------------- batch size
class _OOM:
    """How the simulated memory limit fails: torch's CUDA error, or a plain RuntimeError with
    torch's message (what Lightning's `is_oom_error` recognises)."""

    cuda = staticmethod(lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    runtime = staticmethod(lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))


def _sized_model(L: Any, limit: int, oom: Any = _OOM.cuda, in_hparams: bool = False) -> Any:
    """A module whose loaders read `batch_size` and whose step "runs out of memory" above `limit`."""

    class Sized(L.LightningModule):
        def __init__(self, batch_size: int = 2) -> None:
            super().__init__()
            if in_hparams:
                self.save_hyperparameters()
            else:
                self.batch_size = batch_size
            torch.manual_seed(0)
            self.net = torch.nn.Linear(4, 1)
            self.sizes: List[Any] = []

        def _bs(self) -> int:
            return self.hparams.batch_size if in_hparams else self.batch_size

        def train_dataloader(self) -> DataLoader:
            return DataLoader(dataset(64), batch_size=self._bs(), shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(dataset(16, seed=1), batch_size=self._bs())

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            self.sizes.append(x.shape[0])
            if x.shape[0] > limit:
                raise oom()
            return F.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.sizes.append(("val", batch[0].shape[0]))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Sized()


def _scale_scenario(tmp_path: Any, mode: str, limit: int = 20, oom: Any = _OOM.cuda, in_hparams: bool = False,
                    **kwargs: Any) -> Any:
    def scenario(L: Any) -> Any:
        model = _sized_model(L, limit, oom, in_hparams)
        before = state_of(model)
        trainer = L.Trainer(**{**QUIET, "max_epochs": 1, "default_root_dir": str(tmp_path)})
        torch.manual_seed(1)
        found = _tuner(L)(trainer).scale_batch_size(model, mode=mode, **kwargs)
        restored = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        tried = list(model.sizes)
        model.sizes.clear()
        rng = round(float(torch.rand(1)), 6)  # the trials drew the loader seeds Lightning draws
        trainer.fit(model)
        return (found, model._bs(), tried, restored, os.listdir(tmp_path), rng, model.sizes, trainer.global_step)

    return scenario


def test_scale_batch_size_power(tmp_path):
    check(_scale_scenario(tmp_path, "power"), (
        16, 16, [2, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32], True, [], 0.339776,
        [("val", 16), 16, 16, 16, 16, ("val", 16)], 4,
    ))


def test_scale_batch_size_binsearch_with_margin(tmp_path):
    check(_scale_scenario(tmp_path, "binsearch", oom=_OOM.runtime, in_hparams=True), (
        19, 19, [2, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 24, 20, 20, 20, 22, 21], True, [], 0.990609,
        [("val", 16), 19, 19, 19, 7, ("val", 16)], 4,
    ))


def test_scale_batch_size_stops_at_dataset_size_and_max_val(tmp_path):
    check(_scale_scenario(tmp_path, "power", limit=1000, init_val=8), SCALE_DATASET_EXPECTED)
    check(_scale_scenario(tmp_path, "binsearch", limit=1000, max_val=12), SCALE_MAX_VAL_EXPECTED)


# Measured under Lightning 2.6. Growing from init_val=8: the first trial still reads the loader
# built with the module's original size (2), as Lightning's does; 64 covers the dataset.
SCALE_DATASET_EXPECTED = (
    64, 64, [2, 2, 2, 16, 16, 16, 32, 32, ("val", 16), 64, ("val", 16)], True, [], 0.416192,
    [("val", 16), 64, ("val", 16)], 1,
)
# max_val=12 caps 16 at 12, which stops the search before trying it; the margin gives 11.
SCALE_MAX_VAL_EXPECTED = (
    11, 11, [2, 2, 2, 4, 4, 4, 8, 8, 8], True, [], 0.572472,
    [("val", 11), ("val", 5), 11, 11, 11, 11, 11, 9, ("val", 11), ("val", 5)], 6,
)


def test_batch_size_finder_callback_and_errors(tmp_path):
    def scenario(L: Any) -> Any:
        cbs = _callbacks(L)
        model = _sized_model(L, limit=10)
        cb = cbs.BatchSizeFinder(steps_per_trial=1)
        trainer = L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [cb], "default_root_dir": str(tmp_path)})
        torch.manual_seed(1)
        trainer.fit(model)
        out = [cb.optimal_batch_size, model.batch_size, model.sizes, os.listdir(tmp_path)]
        errors = []
        with pytest.raises(misconfiguration(L)) as err:
            L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [cbs.BatchSizeFinder()]}).fit(_sized_model(L, 10), _train_loader())
        errors.append(str(err.value))
        with pytest.raises(misconfiguration(L)) as err:
            L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [cbs.BatchSizeFinder(batch_arg_name="bs")]}).fit(_sized_model(L, 10))
        errors.append(str(err.value))
        with pytest.raises(ValueError) as err:
            cbs.BatchSizeFinder(mode="linear")
        errors.append(str(err.value))
        with pytest.raises(ValueError) as err:
            _tuner(L)(L.Trainer(**QUIET)).scale_batch_size(_sized_model(L, 10), method="tune")
        errors.append(str(err.value))
        with pytest.raises(ValueError) as err:
            _tuner(L)(L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [cbs.BatchSizeFinder()]})).scale_batch_size(_sized_model(L, 10))
        errors.append(str(err.value))
        return out, errors

    check(scenario, (CALLBACK_BS_EXPECTED, [
        "The Batch size finder cannot be used with dataloaders passed directly to `.fit()`. Please disable the "
        "feature or incorporate the dataloader into your LightningModule or LightningDataModule.",
        "Field bs not found in `model`, `datamodule`, nor their `hparams` attributes.",
        "`mode` should be either of ('power', 'binsearch')",
        "method 'tune' is invalid. Should be one of ('fit', 'validate', 'test', 'predict').",
        "Trainer is already configured with a `BatchSizeFinder` callback.Please remove it if you want to use the Tuner.",
    ]))


CALLBACK_BS_EXPECTED = [
    8, 8, [2, 4, 8, 16, ("val", 8), ("val", 8), 8, 8, 8, 8, 8, 8, 8, 8, ("val", 8), ("val", 8)], [],
]


def test_other_runtime_errors_propagate(tmp_path):
    def scenario(L: Any) -> Any:
        model = _sized_model(L, limit=4, oom=lambda: RuntimeError("shape mismatch"))
        trainer = L.Trainer(**{**QUIET, "max_epochs": 1, "default_root_dir": str(tmp_path)})
        with pytest.raises(RuntimeError, match="shape mismatch"):
            _tuner(L)(trainer).scale_batch_size(model)
        return os.listdir(tmp_path), model.batch_size  # no temporary checkpoint left; last size tried

    check(scenario, ([], 8))


def test_out_of_range_margin_and_windows_are_configuration_errors() -> None:
    # Lightning asserts these; ferrotrain raises its usual ValueError naming the parameter.
    from ferrotrain.callbacks import BatchSizeFinder
    from ferrotrain.callbacks.throughput_monitor import Throughput
    from ferrotrain.errors import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="margin"):
        BatchSizeFinder(margin=1.0)
    from ferrotrain import Trainer
    from ferrotrain.tuner import Tuner
    from tests.conftest import BoringModel

    with pytest.raises(MisconfigurationException, match=r"margin=-0\.1"):
        Tuner(Trainer(logger=False, enable_progress_bar=False)).scale_batch_size(BoringModel(), margin=-0.1)
    with pytest.raises(MisconfigurationException, match="window_size"):
        Throughput(window_size=1)
    with pytest.raises(MisconfigurationException, match="world_size"):
        Throughput(world_size=0)
