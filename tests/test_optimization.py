"""Schedulers, optimizers that need a closure, manual optimization and gradient clipping, held
to Lightning 2.x: final weights equal a hand-written PyTorch loop, and what a user observes
(learning rates, hook calls, logged gradient norms, error messages) equals what Lightning shows.

Values with no hand-loop equivalent (ReduceLROnPlateau's learning rates, `lr_scheduler_step`
calls) were measured under Lightning and are pinned as literals; with `FERROTRAIN_CROSSCHECK=1`
every scenario also runs under Lightning."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.testing import assert_close

from tests.lightning_ref import check, is_lightning, libraries, loader, memory_logger, misconfiguration, trainer, state_of, tiny_net

EPOCHS = 2


# The shared parity helpers, under the short names these tests use.
_net, _state = tiny_net, state_of


def _fit(L: Any, model: Any, train: Any, val: Any = None, **kwargs: Any) -> Any:
    t = trainer(L, **kwargs)
    with warnings.catch_warnings():
        if is_lightning(L):
            warnings.simplefilter("ignore")
        t.fit(model, train, val)
    return t


def _grad_norm(L: Any) -> Any:
    if is_lightning(L):
        from lightning.pytorch.utilities import grad_norm
    else:
        from ferrotrain.utilities import grad_norm
    return grad_norm


# --- schedulers ---------------------------------------------------------------------------------

VAL_LOSSES = [1.0, 1.0, 0.5, 0.6, 0.7]  # one per epoch: no improvement at epochs 1, 3 and 4


def plateau_model(L: Any, monitor: str = "val_loss", strict: bool = True, interval: str = "epoch",
                  frequency: int = 1, override: bool = False) -> Any:
    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()
            self.lrs: List[float] = []
            self.calls: List[Any] = []

        def on_train_epoch_start(self) -> None:
            self.lrs.append(round(self.trainer.optimizers[0].param_groups[0]["lr"], 8))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self.net(x), y)
            # A train metric that stops improving after the first steps.
            self.log("train_metric", float(max(3 - self.global_step, 1)), on_step=True, on_epoch=False)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", VAL_LOSSES[self.current_epoch])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor, "strict": strict,
                                                        "interval": interval, "frequency": frequency}}

        if override:
            def lr_scheduler_step(self, scheduler, metric):
                self.calls.append((self.current_epoch, self.global_step, type(scheduler).__name__,
                                   None if metric is None else round(float(metric), 4)))
                super().lr_scheduler_step(scheduler, metric)

    return M()


def test_reduce_lr_on_plateau_follows_the_monitored_val_metric():
    def scenario(L):
        m = plateau_model(L)
        t = _fit(L, m, loader(8, 4), loader(4, 4), max_epochs=5)
        return m.lrs, round(t.optimizers[0].param_groups[0]["lr"], 8)

    check(scenario, ([0.1, 0.1, 0.05, 0.05, 0.025], 0.0125))


def test_reduce_lr_on_plateau_per_step_with_frequency():
    def scenario(L):
        m = plateau_model(L, monitor="train_metric", interval="step", frequency=2, override=True)
        _fit(L, m, loader(8, 2), loader(4, 4), max_epochs=2)
        return m.calls

    check(scenario, [(0, 2, "ReduceLROnPlateau", 2.0), (0, 4, "ReduceLROnPlateau", 1.0),
                     (1, 6, "ReduceLROnPlateau", 1.0), (1, 8, "ReduceLROnPlateau", 1.0)])


def test_reduce_lr_on_plateau_missing_metric_names_it_and_the_available_ones():
    for L in libraries():
        with pytest.raises(misconfiguration(L)) as info:
            _fit(L, plateau_model(L, monitor="val_acc"), loader(8, 4), loader(4, 4), max_epochs=2)
        message = str(info.value)
        for word in ("ReduceLROnPlateau", "val_acc", "not available", "train_metric", "val_loss"):
            assert word in message, (L.__name__, message)


def test_reduce_lr_on_plateau_missing_metric_with_strict_false_warns_and_skips():
    for L in libraries():
        m = plateau_model(L, monitor="val_acc", strict=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = trainer(L, max_epochs=2)
            t.fit(m, loader(8, 4), loader(4, 4))
        assert any(w.category is RuntimeWarning and "val_acc" in str(w.message) for w in caught), L.__name__
        assert m.lrs == [0.1, 0.1] and t.optimizers[0].param_groups[0]["lr"] == 0.1


def test_several_schedulers_with_intervals_and_frequencies():
    """A per-step StepLR every 3 optimizer steps and a per-epoch ExponentialLR every 2 epochs, on
    one optimizer; the learning rate each batch sees."""

    def scenario(L):
        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = _net()
                self.lrs: List[float] = []

            def training_step(self, batch, batch_idx):
                self.lrs.append(round(self.trainer.optimizers[0].param_groups[0]["lr"], 8))
                x, y = batch
                return F.mse_loss(self.net(x), y)

            def configure_optimizers(self):
                opt = torch.optim.SGD(self.parameters(), lr=0.1)
                step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
                epoch = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1)
                return [opt], [{"scheduler": step, "interval": "step", "frequency": 3},
                               {"scheduler": epoch, "interval": "epoch", "frequency": 2}]

        m = M()
        _fit(L, m, loader(8, 2), max_epochs=4)
        return m.lrs

    # The step scheduler counts batches within the epoch (every 3rd of 4), as Lightning does.
    check(scenario, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.0025, 0.0025, 0.0025, 0.00125,
                     0.00125, 0.00125, 0.00125, 0.000625])


def test_lr_scheduler_step_override_gets_every_call():
    def scenario(L):
        m = plateau_model(L, override=True)
        _fit(L, m, loader(8, 4), loader(4, 4), max_epochs=3)
        return m.calls, m.lrs

    check(scenario, ([(0, 2, "ReduceLROnPlateau", 1.0), (1, 4, "ReduceLROnPlateau", 1.0),
                      (2, 6, "ReduceLROnPlateau", 0.5)], [0.1, 0.1, 0.05]))


# --- an optimizer that needs a closure ----------------------------------------------------------


def test_lbfgs_gets_a_closure_and_matches_hand_loop():
    def fit(L):
        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = _net()
                self.calls = 0

            def training_step(self, batch, batch_idx):
                self.calls += 1
                x, y = batch
                return F.mse_loss(self.net(x), y)

            def configure_optimizers(self):
                return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)

        m = M()
        t = _fit(L, m, loader(8, 4), max_epochs=EPOCHS)
        return _state(m.net), m.calls, t.global_step

    net = _net()
    opt = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=4)
    calls = 0
    for _ in range(EPOCHS):
        for x, y in loader(8, 4):
            def closure():
                nonlocal calls
                calls += 1
                opt.zero_grad()
                loss = F.mse_loss(net(x), y)
                loss.backward()
                return loss

            opt.step(closure)
    assert calls > 2 * EPOCHS  # LBFGS re-evaluates within a step
    for L in libraries():
        state, got_calls, steps = fit(L)
        assert (got_calls, steps) == (calls, 2 * EPOCHS)
        assert_close(state, _state(net), rtol=0, atol=0)


@pytest.mark.parametrize("where", ["none", "optimizer", "global"])
def test_optimizer_step_pre_hooks_run_before_the_training_step(where):
    """`optimizer.step(closure)` runs torch's step pre-hooks before the closure (the forward and
    backward); ferrotrain calls the closure itself only when no such hook exists, so the order a
    hook observes is Lightning's either way, and the weights equal a hand loop's."""

    def scenario(L):
        events: List[str] = []

        def hook(opt, args, kwargs):
            events.append("pre_hook")

        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = _net()

            def training_step(self, batch, batch_idx):
                events.append("training_step")
                x, y = batch
                return F.mse_loss(self.net(x), y)

            def configure_optimizers(self):
                opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
                if where == "optimizer":
                    opt.register_step_pre_hook(hook)
                return opt

        handle = register_optimizer_step_pre_hook(hook) if where == "global" else None
        try:
            m = M()
            _fit(L, m, loader(4, 2), max_epochs=1)
        finally:
            if handle is not None:
                handle.remove()
        return events, _state(m.net)

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for x, y in loader(4, 2):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
    step = ["training_step"] if where == "none" else ["pre_hook", "training_step"]
    for L in libraries():
        events, state = scenario(L)
        assert events == step * 2, L.__name__
        assert_close(state, _state(net), rtol=0, atol=0)


# --- gradient clipping --------------------------------------------------------------------------


def _clip_fit(L: Any, accumulate: int, **kwargs: Any) -> Dict[str, torch.Tensor]:
    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y * 5)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    m = M()
    _fit(L, m, loader(14, 2), max_epochs=EPOCHS, accumulate_grad_batches=accumulate, **kwargs)
    return _state(m.net)


def _clip_hand(accumulate: int, clip: Any) -> Dict[str, torch.Tensor]:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    data = list(loader(14, 2))
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(data):
            if i % accumulate == 0:
                opt.zero_grad()
            (F.mse_loss(net(x), y * 5) / accumulate).backward()
            if (i + 1) % accumulate == 0 or i == len(data) - 1:
                clip(net.parameters())
                opt.step()
    return _state(net)


@pytest.mark.parametrize("algorithm, accumulate", [("norm", 1), ("value", 1), ("norm", 3)])
def test_trainer_gradient_clipping_matches_torch_clip_functions(algorithm, accumulate):
    if algorithm == "norm":
        clip = lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5)  # noqa: E731
    else:
        clip = lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.05)  # noqa: E731
    want = _clip_hand(accumulate, clip)
    unclipped = _clip_hand(accumulate, lambda ps: None)
    assert not torch.allclose(want["0.weight"], unclipped["0.weight"])  # clipping did change the run
    value = 0.5 if algorithm == "norm" else 0.05
    for L in libraries():
        got = _clip_fit(L, accumulate, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
        # The native norm sums in float64 (torch in float32): equal to float32 rounding.
        assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_configure_gradient_clipping_override():
    seen: List[Any] = []

    def fit(L):
        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = _net()

            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.mse_loss(self.net(x), y * 5)

            def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
                seen.append((gradient_clip_val, gradient_clip_algorithm))
                if self.global_step % 2 == 1:  # clip every other step only
                    self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                                        gradient_clip_algorithm=gradient_clip_algorithm)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        m = M()
        _fit(L, m, loader(14, 2), max_epochs=EPOCHS, gradient_clip_val=0.05, gradient_clip_algorithm="value")
        return _state(m.net)

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    step = 0
    for _ in range(EPOCHS):
        for x, y in loader(14, 2):
            opt.zero_grad()
            F.mse_loss(net(x), y * 5).backward()
            if step % 2 == 1:
                torch.nn.utils.clip_grad_value_(net.parameters(), 0.05)
            opt.step()
            step += 1
    for L in libraries():
        seen.clear()
        assert_close(fit(L), _state(net), rtol=0, atol=0)
        assert seen == [(0.05, "value")] * step


def test_grad_norm_logged_from_on_before_optimizer_step():
    """Lightning's documented pattern: `self.log_dict(grad_norm(self, norm_type=2))` in
    `on_before_optimizer_step` logs the norms before clipping."""

    def fit(L):
        grad_norm = _grad_norm(L)

        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = _net()

            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.mse_loss(self.net(x), y * 5)

            def on_before_optimizer_step(self, optimizer):
                self.log_dict(grad_norm(self.net, norm_type=2))

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.05)

        lg = memory_logger(L)
        _fit(L, M(), loader(8, 2), max_epochs=1, logger=lg, log_every_n_steps=1, gradient_clip_val=0.5)
        return lg.calls

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    want = []
    for step, (x, y) in enumerate(loader(8, 2)):
        opt.zero_grad()
        F.mse_loss(net(x), y * 5).backward()
        norms = {f"grad_2.0_norm/{n}": p.grad.norm(2).item() for n, p in net.named_parameters()}
        norms["grad_2.0_norm_total"] = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5).item()
        want.append((step, norms))
        opt.step()
    assert all(n["grad_2.0_norm_total"] > 0.5 for _, n in want)  # every step clips
    for L in libraries():
        got = fit(L)
        assert [s for s, _ in got] == [s for s, _ in want]
        for (_, g), (_, w) in zip(got, want):
            g = {k: v for k, v in g.items() if k != "epoch"}
            assert g.keys() == w.keys()
            assert all(g[k] == pytest.approx(w[k], abs=2e-5) for k in w), (L.__name__, g, w)


# --- manual optimization ------------------------------------------------------------------------


def test_manual_optimization_with_lr_schedulers_and_clip_gradients():
    def fit(L):
        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.automatic_optimization = False
                self.net = _net()

            def training_step(self, batch, batch_idx):
                opt = self.optimizers()
                x, y = batch
                loss = F.mse_loss(self.net(x), y * 5)
                opt.zero_grad()
                self.manual_backward(loss)
                self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
                opt.step()

            def on_train_epoch_end(self) -> None:
                self.lr_schedulers().step()

            def configure_optimizers(self):
                opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)
                return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

        m = M()
        t = _fit(L, m, loader(8, 2), max_epochs=3)
        return _state(m.net), t.optimizers[0].param_groups[0]["lr"], t.global_step

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        for x, y in loader(8, 2):
            opt.zero_grad()
            F.mse_loss(net(x), y * 5).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()
        sched.step()
    for L in libraries():
        state, lr, steps = fit(L)
        assert (lr, steps) == (0.0125, 12)
        assert_close(state, _state(net), rtol=1e-5, atol=1e-6)


def _gan_parts():
    torch.manual_seed(3)
    gen = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    disc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return gen, disc


def _gan_losses(gen, disc, x):
    fake = gen(x.flip(1))
    ones, zeros = torch.ones(len(x), 1), torch.zeros(len(x), 1)
    g_loss = lambda: F.binary_cross_entropy_with_logits(disc(fake), ones)  # noqa: E731
    d_loss = lambda: (F.binary_cross_entropy_with_logits(disc(x), ones)  # noqa: E731
                      + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros)) / 2
    return g_loss, d_loss


def test_manual_optimization_gan_toggle_matches_hand_loop():
    frozen_during_g: List[bool] = []

    def fit(L):
        class GAN(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.automatic_optimization = False
                self.gen, self.disc = _gan_parts()

            def training_step(self, batch, batch_idx):
                opt_g, opt_d = self.optimizers()
                g_loss, d_loss = _gan_losses(self.gen, self.disc, batch[0])
                self.toggle_optimizer(opt_g)
                frozen_during_g.append(not any(p.requires_grad for p in self.disc.parameters()))
                self.manual_backward(g_loss())
                opt_g.step()
                opt_g.zero_grad()
                self.untoggle_optimizer(opt_g)
                self.toggle_optimizer(opt_d)
                self.manual_backward(d_loss())
                opt_d.step()
                opt_d.zero_grad()
                self.untoggle_optimizer(opt_d)

            def configure_optimizers(self):
                return [torch.optim.Adam(self.gen.parameters(), lr=0.01),
                        torch.optim.Adam(self.disc.parameters(), lr=0.01)]

        m = GAN()
        t = _fit(L, m, loader(8, 2), max_epochs=EPOCHS)
        trainable = all(p.requires_grad for p in m.parameters())
        return {**_state(m.gen), **{f"d.{k}": v for k, v in _state(m.disc).items()}}, t.global_step, trainable

    gen, disc = _gan_parts()
    opt_g = torch.optim.Adam(gen.parameters(), lr=0.01)
    opt_d = torch.optim.Adam(disc.parameters(), lr=0.01)
    for _ in range(EPOCHS):
        for x, _y in loader(8, 2):
            g_loss, d_loss = _gan_losses(gen, disc, x)
            disc.requires_grad_(False)
            g_loss().backward()
            opt_g.step()
            opt_g.zero_grad()
            disc.requires_grad_(True)
            gen.requires_grad_(False)
            d_loss().backward()
            opt_d.step()
            opt_d.zero_grad()
            gen.requires_grad_(True)
    want = {**_state(gen), **{f"d.{k}": v for k, v in _state(disc).items()}}
    for L in libraries():
        frozen_during_g.clear()
        state, steps, trainable = fit(L)
        assert steps == 2 * 4 * EPOCHS and trainable  # untoggled: everything trains again
        assert frozen_during_g == [True] * 4 * EPOCHS
        assert_close(state, want, rtol=0, atol=0)


# --- the native clip path's reuse of gradient buffers -------------------------------------------


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.empty(s)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps


def _clip_both(ps, max_norm=1.0):
    from ferrotrain.utilities.clip import clip_grad_norm_

    ps = [p for p in ps if p.grad is not None]
    twins = [torch.nn.Parameter(torch.empty(p.grad.shape)) for p in ps]
    for t, p in zip(twins, ps):
        t.grad = p.grad.clone()
    got = clip_grad_norm_(ps, max_norm)
    want = torch.nn.utils.clip_grad_norm_(twins, max_norm)
    assert_close(got, want, rtol=1e-6, atol=0)
    assert_close([p.grad for p in ps], [t.grad for t in twins], rtol=1e-6, atol=0)


def test_clip_on_kept_gradients_stays_exact_as_they_change():
    """Each change below meets a reuse entry built by the two calls before it (the second call
    on unchanged gradients builds it), and must be seen."""
    ps = _params([(30, 20), (20,), (7, 3)])
    for _ in range(3):  # the same gradient tensors, refilled in place (zero_grad(set_to_none=False))
        for p in ps:
            p.grad.normal_()
        _clip_both(ps)
    changes = [
        lambda: setattr(ps[1], "grad", torch.randn(20)),  # a new tensor for one parameter
        lambda: setattr(ps[0].grad, "data", torch.randn(5, 4)),  # same object, other memory and size
        lambda: ps[2].grad.resize_(2, 2).normal_(),  # same object and memory, fewer elements
        lambda: setattr(ps[0].grad, "data", torch.randn(4, 5).t()),  # strided: torch's own path
        lambda: setattr(ps[0].grad, "data", torch.randn(6)),  # and back
        lambda: setattr(ps[0], "grad", None),  # fewer gradients
    ]
    for change in changes:
        change()
        _clip_both(ps)
        _clip_both(ps)


def test_clip_does_not_keep_gradients_alive():
    import gc
    import weakref

    from ferrotrain.utilities.clip import clip_grad_norm_

    ps = _params([(100,), (100,)])
    clip_grad_norm_(ps, 1.0)
    clip_grad_norm_(ps, 1.0)  # the second call on the same gradients builds the reuse entry
    refs = [weakref.ref(p.grad) for p in ps]
    for p in ps:
        p.grad = None
    gc.collect()
    assert all(r() is None for r in refs)
