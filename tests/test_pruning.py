"""`ModelPruning`: the sparsity after every epoch and the final weights of a seeded model for the
built-in methods (global and per layer, fixed, integer and per-epoch amounts, lottery ticket on and
off, pruning after validation), the checkpoint's plain pruned weights, the verbose logs and
Lightning's errors (pinned to Lightning 2.x through `lightning_ref.check`)."""

from __future__ import annotations

import importlib
import logging
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

from tests.lightning_ref import QUIET, check, is_lightning, loader, misconfiguration, round_floats


def _cbs(L: Any) -> Any:
    return importlib.import_module("lightning.pytorch.callbacks" if is_lightning(L) else "ferrotrain.callbacks")


def _model(L: Any) -> Any:
    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
            self.sparsity: List[Any] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.mse_loss(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def _record(self) -> None:
            self.sparsity.append((self.current_epoch, [
                int((getattr(m, n) == 0).sum()) for m in (self.net[0], self.net[2]) for n in ("weight", "bias")
            ]))

        # Module hooks run after the callbacks', so these see the epoch's pruning.
        def on_train_epoch_end(self) -> None:
            self._record()

    return Net()


def _final(model: Any) -> Dict[str, Any]:
    return {k: round_floats(v.flatten().tolist(), 4) for k, v in model.state_dict().items()}


def _run(L: Any, epochs: int = 3, val: bool = False, **kwargs: Any) -> Any:
    L.seed_everything(7, verbose=False)
    model = _model(L)
    t = L.Trainer(**{**QUIET, "max_epochs": epochs, "num_sanity_val_steps": 0,
                     "callbacks": [_cbs(L).ModelPruning(**kwargs)]})
    t.fit(model, loader(8, batch_size=4), loader(4, batch_size=4) if val else None)
    return model


def _expected_run(L_name: str, **kwargs: Any) -> Any:
    """What `_run` observes: sparsity per epoch and final weights (run under the library named)."""
    L = importlib.import_module(L_name)
    model = _run(L, **kwargs)
    return model.sparsity, _final(model)


CASES = {
    "l1_global": dict(pruning_fn="l1_unstructured", amount=0.3),
    "l1_global_no_lottery": dict(pruning_fn="l1_unstructured", amount=0.25, use_lottery_ticket_hypothesis=False),
    "random_local_resample": dict(pruning_fn="random_unstructured", use_global_unstructured=False, amount=0.2,
                                  resample_parameters=True),
    "ln_structured": dict(pruning_fn="ln_structured", use_global_unstructured=False, pruning_dim=1,
                                     pruning_norm=2, amount=0.25, parameter_names=["weight"]),
    "callable_amount_and_apply": dict(pruning_fn="l1_unstructured", amount=lambda e: [0.5, 0.0, 0.2][e],
                                      apply_pruning=lambda e: e != 1, use_lottery_ticket_hypothesis=lambda e: e == 0),
    "custom_method": dict(pruning_fn=torch_prune.L1Unstructured, amount=4),
}

# Pinned: number of zeros per epoch in (layer0.weight, layer0.bias, layer2.weight, layer2.bias),
# filled in from Lightning 2.6 (see test_sparsity_matches_lightning).
SPARSITY = {
    "callable_amount_and_apply": [(0, [16, 1, 6, 1]), (1, [16, 1, 6, 1]), (2, [19, 3, 6, 1])],
    "custom_method": [(0, [3, 0, 1, 0]), (1, [5, 0, 3, 0]), (2, [8, 0, 4, 0])],
    "l1_global": [(0, [11, 0, 4, 0]), (1, [16, 2, 7, 0]), (2, [20, 4, 7, 1])],
    "l1_global_no_lottery": [(0, [8, 0, 4, 0]), (1, [14, 1, 6, 0]), (2, [19, 3, 6, 0])],
    "ln_structured": [(0, [8, 0, 2, 0]), (1, [16, 0, 4, 0]), (2, [16, 0, 5, 0])],
    "random_local_resample": [(0, [6, 2, 2, 0]), (1, [11, 3, 3, 0]), (2, [15, 4, 4, 0])],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sparsity_per_epoch_and_final_weights(case):
    final: Dict[str, Any] = {}

    def scenario(L: Any) -> Any:
        model = _run(L, **CASES[case])
        final[L.__name__] = _final(model)
        assert all(not k.endswith(("_orig", "_mask")) for k in final[L.__name__])  # permanent at train end
        return model.sparsity

    check(scenario, SPARSITY[case])
    if "lightning" in final:
        assert final["ferrotrain"] == final["lightning"]


def test_prune_after_validation_epochs():
    def scenario(L: Any) -> Any:
        model = _run(L, epochs=2, val=True, pruning_fn="l1_unstructured", amount=0.5, prune_on_train_epoch_end=False)
        # The end-of-epoch validation runs before `on_train_epoch_end`, where sparsity is recorded.
        return model.sparsity, sum(int((p == 0).sum()) for p in model.parameters())

    check(scenario, ([(0, [16, 1, 6, 1]), (1, [22, 6, 7, 1])], 36))


def test_checkpoint_holds_plain_pruned_weights(tmp_path):
    def scenario(L: Any) -> Any:
        L.seed_everything(7, verbose=False)
        model = _model(L)
        ckpt_cb = _cbs(L).ModelCheckpoint(dirpath=tmp_path / L.__name__, save_last=True)
        # The last checkpoint is written at the last epoch's end, before the train end makes the
        # pruning permanent on the module: the callback makes it so in the saved state.
        pruning = _cbs(L).ModelPruning("l1_unstructured", amount=0.5, make_pruning_permanent=True)
        t = L.Trainer(**{**QUIET, "enable_checkpointing": True, "max_epochs": 2, "callbacks": [pruning, ckpt_cb]})
        t.fit(model, loader(8, batch_size=4))
        if is_lightning(L):
            state = torch.load(ckpt_cb.last_model_path, weights_only=False)["state_dict"]
        else:
            from ferrotrain.checkpoint import load

            state = load(ckpt_cb.last_model_path)["state_dict"]
        assert {k: v.tolist() for k, v in state.items()} == {k: v.tolist() for k, v in model.state_dict().items()}
        zeros = {k: int((v == 0).sum()) for k, v in state.items()}
        return sorted(state), zeros

    check(scenario, (["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"],
                     {"net.0.bias": 6, "net.0.weight": 22, "net.2.bias": 1, "net.2.weight": 7}))


def test_not_permanent_keeps_reparametrisation_but_checkpoint_state_is_plain():
    def scenario(L: Any) -> Any:
        L.seed_everything(7, verbose=False)
        model = _model(L)
        pruning = _cbs(L).ModelPruning("l1_unstructured", amount=0.5, make_pruning_permanent=False)
        t = L.Trainer(**{**QUIET, "max_epochs": 1, "callbacks": [pruning]})
        t.fit(model, loader(8, batch_size=4))
        return sorted(model.state_dict())

    check(scenario, sorted(f"net.{i}.{n}{s}" for i in (0, 2) for n in ("weight", "bias") for s in ("_orig", "_mask")))


def test_verbose_logs(caplog):
    def scenario(L: Any) -> Any:
        name = "lightning.pytorch.callbacks.pruning" if is_lightning(L) else "ferrotrain.callbacks.pruning"
        records: List[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record.getMessage())

        logger, handler = logging.getLogger(name), Keep(level=logging.INFO)
        old = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            _run(L, epochs=1, pruning_fn="l1_unstructured", use_global_unstructured=False, amount=0.5, verbose=2)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old)
        return records

    check(scenario, [
        "Applied `l1_unstructured`. Pruned: 0/49 (0.00%) -> 24/49 (48.98%)",
        "Applied `l1_unstructured` to `Linear(in_features=4, out_features=8, bias=True).weight` with amount=0.5."
        " Pruned: 0 (0.00%) -> 16 (50.00%)",
        "Applied `l1_unstructured` to `Linear(in_features=8, out_features=1, bias=True).weight` with amount=0.5."
        " Pruned: 0 (0.00%) -> 4 (50.00%)",
        "Applied `l1_unstructured` to `Linear(in_features=4, out_features=8, bias=True).bias` with amount=0.5."
        " Pruned: 0 (0.00%) -> 4 (50.00%)",
        "Applied `l1_unstructured` to `Linear(in_features=8, out_features=1, bias=True).bias` with amount=0.5."
        " Pruned: 0 (0.00%) -> 0 (0.00%)",
    ])


def test_errors():
    def scenario(L: Any) -> Any:
        MP = _cbs(L).ModelPruning
        bad = [
            dict(pruning_fn="l1_unstructured", parameter_names=["weight", "gamma"]),
            dict(pruning_fn="l2_unstructured"),
            dict(pruning_fn="ln_structured", use_global_unstructured=False),
            dict(pruning_fn="ln_structured", use_global_unstructured=False, pruning_dim=0),
            dict(pruning_fn="random_structured", pruning_dim=0),
            dict(pruning_fn=torch_prune.L1Unstructured, use_global_unstructured=False),
            dict(pruning_fn=torch_prune.l1_unstructured),
            dict(pruning_fn="l1_unstructured", amount="half"),
            dict(pruning_fn="l1_unstructured", verbose=3),
        ]
        errors = []
        for kwargs in bad:
            with pytest.raises(misconfiguration(L)) as err:
                MP(**kwargs)
            fn = kwargs["pruning_fn"]
            errors.append(str(err.value) if isinstance(fn, str) else str(err.value).replace(str(fn), "<fn>"))
        # Parameters that are not in the model are refused at setup.
        stray = torch.nn.Linear(2, 2)
        for params in ([(stray, "weight")], ["weight"]):
            model = _model(L)
            t = L.Trainer(**{**QUIET, "max_epochs": 1,
                             "callbacks": [MP("l1_unstructured", parameters_to_prune=params)]})
            with pytest.raises(misconfiguration(L)) as err:
                t.fit(model, loader(4, batch_size=4))
            errors.append(str(err.value).replace(repr(stray), "<stray>"))
        return errors

    names = "['ln_structured', 'l1_unstructured', 'random_structured', 'random_unstructured']"
    check(scenario, [
        "The provided `parameter_names` name: gamma isn't in ('weight', 'bias')",
        f"The provided `pruning_fn` l2_unstructured isn't available in PyTorch's built-in functions: {names} ",
        "When requesting `structured` pruning, the `pruning_dim` should be provided.",
        "When requesting `ln_structured` pruning, the `pruning_norm` should be provided.",
        'Only the "unstructured" PRUNING_TYPE is supported with `use_global_unstructured=True`. Found method'
        " <class 'torch.nn.utils.prune.RandomStructured'> of type structured. ",
        "PyTorch `BasePruningMethod` is currently only supported with `use_global_unstructured=True`.",
        f"`pruning_fn` is expected to be a str in {names} or a PyTorch `BasePruningMethod`. Found: <fn>."
        " HINT: if passing a `BasePruningMethod`, pass the class, not an instance",
        "`amount` should be provided and be either an int, a float or Callable function.",
        "`verbose` must be any of (0, 1, 2)",
        "Some provided `parameters_to_prune` don't exist in the model. Found missing modules: [<stray>] and missing"
        " parameters: []",
        "The provided `parameters_to_prune` should either be list of tuple with 2 elements:"
        " (nn.Module, parameter_name_to_prune) or None",
    ])


def test_fit_validation_runs_under_no_grad_not_inference_mode():
    """A fit's validation (and sanity check) runs under `no_grad`, so that what its hooks create
    (pruning masks) can be used by training; a standalone validate uses inference mode."""

    def scenario(L: Any) -> Any:
        seen: List[Any] = []
        model = _model(L)
        model.on_validation_epoch_end = lambda: seen.append(  # type: ignore[method-assign]
            (model.trainer.state.fn, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        t = L.Trainer(**{**QUIET, "max_epochs": 1, "num_sanity_val_steps": 1})
        t.fit(model, loader(4, batch_size=4), loader(4, batch_size=4))
        t.validate(model, loader(4, batch_size=4), verbose=False)
        return [(str(getattr(fn, "value", fn)), inf, grad) for fn, inf, grad in seen]

    check(scenario, [("fit", False, False), ("fit", False, False), ("validate", True, False)])
