"""How `configure_optimizers`' schedulers are read, as Lightning 2.6 reads them: under automatic
optimization the Trainer steps them (so they must be torch schedulers, or the module steps them
in `lr_scheduler_step`); under manual optimization the user does, so any stateful scheduler is
accepted and the keys that decide when the Trainer would step it are ignored with a warning.

With `FERROTRAIN_CROSSCHECK=1` every scenario also runs under Lightning."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.lightning_ref import libraries, loader, misconfiguration, tiny_net, trainer


class _Stateful:
    """A scheduler that follows no torch API: only `state_dict`/`load_state_dict`."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.steps = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def _module(L: Any, schedulers: Any, automatic: bool = True, steps_itself: bool = False) -> Any:
    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_net()
            self.automatic_optimization = automatic

        def training_step(self, batch, batch_idx):
            loss = F.mse_loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            if not automatic:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return loss if automatic else None

        def on_train_epoch_end(self):
            if not automatic:
                sched = self.lr_schedulers()
                if isinstance(sched, _Stateful):
                    sched.steps += 1
                else:
                    sched.step(torch.tensor(0.0))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [schedulers(opt)]

    if steps_itself:
        def lr_scheduler_step(self, scheduler, metric):
            scheduler.steps += 1

        M.lr_scheduler_step = lr_scheduler_step
    return M()


def _fit(L: Any, model: Any, **kwargs: Any) -> Any:
    t = trainer(L, max_epochs=1, **kwargs)
    t.fit(model, loader(4, batch_size=2))
    return t


# Lightning's own notes on a tiny run (torch's pytree deprecation, few workers, few batches) are
# not what is tested here.
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*(num_workers|log_every_n_steps|does not have many workers).*")]


def test_a_non_torch_scheduler_is_refused_in_automatic_optimization():
    for L in libraries():
        with pytest.raises(misconfiguration(L), match="`_Stateful` doesn't follow PyTorch's LRScheduler API"):
            _fit(L, _module(L, _Stateful))


def test_a_non_torch_scheduler_works_when_the_module_steps_it():
    for L in libraries():
        t = _fit(L, _module(L, _Stateful, steps_itself=True))
        assert t.lr_scheduler_configs[0].scheduler.steps == 1  # once, at the end of the epoch


def test_manual_optimization_accepts_a_non_torch_scheduler():
    for L in libraries():
        t = _fit(L, _module(L, _Stateful, automatic=False))
        assert t.lr_scheduler_configs[0].scheduler.steps == 1  # stepped by the user only


def test_a_scheduler_without_state_is_a_type_error():
    class NoState:
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def step(self):
            pass

    for L in libraries():
        with pytest.raises(TypeError, match="`NoState` is invalid. It should have `state_dict` and `load_state_dict`"):
            _fit(L, _module(L, NoState, automatic=False))


def test_manual_optimization_warns_about_the_keys_it_ignores_and_keeps_interval():
    def plateau(opt):
        return {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt), "monitor": "train_loss",
                "interval": "step"}

    for L in libraries():
        with pytest.warns(RuntimeWarning, match=r"contains the key\(s\) \['monitor'\], but the keys will be ignored"):
            t = _fit(L, _module(L, plateau, automatic=False))
        cfg = t.lr_scheduler_configs[0]
        assert cfg.interval == "step" and cfg.monitor is None


def test_manual_optimization_takes_reduce_lr_on_plateau_without_a_monitor():
    for L in libraries():
        t = _fit(L, _module(L, torch.optim.lr_scheduler.ReduceLROnPlateau, automatic=False))
        assert t.lr_scheduler_configs[0].monitor is None


def test_automatic_reduce_lr_on_plateau_without_a_monitor_is_refused():
    for L in libraries():
        with pytest.raises(misconfiguration(L), match="must include a monitor when a `ReduceLROnPlateau`"):
            _fit(L, _module(L, torch.optim.lr_scheduler.ReduceLROnPlateau))


def test_unknown_scheduler_keys_warn_and_are_dropped():
    def with_extra(opt):
        return {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1), "interval": "step", "colour": "red"}

    for L in libraries():
        with pytest.warns(RuntimeWarning, match="Found unsupported keys in the lr scheduler dict: {'colour'}"):
            t = _fit(L, _module(L, with_extra))
        cfg = t.lr_scheduler_configs[0]
        assert cfg.interval == "step"
        # The config holds exactly Lightning's fields.
        assert cfg == type(cfg)(scheduler=cfg.scheduler, interval="step")


def test_one_cycle_per_epoch_is_questioned():
    def one_cycle(opt):
        return {"scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)}

    for L in libraries():
        with pytest.warns(RuntimeWarning, match="A `OneCycleLR` scheduler is using 'interval': 'epoch'"):
            _fit(L, _module(L, one_cycle))


def test_a_scheduler_of_another_optimizer_is_refused():
    def foreign(opt):
        return torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 1)

    for L in libraries():
        with pytest.raises(misconfiguration(L), match="attached with an optimizer that wasn't returned"):
            _fit(L, _module(L, foreign))


def test_several_optimizers_in_automatic_optimization_are_a_runtime_error():
    for L in libraries():
        class Two(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = tiny_net()

            def training_step(self, batch, batch_idx):
                return F.mse_loss(self.net(batch[0]), batch[1])

            def configure_optimizers(self):
                return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

        with pytest.raises(RuntimeError, match="multiple optimizers is only supported with manual optimization"):
            _fit(L, Two())
