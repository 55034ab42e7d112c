"""`Strategy.backward` is where every backward pass goes, as in Lightning 2.6: `manual_backward`
calls it (with its extra arguments), and automatic optimization calls a strategy's own override;
the backward hooks still run around it. With `FERROTRAIN_CROSSCHECK=1` also under Lightning."""

from __future__ import annotations

import importlib
from typing import Any, List

import pytest
import torch
import torch.nn.functional as F

from tests.lightning_ref import is_lightning, libraries, loader, tiny_net, trainer

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*(num_workers|log_every_n_steps).*")]


def _counting_strategy(L: Any, calls: List[Any]) -> Any:
    module = "lightning.pytorch.strategies" if is_lightning(L) else "ferrotrain.strategies"
    base = importlib.import_module(module).SingleDeviceStrategy

    class Counting(base):
        def backward(self, closure_loss, optimizer, *args, **kwargs):
            calls.append((type(optimizer).__name__, args, kwargs))
            return super().backward(closure_loss, optimizer, *args, **kwargs)

    return Counting(torch.device("cpu"))


def _module(L: Any, automatic: bool, seen: List[str]) -> Any:
    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_net()
            self.automatic_optimization = automatic

        def training_step(self, batch, batch_idx):
            loss = F.mse_loss(self.net(batch[0]), batch[1])
            if automatic:
                return loss
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss, retain_graph=True)
            self.manual_backward(loss)  # twice: the graph was retained
            opt.step()
            return None

        def on_before_backward(self, loss):
            seen.append("before")

        def on_after_backward(self):
            seen.append("after")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return M()


@pytest.mark.parametrize("automatic", [True, False])
def test_every_backward_goes_through_the_strategy(automatic):
    for L in libraries():
        calls: List[Any] = []
        seen: List[str] = []
        t = trainer(L, max_epochs=1, strategy=_counting_strategy(L, calls))
        t.fit(_module(L, automatic, seen), loader(6, batch_size=2))
        if automatic:
            assert [c[0] for c in calls] == ["SGD"] * 3
            assert seen == ["before", "after"] * 3
        else:
            # No optimizer for a manual backward; the extra arguments reach torch's backward.
            assert calls == [("NoneType", (), {"retain_graph": True}), ("NoneType", (), {})] * 3
            assert seen == ["before", "after"] * 6
        assert t.global_step == 3


def test_strategy_backward_returns_the_loss_value():
    for L in libraries():
        calls: List[Any] = []
        returned: List[Any] = []
        strategy = _counting_strategy(L, calls)
        original = strategy.backward

        def keep(loss, optimizer, *args, **kwargs):
            out = original(loss, optimizer, *args, **kwargs)
            returned.append(torch.equal(out.detach(), loss.detach()))
            return out

        strategy.backward = keep
        trainer(L, max_epochs=1, strategy=strategy).fit(_module(L, False, []), loader(2, batch_size=2))
        assert returned == [True, True]
