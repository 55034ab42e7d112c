"""`StochasticWeightAveraging` (and Lightning's `WeightAveraging` / `EMAWeightAveraging`): the
learning rates SWALR sets, the averaged weights loaded at the end, the BatchNorm epoch, and the
argument checks, pinned to Lightning 2.x through `lightning_ref.check`."""

from __future__ import annotations

from typing import Any, List

import pytest
import torch
import torch.nn.functional as F

from tests.lightning_ref import QUIET, check, is_lightning, loader, misconfiguration, round_floats


def _callbacks(L: Any) -> Any:
    if is_lightning(L):
        import lightning.pytorch.callbacks as cbs
    else:
        import ferrotrain.callbacks as cbs
    return cbs


def _model(L: Any, batch_norm: bool = False, scheduler: bool = False) -> Any:
    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            layers: List[Any] = [torch.nn.Linear(4, 6)]
            if batch_norm:
                layers.append(torch.nn.BatchNorm1d(6))
            layers += [torch.nn.Tanh(), torch.nn.Linear(6, 1)]
            self.net = torch.nn.Sequential(*layers)
            self.seen: List[Any] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def on_train_epoch_start(self) -> None:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.seen.append(("epoch", self.current_epoch, self.trainer.max_epochs, round(lr, 6)))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.seen.append(("step", self.current_epoch, batch_idx, self.global_step))
            x, y = batch
            return F.mse_loss(self(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            if scheduler:
                return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]
            return opt

    return Model()


def _weights(model: Any) -> Any:
    return [round(float(v.float().sum()), 5) for v in model.state_dict().values()]


def test_swa_without_batch_norm():
    def scenario(L: Any) -> Any:
        cb = _callbacks(L).StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=2)
        model = _model(L, scheduler=True)
        t = L.Trainer(**{**QUIET, "max_epochs": 4, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=4))
        return ([s for s in model.seen if s[0] == "epoch"], _weights(model), int(cb.n_averaged),
                t.current_epoch, t.global_step, t.max_epochs, type(t.lr_scheduler_configs[0].scheduler).__name__)

    # StepLR is swapped for SWALR at epoch 1 (swa_epoch_start=2 is 1-based); the average of
    # epochs 1..3 is loaded at the end.
    check(scenario, ([("epoch", 0, 4, 0.1), ("epoch", 1, 4, 0.05), ("epoch", 2, 4, 0.05), ("epoch", 3, 4, 0.05)],
                     [-1.50163, -0.55044, -0.90172, -0.15561], 3, 4, 8, 4, "SWALR"))


def test_swa_with_batch_norm_runs_an_extra_forward_epoch():
    def scenario(L: Any) -> Any:
        cb = _callbacks(L).StochasticWeightAveraging(swa_lrs=[0.05], swa_epoch_start=0.5, annealing_strategy="linear")
        model = _model(L, batch_norm=True)
        t = L.Trainer(**{**QUIET, "max_epochs": 4, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=4))
        bn = model.net[1]
        return (model.seen, _weights(model), int(cb.n_averaged), t.current_epoch, t.global_step, t.max_epochs,
                bn.momentum, int(bn.num_batches_tracked))

    # max_epochs reads 5 during the fit; epoch 4 runs training_step with no backward, and its
    # last batch still calls the optimizer (global_step 8 -> 9), as in Lightning. BatchNorm's
    # statistics come from that epoch's 2 batches; its momentum is restored afterwards.
    steps = [("step", e, b, 2 * e + b) for e in range(4) for b in range(2)]
    seen = []
    for e, lr in enumerate([0.1, 0.1, 0.095, 0.09]):
        seen += [("epoch", e, 5, lr), *steps[2 * e:2 * e + 2]]
    seen += [("epoch", 4, 5, 0.085), ("step", 4, 0, 8), ("step", 4, 1, 8)]
    check(scenario, (seen, [-1.2811, -0.48013, 6.00929, -0.10807, -1.12756, 2.31079, 2.0, -0.21372, 0.07445],
                     3, 5, 9, 4, 0.1, 2))


def test_swa_custom_avg_fn():
    def scenario(L: Any) -> Any:
        def ema(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return 0.5 * avg + 0.5 * new

        cb = _callbacks(L).StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1, avg_fn=ema)
        model = _model(L)
        t = L.Trainer(**{**QUIET, "max_epochs": 3, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=4))
        return _weights(model)

    check(scenario, [-1.31568, -0.53682, -0.92733, -0.16538])


@pytest.mark.parametrize("kwargs, message", [
    (dict(swa_lrs=0.1, swa_epoch_start=0), "swa_epoch_start should be a >0 integer or a float between 0 and 1."),
    (dict(swa_lrs=0.1, swa_epoch_start=1.5), "swa_epoch_start should be a >0 integer or a float between 0 and 1."),
    (dict(swa_lrs=-0.1), "The `swa_lrs` should a positive float, or a list of positive floats"),
    (dict(swa_lrs=[0.1, 1]), "The `swa_lrs` should a positive float, or a list of positive floats"),
    (dict(swa_lrs=0.1, avg_fn=3), "The `avg_fn` should be callable."),
    (dict(swa_lrs=0.1, device=3), "device is expected to be a torch.device or a str. Found 3"),
])
def test_swa_argument_errors(kwargs, message):
    def scenario(L: Any) -> Any:
        with pytest.raises(misconfiguration(L)) as err:
            _callbacks(L).StochasticWeightAveraging(**kwargs)
        return str(err.value)

    check(scenario, message)


def _read_checkpoint(L: Any, path: str) -> Any:
    if is_lightning(L):
        return torch.load(path, weights_only=False)
    from ferrotrain.checkpoint import load

    return load(path)


def _val_model(L: Any) -> Any:
    base = type(_model(L, batch_norm=True))

    class WithVal(base):  # type: ignore[misc,valid-type]
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.mse_loss(self(x), y))

    return WithVal()


@pytest.mark.filterwarnings("ignore:.*current_model_state|.*WeightAveraging")
def test_ema_weight_averaging(tmp_path):
    def scenario(L: Any) -> Any:
        cbs = _callbacks(L)
        cb = cbs.EMAWeightAveraging(decay=0.5, update_every_n_steps=2, update_starting_at_step=1)
        model = _val_model(L)
        t = L.Trainer(**{**QUIET, "max_epochs": 2, "callbacks": [cb], "num_sanity_val_steps": 0})
        t.fit(model, loader(12, batch_size=4), loader(4, batch_size=4))
        path = str(tmp_path / f"{L.__name__}.ckpt")
        t.save_checkpoint(path)
        ckpt = _read_checkpoint(L, path)
        return (_weights(model), round_floats(t.callback_metrics["val_loss"]), cb.state_dict(),
                [round(float(v.float().sum()), 5) for v in ckpt["state_dict"].values()],
                [round(float(v.float().sum()), 5) for v in ckpt["current_model_state"].values()],
                sorted(ckpt["averaging_state"]), int(ckpt["averaging_state"]["n_averaged"]))

    # Saved after the fit, so the averaged weights are already the module's: both states agree.
    weights = [-1.33322, -0.48013, 5.99268, -0.08881, -0.23869, 4.67199, 4.0, -0.42503, -0.04431]
    check(scenario, (weights, 1.29871, {"latest_update_step": 5}, weights, weights, ["n_averaged"], 2))


def test_weight_averaging_every_step_default():
    def scenario(L: Any) -> Any:
        cb = _callbacks(L).WeightAveraging()
        model = _model(L)
        t = L.Trainer(**{**QUIET, "max_epochs": 2, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=4))
        return _weights(model), int(cb._average_model.n_averaged)

    check(scenario, ([-1.3834, -0.51268, -0.87022, -0.22073], 4))
