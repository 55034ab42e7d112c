"""The hook order, pinned by recording real calls (as Lightning's own test_hooks.py does).

The expected sequences were recorded from Lightning 2.x running this same module; when
`lightning` is importable the test records it again and compares directly."""

from __future__ import annotations

import importlib.util
from typing import Any, List

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain
from tests.conftest import make_dataset

MODULE_HOOKS = [
    "prepare_data", "setup", "teardown", "configure_callbacks", "configure_model", "configure_optimizers",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start",
    "on_test_batch_end", "on_test_model_eval", "on_test_model_train", "on_predict_start", "on_predict_end",
    "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end",
    "on_predict_model_eval", "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "optimizer_zero_grad", "optimizer_step", "configure_gradient_clipping",
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "on_save_checkpoint", "on_load_checkpoint", "training_step", "validation_step", "test_step", "predict_step",
    "zero_grad", "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader",
]


def named(name: str, kwargs: dict) -> str:
    """A call as recorded: keyword arguments are part of the contract (`setup(stage=...)`)."""
    if not kwargs:
        return name
    return name + "(" + ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in sorted(kwargs.items())) + ")"


def record(L: Any) -> dict:  # noqa: N803 - the framework, as users import it
    calls: List[str] = []

    class Recorder(L.Callback):
        pass

    for name in [n for n in vars(L.Callback) if n.startswith("on_") or n in ("setup", "teardown")]:
        base = getattr(L.Callback, name)

        def make(name: str, base: Any) -> Any:
            def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls.append(named(f"Callback.{name}", kwargs))
                return base(self, *args, **kwargs)

            return hook

        setattr(Recorder, name, make(name, base))

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.layer(x)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

        def test_step(self, batch, batch_idx):
            self.log("test_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(make_dataset(8), batch_size=4)

        val_dataloader = test_dataloader = predict_dataloader = train_dataloader

    for name in MODULE_HOOKS:
        own = Model.__dict__.get(name)
        target = own if own is not None else getattr(L.LightningModule, name)

        def make(name: str, target: Any) -> Any:
            def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls.append(named(name, kwargs if name in ("setup", "teardown") else {}))
                return target(self, *args, **kwargs)

            return hook

        setattr(Model, name, make(name, target))

    import tempfile

    trainer = L.Trainer(
        default_root_dir=tempfile.mkdtemp(), max_epochs=1, callbacks=[Recorder()], enable_progress_bar=False,
        logger=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=1,
    )
    out = {}
    trainer.fit(Model())
    out["fit"], calls[:] = list(calls), []
    model = Model()
    trainer.validate(model, verbose=False)
    out["validate"], calls[:] = list(calls), []
    trainer.test(model, verbose=False)
    out["test"], calls[:] = list(calls), []
    trainer.predict(model)
    out["predict"] = list(calls)
    return out


def transfer() -> List[str]:
    return ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"]


def both(hook: str) -> List[str]:
    return [f"Callback.{hook}", hook]


def train_batch() -> List[str]:
    return [
        *transfer(), *both("on_train_batch_start"), "optimizer_step", "training_step",
        *both("on_before_zero_grad"), "optimizer_zero_grad", *both("on_before_backward"), "backward",
        *both("on_after_backward"), *both("on_before_optimizer_step"), "configure_gradient_clipping",
        *both("on_train_batch_end"),
    ]


def eval_loop(stage: str, batches: int, model_train: bool = True) -> List[str]:
    seq = [f"on_{stage}_model_eval", *both(f"on_{stage}_start"), *both(f"on_{stage}_epoch_start")]
    for _ in range(batches):
        seq += [*transfer(), *both(f"on_{stage}_batch_start"), f"{stage}_step", *both(f"on_{stage}_batch_end")]
    seq += [*both(f"on_{stage}_epoch_end"), *both(f"on_{stage}_end")]
    if model_train:
        seq.append(f"on_{stage}_model_train")
    return seq


def setup(stage: str) -> List[str]:
    # Gradients are cleared (`zero_grad`) once the stage starts, before any loader is requested.
    return ["configure_callbacks", "prepare_data", f"Callback.setup(stage={stage})", f"setup(stage={stage})",
            "configure_model"]


def teardown(stage: str) -> List[str]:
    return [f"Callback.teardown(stage={stage})", f"teardown(stage={stage})"]


EXPECTED_FIT = [
    *setup("fit"), "configure_optimizers", *both("on_fit_start"), "zero_grad",
    # The sanity check asks for the validation loader; the training loader comes after it.
    "Callback.on_sanity_check_start", "val_dataloader", *eval_loop("validation", 1), "Callback.on_sanity_check_end",
    "train_dataloader",
    *both("on_train_start"), *both("on_train_epoch_start"), *train_batch(), *train_batch(),
    "on_validation_model_zero_grad", "zero_grad", *eval_loop("validation", 2),
    *both("on_train_epoch_end"), *both("on_train_end"), *both("on_fit_end"), *teardown("fit"),
]


def evaluate(verb: str, stage: str, loader: str, model_train: bool = True) -> List[str]:
    return [*setup(verb), "zero_grad", f"{loader}_dataloader", *eval_loop(stage, 2, model_train), *teardown(verb)]


EXPECTED = {
    "fit": EXPECTED_FIT,
    "validate": evaluate("validate", "validation", "val"),
    "test": evaluate("test", "test", "test"),
    "predict": evaluate("predict", "predict", "predict", model_train=False),
}


@pytest.fixture(scope="module")
def recorded() -> dict:
    return record(ferrotrain)


@pytest.mark.parametrize("entry", ["fit", "validate", "test", "predict"])
def test_hook_order_matches_lightning(recorded: dict, entry: str) -> None:
    assert recorded[entry] == EXPECTED[entry]


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning is not installed")
def test_pinned_order_is_what_lightning_does() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lightning

        theirs = record(lightning)
    assert theirs == EXPECTED


def test_hooks_nobody_overrode_are_never_called(tmp_path) -> None:
    """The hook table skips base-class no-ops: patching a default on the base class shows it."""
    counted = []

    class Plain(ferrotrain.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            counted.append("epoch_end")

    original = ferrotrain.Callback.on_train_batch_end
    ferrotrain.Callback.on_train_batch_end = lambda *a, **k: counted.append("batch_end")  # type: ignore[method-assign]
    try:
        from tests.conftest import BoringModel

        trainer = ferrotrain.Trainer(
            default_root_dir=str(tmp_path), max_epochs=1, callbacks=[Plain()], enable_progress_bar=False,
            logger=False, enable_checkpointing=False, enable_model_summary=False,
        )
        trainer.fit(BoringModel(), DataLoader(make_dataset(16), batch_size=4))
    finally:
        ferrotrain.Callback.on_train_batch_end = original  # type: ignore[method-assign]
    assert counted == ["epoch_end"]


def test_exception_in_training_step_reaches_user_with_on_exception(tmp_path) -> None:
    seen = []

    class Watch(ferrotrain.Callback):
        def on_exception(self, trainer, pl_module, exception):
            seen.append(type(exception).__name__)

    class Boom(ferrotrain.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise KeyError("boom at batch 2")
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = ferrotrain.Trainer(
        default_root_dir=str(tmp_path), max_epochs=1, callbacks=[Watch()], enable_progress_bar=False,
        logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    with pytest.raises(KeyError, match="boom at batch 2") as info:
        trainer.fit(Boom(), DataLoader(make_dataset(16), batch_size=4))
    assert seen == ["KeyError"]
    assert trainer.interrupted
    # The user's frame is in the traceback, unchanged by the native loop.
    assert any(tb.name == "training_step" for tb in info.traceback)


@pytest.mark.parametrize("returns", ["tensor", "dict"])
def test_batch_end_hooks_get_the_step_outputs_next_to_the_progress_bar(tmp_path, returns):
    """`on_train_batch_end` gets Lightning's outputs (the loss detached, the step's other keys)
    wherever it is overridden, a progress bar subclass included, also when the default bar
    (which never reads them) runs beside it."""
    from ferrotrain.callbacks import TQDMProgressBar

    seen: List[Any] = []

    class Bar(TQDMProgressBar):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(("bar", sorted(outputs), outputs["loss"].requires_grad))
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    class M(ferrotrain.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            return loss if returns == "tensor" else {"loss": loss, "extra": batch_idx}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(("module", sorted(outputs), outputs["loss"].requires_grad))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    keys = ["loss"] if returns == "tensor" else ["extra", "loss"]
    for callbacks in ([Bar()], []):
        seen.clear()
        trainer = ferrotrain.Trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=callbacks, logger=False,
                                     enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(M(), DataLoader(make_dataset(8), batch_size=4))
        want = ([("bar", keys, False)] if callbacks else []) + [("module", keys, False)]
        assert seen == want * 2


class _Calls(ferrotrain.LightningModule):
    """A small module that records the hooks the tests below are about."""

    def __init__(self, calls: List[str]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.calls = calls

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.calls.append("validation_step")

    def configure_optimizers(self):
        self.calls.append("configure_optimizers")
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_load_checkpoint(self, checkpoint):
        self.calls.append("on_load_checkpoint")

    def on_validation_start(self):
        self.calls.append("on_validation_start")

    def on_validation_end(self):
        self.calls.append("on_validation_end")

    def train_dataloader(self):
        self.calls.append("train_dataloader")
        return DataLoader(make_dataset(8), batch_size=4)

    def val_dataloader(self):
        self.calls.append("val_dataloader")
        return DataLoader(make_dataset(8), batch_size=4)


def _trainer(tmp_path, **kwargs) -> ferrotrain.Trainer:
    options = dict(default_root_dir=str(tmp_path), enable_progress_bar=False, logger=False,
                   enable_model_summary=False)
    options.update(kwargs)
    return ferrotrain.Trainer(**options)


def test_resume_restores_the_module_before_configure_optimizers(tmp_path) -> None:
    first = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    first.fit(_Calls([]))
    ckpt = str(tmp_path / "resume.ckpt")
    first.save_checkpoint(ckpt)
    calls: List[str] = []
    _trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(_Calls(calls), ckpt_path=ckpt)
    assert calls[:3] == ["on_load_checkpoint", "configure_optimizers", "train_dataloader"]


def test_without_sanity_check_the_train_loader_is_requested_before_the_val_loader(tmp_path) -> None:
    calls: List[str] = []
    _trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0, enable_checkpointing=False).fit(_Calls(calls))
    loaders = [c for c in calls if c.endswith("_dataloader")]
    assert loaders == ["train_dataloader", "val_dataloader"]
    assert calls.index("val_dataloader") < calls.index("on_validation_start")


@pytest.mark.parametrize("limit", [0, 0.0])
def test_validate_with_no_batches_runs_no_loop_hooks(tmp_path, limit) -> None:
    calls: List[str] = []
    assert _trainer(tmp_path, limit_val_batches=limit).validate(_Calls(calls), verbose=False) == []
    assert calls == []


def test_fit_with_an_empty_val_loader_skips_the_validation_hooks(tmp_path) -> None:
    calls: List[str] = []

    class Empty(_Calls):
        def val_dataloader(self):
            self.calls.append("val_dataloader")
            return DataLoader(make_dataset(0), batch_size=4)

    _trainer(tmp_path, max_epochs=1, enable_checkpointing=False).fit(Empty(calls))
    assert "val_dataloader" in calls
    assert "on_validation_start" not in calls and "validation_step" not in calls


@pytest.mark.parametrize(("mode", "batches"), [("min_size", 2), ("max_size_cycle", 4), ("max_size", 4)])
def test_fit_on_nested_loaders_keeps_their_shape(tmp_path, mode, batches) -> None:
    from ferrotrain.utilities import CombinedLoader

    seen: List[Any] = []

    class Nested(ferrotrain.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            seen.append((sorted(batch), len(batch["ab"]), len(batch["c"])))
            x, y = batch["ab"][0]
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def loader(n: int) -> DataLoader:
        return DataLoader(make_dataset(n), batch_size=4)

    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    trainer.fit(Nested(), CombinedLoader({"ab": [loader(16), loader(8)], "c": (loader(8),)}, mode))
    assert trainer.num_training_batches == batches
    assert seen == [(["ab", "c"], 2, 1)] * batches


def test_fit_refuses_sequential_combined_loader(tmp_path) -> None:
    from ferrotrain.utilities import CombinedLoader

    loaders = CombinedLoader([DataLoader(make_dataset(8), batch_size=4)] * 2, "sequential")
    with pytest.raises(ValueError, match=r'does not support the `CombinedLoader\(mode="sequential"\)`'):
        _trainer(tmp_path, max_epochs=1).fit(_Calls([]), loaders)
