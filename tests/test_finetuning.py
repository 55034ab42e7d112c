"""`BaseFinetuning` / `BackboneFinetuning`: which parameters are frozen when, the param groups and
their learning rates epoch by epoch, the final weights, and the state a checkpoint keeps (and a
resumed run rebuilds), pinned to Lightning 2.x through `lightning_ref.check`."""

from __future__ import annotations

from typing import Any, List

import pytest
import torch
import torch.nn.functional as F

from tests.lightning_ref import QUIET, check, is_lightning, loader, misconfiguration, round_floats


# Lightning's own warning when a param group to add holds parameters already in the optimizer
# (BatchNorm kept trainable by `freeze`); the tests check what happens, not the advice.
pytestmark = pytest.mark.filterwarnings("ignore:The provided params to be frozen")


def _callbacks(L: Any) -> Any:
    if is_lightning(L):
        import lightning.pytorch.callbacks as cbs
    else:
        import ferrotrain.callbacks as cbs
    return cbs


def read_checkpoint(L: Any, path: str) -> Any:
    """A checkpoint file as a dict (ferrotrain writes its own safetensors-based format)."""
    if is_lightning(L):
        return torch.load(path, weights_only=False)
    from ferrotrain.checkpoint import load

    return load(path)


def _model(L: Any) -> Any:
    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh())
            self.head = torch.nn.Linear(6, 1)
            self.seen: List[Any] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

        def on_train_epoch_start(self) -> None:
            opt = self.trainer.optimizers[0]
            self.seen.append((
                self.current_epoch,
                [n for n, p in self.named_parameters() if p.requires_grad],
                [round(g["lr"], 8) for g in opt.param_groups],
            ))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.mse_loss(self(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)

    return Model()


# Sums of each state-dict entry after `test_backbone_finetuning_final_weights_match`'s fit
# (measured under Lightning 2.6).
FINAL_WEIGHT_SUMS = [-0.45896, -0.48013, 5.99398, -0.09617, -0.54689, 4.25589, 6.0, 0.17508, -0.00767]


def _summary(model: Any) -> Any:
    return model.seen, round_floats([round(float(v.sum()), 5) for v in model.state_dict().values()])


def test_backbone_finetuning_unfreezes_and_grows_lr():
    def scenario(L: Any) -> Any:
        cb = _callbacks(L).BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_lr=0.01,
                                              lambda_func=lambda epoch: 3.0)
        model = _model(L)
        t = L.Trainer(**{**QUIET, "max_epochs": 4, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=4))
        return _summary(model), round_floats(cb.previous_backbone_lr, 8)

    head = ["head.weight", "head.bias"]
    bn = ["backbone.1.weight", "backbone.1.bias"]  # freeze's train_bn=True: BatchNorm stays trainable
    every = ["backbone.0.weight", "backbone.0.bias", *bn, *head]
    seen = [(0, bn + head, [0.1]), (1, every, [0.1, 0.01]), (2, every, [0.1, 0.03]), (3, every, [0.1, 0.09])]
    def seen_and_lr(L: Any) -> Any:
        (seen_, _), lr = scenario(L)
        return seen_, lr

    check(seen_and_lr, (seen, 0.09))


def test_backbone_finetuning_final_weights_match():
    def scenario(L: Any) -> Any:
        cb = _callbacks(L).BackboneFinetuning(unfreeze_backbone_at_epoch=1, train_bn=False, should_align=True)
        model = _model(L)
        t = L.Trainer(**{**QUIET, "max_epochs": 3, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=4))
        return _summary(model)

    # `freeze_before_training` keeps BatchNorm trainable (freeze's default train_bn=True); the
    # backbone group starts at lr * 0.1 and doubles, capped at the head's lr (should_align).
    every = ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias", "head.weight", "head.bias"]
    check(scenario, (
        [(0, every[2:], [0.1]), (1, every, [0.1, 0.01]), (2, every, [0.1, 0.02])],
        FINAL_WEIGHT_SUMS,
    ))


def test_custom_finetuning_with_helpers():
    def scenario(L: Any) -> Any:
        Base = _callbacks(L).BaseFinetuning

        class Unfreeze(Base):
            def freeze_before_training(self, pl_module: Any) -> None:
                self.freeze(pl_module.backbone, train_bn=False)

            def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
                if epoch == 1:
                    self.unfreeze_and_add_param_group(pl_module.backbone[0], optimizer, initial_denom_lr=4.0)

        cb = Unfreeze()
        model = _model(L)
        t = L.Trainer(**{**QUIET, "max_epochs": 2, "callbacks": [cb]})
        t.fit(model, loader(8, batch_size=4))
        bn = model.backbone[1]
        flat = [type(m).__name__ for m in Base.flatten_modules(model)]
        return (model.seen, bn.track_running_stats, flat, cb.state_dict())

    check(scenario, (
        [(0, ["head.weight", "head.bias"], [0.1]),
         (1, ["backbone.0.weight", "backbone.0.bias", "head.weight", "head.bias"], [0.1, 0.025])],
        False,
        ["Linear", "BatchNorm1d", "Tanh", "Linear"],
        {"internal_optimizer_metadata": {0: [
            {"lr": 0.1, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False,
             "foreach": None, "differentiable": False, "fused": None, "params": ["head.weight", "head.bias"]},
            {"lr": 0.025, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False,
             "foreach": None, "differentiable": False, "fused": None,
             "params": ["backbone.0.weight", "backbone.0.bias"]},
        ]}},
    ))


def test_state_in_checkpoint_and_resume(tmp_path):
    def scenario(L: Any) -> Any:
        path = str(tmp_path / f"{L.__name__}.ckpt")
        cbs = _callbacks(L)
        model = _model(L)
        t = L.Trainer(**{**QUIET, "max_epochs": 2, "callbacks": [cbs.BackboneFinetuning(unfreeze_backbone_at_epoch=1)]})
        t.fit(model, loader(8, batch_size=4))
        t.save_checkpoint(path)
        state = read_checkpoint(L, path)["callbacks"]["BackboneFinetuning"]
        resumed = _model(L)
        t2 = L.Trainer(**{**QUIET, "max_epochs": 3, "callbacks": [cbs.BackboneFinetuning(unfreeze_backbone_at_epoch=1)]})
        t2.fit(resumed, loader(8, batch_size=4), ckpt_path=path)
        straight = _model(L)
        t3 = L.Trainer(**{**QUIET, "max_epochs": 3, "callbacks": [cbs.BackboneFinetuning(unfreeze_backbone_at_epoch=1)]})
        t3.fit(straight, loader(8, batch_size=4))
        same = all(torch.allclose(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))
        groups = [[len(g["params"]) for g in opt.param_groups] for opt in t2.optimizers]
        return (round_floats(state["previous_backbone_lr"], 8), [len(g["params"]) for g in
                state["internal_optimizer_metadata"][0]], resumed.seen, groups, same)

    # Lightning's behaviour, kept: the resumed run rebuilds the backbone's param group (with the
    # checkpoint's lr, then doubled), but `freeze_before_training` ran in `setup` and nothing
    # unfreezes the backbone again, so it stays frozen and the run differs from a straight one.
    check(scenario, (0.01, [4, 2], [(2, ["backbone.1.weight", "backbone.1.bias", "head.weight", "head.bias"],
                                     [0.1, 0.02])], [[4, 2]], False))


def test_backbone_required():
    def scenario(L: Any) -> Any:
        class NoBackbone(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.backbone = "not a module"
                self.layer = torch.nn.Linear(4, 1)

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                return self.layer(batch[0]).sum()

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=0.1)

        class Finetune(_callbacks(L).BackboneFinetuning):
            def freeze_before_training(self, pl_module: Any) -> None:
                pass

        t = L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [Finetune()]})
        with pytest.raises(misconfiguration(L)) as err:
            t.fit(NoBackbone(), loader(4))
        return str(err.value)

    check(scenario, "The LightningModule should have a nn.Module `backbone` attribute")
