"""Final weights of a fit equal a hand-written PyTorch loop over the same batches: plain SGD, SGD
with momentum and a StepLR stepping per epoch or per step, Adam, gradient accumulation with a
partial last window, and manual optimization with two optimizers.

With `FERROTRAIN_CROSSCHECK=1` (and `lightning` installed) Lightning's fit is held to the same
hand loop, which shows the hand loop is Lightning's arithmetic."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.lightning_ref import libraries, is_lightning, loader, trainer, state_of, tiny_net

EPOCHS = 2


# The shared parity helpers, under the short names these tests use.
_net, _state = tiny_net, state_of


# --- automatic optimization ---------------------------------------------------------------------

Factory = Callable[[torch.nn.Module], Any]  # params -> (optimizer, scheduler or None)


def _sgd(net):
    return torch.optim.SGD(net.parameters(), lr=0.05), None


def _sgd_momentum_step_lr_epoch(net):
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


def _sgd_momentum_step_lr_step(net):
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)


def _adam(net):
    return torch.optim.Adam(net.parameters(), lr=0.01), None


def fit_automatic(L: Any, make_opt: Factory, interval: str = "epoch", accumulate: int = 1,
                  batches: int = 11) -> Dict[str, Any]:
    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt, sched = make_opt(self.net)
            if sched is None:
                return opt
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    m = M()
    t = trainer(L, max_epochs=EPOCHS, accumulate_grad_batches=accumulate)
    with warnings.catch_warnings():
        if is_lightning(L):
            warnings.simplefilter("ignore")
        t.fit(m, loader(batches, batch_size=3))
    return dict(state=_state(m.net), lr=t.optimizers[0].param_groups[0]["lr"], step=t.global_step)


def hand_automatic(make_opt: Factory, interval: str = "epoch", accumulate: int = 1,
                   batches: int = 11) -> Dict[str, Any]:
    net = _net()
    opt, sched = make_opt(net)
    data = list(loader(batches, batch_size=3))
    steps = 0
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(data):
            # Lightning divides by the window size, also in the partial last window.
            loss = F.mse_loss(net(x), y) / accumulate
            if i % accumulate == 0:
                opt.zero_grad()
            loss.backward()
            if (i + 1) % accumulate == 0 or i == len(data) - 1:
                opt.step()
                steps += 1
                if sched is not None and interval == "step":
                    sched.step()
        if sched is not None and interval == "epoch":
            sched.step()
    return dict(state=_state(net), lr=opt.param_groups[0]["lr"], step=steps)


def _assert_same(got: Dict[str, Any], want: Dict[str, Any]) -> None:
    # Same ops in the same order on CPU: the weights are bit-for-bit equal, so no tolerance.
    assert_close(got["state"], want["state"], rtol=0, atol=0)
    assert got["lr"] == pytest.approx(want["lr"], rel=1e-12)
    assert got["step"] == want["step"]


@pytest.mark.parametrize(
    "make_opt, interval, accumulate, steps, lr",
    [
        (_sgd, "epoch", 1, 8, 0.05),
        (_sgd_momentum_step_lr_epoch, "epoch", 1, 8, 0.0125),
        (_sgd_momentum_step_lr_step, "step", 1, 8, 0.05 * 0.7 ** 4),
        (_adam, "epoch", 1, 8, 0.01),
        (_sgd, "epoch", 3, 6, 0.05),
        (_sgd_momentum_step_lr_step, "step", 3, 6, 0.05 * 0.7 ** 3),
    ],
    ids=["sgd", "momentum-steplr-epoch", "momentum-steplr-step", "adam", "sgd-accumulate3",
         "momentum-steplr-step-accumulate3"],
)
def test_automatic_optimization_matches_hand_loop(make_opt, interval, accumulate, steps, lr):
    want = hand_automatic(make_opt, interval, accumulate, batches=11 if accumulate == 1 else 24)
    assert (want["step"], want["lr"]) == (steps, pytest.approx(lr, rel=1e-12))
    for L in libraries():
        got = fit_automatic(L, make_opt, interval, accumulate, batches=11 if accumulate == 1 else 24)
        _assert_same(got, want)


def test_weights_change():
    # Guards the parity tests against a loop that never steps (the start equals the end).
    assert not torch.equal(hand_automatic(_sgd)["state"]["0.weight"], _state(_net())["0.weight"])


# --- manual optimization ------------------------------------------------------------------------


def _manual_parts():
    torch.manual_seed(1)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(3, 1)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.5)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    return a, b, opt_a, opt_b, sched


def fit_manual(L: Any) -> Dict[str, Any]:
    seen_steps: List[int] = []

    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.a, self.b, self._opt_a, self._opt_b, self._sched = _manual_parts()

        def training_step(self, batch, batch_idx):
            seen_steps.append(self.global_step)
            opt_a, opt_b = self.optimizers()
            x, y = batch
            loss = F.mse_loss(self.b(torch.tanh(self.a(x))), y)
            opt_a.zero_grad()
            opt_b.zero_grad()
            self.manual_backward(loss)
            opt_a.step()
            if batch_idx % 2 == 0:
                opt_b.step()
            return loss

        def configure_optimizers(self):
            # The scheduler is not stepped by the Trainer in manual optimization.
            return [self._opt_a, self._opt_b], [self._sched]

    m = M()
    t = trainer(L, max_epochs=EPOCHS)
    with warnings.catch_warnings():
        if is_lightning(L):
            warnings.simplefilter("ignore")
        t.fit(m, loader(10, batch_size=3))
    state = {**{f"a.{k}": v for k, v in _state(m.a).items()}, **{f"b.{k}": v for k, v in _state(m.b).items()}}
    return dict(state=state, lr=t.optimizers[0].param_groups[0]["lr"], step=t.global_step, seen=seen_steps)


def hand_manual() -> Dict[str, Any]:
    a, b, opt_a, opt_b, _ = _manual_parts()
    data = list(loader(10, batch_size=3))
    steps = 0
    seen = []
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(data):
            seen.append(steps)
            loss = F.mse_loss(b(torch.tanh(a(x))), y)
            opt_a.zero_grad()
            opt_b.zero_grad()
            loss.backward()
            opt_a.step()
            steps += 1
            if i % 2 == 0:
                opt_b.step()
                steps += 1
    state = {**{f"a.{k}": v for k, v in _state(a).items()}, **{f"b.{k}": v for k, v in _state(b).items()}}
    return dict(state=state, lr=opt_a.param_groups[0]["lr"], step=steps, seen=seen)


def test_manual_optimization_two_optimizers_matches_hand_loop():
    want = hand_manual()
    # global_step counts every optimizer step: 4 batches an epoch, opt_b on batches 0 and 2.
    assert want["step"] == 12 and want["seen"] == [0, 2, 3, 5, 6, 8, 9, 11]
    assert want["lr"] == 0.1
    for L in libraries():
        got = fit_manual(L)
        assert got["seen"] == want["seen"]
        _assert_same(got, want)


@pytest.mark.parametrize("L", libraries(), ids=lambda L: L.__name__)
def test_sanity_check_leaves_the_training_shuffle_alone(L):
    # Every evaluation loader's iterator draws a seed from torch's global generator; Lightning
    # runs the sanity check inside `isolate_rng`, so a fit with a shuffled train loader trains on
    # the same batches, in the same order, with or without the sanity check.
    def fit(sanity_steps: int) -> Dict[str, Any]:
        torch.manual_seed(5)
        net = _net()

        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def training_step(self, batch, batch_idx):
                return F.mse_loss(self.net(batch[0]), batch[1])

            def validation_step(self, batch, batch_idx):
                self.log("v", F.mse_loss(self.net(batch[0]), batch[1]))

            def configure_optimizers(self):
                return torch.optim.SGD(self.net.parameters(), lr=0.1)

        train = torch.utils.data.DataLoader(loader(12).dataset, batch_size=3, shuffle=True)
        t = trainer(L, max_epochs=2, num_sanity_val_steps=sanity_steps, limit_val_batches=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.fit(M(), train, loader(4))
        return _state(net)

    with_check, without = fit(2), fit(0)
    assert_close(with_check, without, rtol=0, atol=0)
    torch.manual_seed(5)
    assert not torch.equal(with_check["0.weight"], _net().state_dict()["0.weight"])
