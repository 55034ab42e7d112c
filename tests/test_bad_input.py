"""Bad input, table-driven: every Trainer argument with a wrong type or value (the table of
`test_trainer_args.py`, extended here to the arguments it does not cover), unusable
`configure_optimizers` and `training_step` results, a model that is not a LightningModule, missing
data. Each is a clear error of a standard type that names what was wrong and what is expected,
raised before training starts wherever the problem is knowable then."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.errors import CheckpointError, ConfigTypeError, MisconfigurationException, NotSupportedYetError
from tests.conftest import BoringModel, make_dataset
from tests.test_trainer_args import BAD as BAD_ARGS

# Constructor arguments test_trainer_args.py leaves out: (kwargs, exception, words in the message).
MORE_BAD_ARGS = [
    (dict(fast_dev_run=-1), MisconfigurationException, ["fast_dev_run=-1", "should be >= 0"]),
    (dict(fast_dev_run="yes"), ConfigTypeError, ["fast_dev_run", "'yes'"]),
    (dict(min_steps=-2), MisconfigurationException, ["min_steps", "-2"]),
    (dict(min_steps="1"), ConfigTypeError, ["min_steps", "'1'"]),
    (dict(max_time=5), ConfigTypeError, ["max_time", "5", "DD:HH:MM:SS", "timedelta"]),
    (dict(max_time="1:2"), MisconfigurationException, ["max_time", "'1:2'", "DD:HH:MM:SS"]),
    (dict(max_time={"hours": "x"}), MisconfigurationException, ["max_time", "'hours'"]),
    (dict(limit_val_batches=-1), MisconfigurationException, ["limit_val_batches", "-1", "[0.0, 1.0]", "int >= 0"]),
    (dict(limit_test_batches="all"), ConfigTypeError, ["limit_test_batches", "'all'"]),
    (dict(limit_predict_batches=2.5), MisconfigurationException, ["limit_predict_batches", "2.5"]),
    (dict(overfit_batches=1.5), MisconfigurationException, ["overfit_batches", "1.5", "[0.0, 1.0]"]),
    (dict(enable_model_summary="no"), ConfigTypeError, ["enable_model_summary", "'no'", "True or False"]),
    (dict(benchmark="fast"), ConfigTypeError, ["benchmark", "'fast'", "True or False"]),
    (dict(inference_mode=1), ConfigTypeError, ["inference_mode", "1", "True or False"]),
    (dict(use_distributed_sampler=None), ConfigTypeError, ["use_distributed_sampler", "None", "True or False"]),
    (dict(detect_anomaly="on"), ConfigTypeError, ["detect_anomaly", "'on'", "True or False"]),
    (dict(barebones=1), ConfigTypeError, ["barebones", "1", "True or False"]),
    (dict(plugins=["x"]), MisconfigurationException, ["plugins", "'x'", "precision plugin"]),
    (dict(sync_batchnorm=True, strategy="ddp", accelerator="cpu", devices=2), MisconfigurationException,
     ["sync_batchnorm=True", "CPU"]),
    (dict(sync_batchnorm="yes"), ConfigTypeError, ["sync_batchnorm", "'yes'", "True or False"]),
    (dict(enable_autolog_hparams="no"), ConfigTypeError, ["enable_autolog_hparams", "'no'", "True or False"]),
    (dict(model_registry="my-model"), NotSupportedYetError, ["model_registry", "not supported yet"]),
    (dict(reload_dataloaders_every_n_epochs=-1), MisconfigurationException, ["reload_dataloaders_every_n_epochs", "-1"]),
    (dict(reload_dataloaders_every_n_epochs=1.5), ConfigTypeError, ["reload_dataloaders_every_n_epochs", "1.5"]),
    (dict(num_nodes=0), MisconfigurationException, ["num_nodes", "0", ">= 1"]),
    (dict(num_nodes="2"), ConfigTypeError, ["num_nodes", "'2'"]),
    (dict(profiler=5), ConfigTypeError, ["profiler", "5"]),
    (dict(strategy=5), ConfigTypeError, ["strategy", "5", "'auto'"]),
    (dict(barebones=True, enable_checkpointing=True), MisconfigurationException, ["barebones", "enable_checkpointing=True"]),
]


def _id(kwargs: dict) -> str:
    k, v = next(iter(kwargs.items()))
    return f"{k}={v!r}"


@pytest.mark.parametrize("kwargs,exc,words", MORE_BAD_ARGS, ids=[_id(k) for k, _, _ in MORE_BAD_ARGS])
def test_more_bad_trainer_arguments(kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        L.Trainer(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
    assert isinstance(info.value, (ValueError, TypeError))


def test_every_trainer_argument_has_a_bad_value_case() -> None:
    params = set(inspect.signature(L.Trainer).parameters)
    covered = {k for kwargs, _, _ in BAD_ARGS + MORE_BAD_ARGS for k in kwargs}
    # `logger` and `callbacks` are in BAD_ARGS; every parameter is exercised with a wrong value.
    assert params - covered == set(), sorted(params - covered)


# ---------------------------------------------------------------------------------------------
# what user code returns, what it passes


def _with_optimizers(value):
    class M(BoringModel):
        def configure_optimizers(self):
            return value(self) if callable(value) and not isinstance(value, type) else value

    return M()


def _returning(value):
    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            return value() if callable(value) else value

    return M()


def _no_training_step():
    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return M()


class _EmptyDataModule(L.LightningDataModule):
    pass


def _loader():
    return DataLoader(make_dataset(), batch_size=8)


OPT_HELP = "`configure_optimizers` must return one of"
STEP_HELP = "must return a scalar loss Tensor, a dict with a 'loss' key, or None"

# (id, call(trainer), exception, words, raised before the first training_step)
USER_CODE = [
    ("configure_optimizers->str", lambda t: t.fit(_with_optimizers("adam"), _loader()),
     MisconfigurationException, ["'adam'", OPT_HELP], True),
    ("configure_optimizers->list of ints", lambda t: t.fit(_with_optimizers([1, 2]), _loader()),
     MisconfigurationException, ["[1, 2]", OPT_HELP], True),
    ("configure_optimizers->optimizer class", lambda t: t.fit(_with_optimizers(torch.optim.SGD), _loader()),
     MisconfigurationException, ["SGD", OPT_HELP], True),
    ("configure_optimizers->dict without optimizer", lambda t: t.fit(_with_optimizers({"lr_scheduler": None}), _loader()),
     MisconfigurationException, ["'optimizer' key", "['lr_scheduler']"], True),
    ("configure_optimizers->dict optimizer None", lambda t: t.fit(_with_optimizers({"optimizer": None}), _loader()),
     MisconfigurationException, ["'optimizer'", "torch.optim.Optimizer", "None"], True),
    ("configure_optimizers->bad scheduler",
     lambda t: t.fit(_with_optimizers(lambda m: ([torch.optim.SGD(m.parameters(), 0.1)], ["x"])), _loader()),
     ConfigTypeError, ["scheduler", "'x'", "step"], True),
    ("training_step->vector", lambda t: t.fit(_returning(lambda: torch.ones(3, requires_grad=True)), _loader()),
     MisconfigurationException, ["shape (3,)", "scalar", STEP_HELP], False),
    ("training_step->str", lambda t: t.fit(_returning("loss"), _loader()),
     MisconfigurationException, ["returned a str", STEP_HELP], False),
    ("training_step->int", lambda t: t.fit(_returning(3), _loader()),
     MisconfigurationException, ["returned a int", STEP_HELP], False),
    ("training_step->dict without loss", lambda t: t.fit(_returning({"acc": 1}), _loader()),
     MisconfigurationException, ["without a 'loss' key", "['acc']", STEP_HELP], False),
    ("training_step->dict loss str", lambda t: t.fit(_returning({"loss": "a"}), _loader()),
     MisconfigurationException, ["'loss' of type str", STEP_HELP], False),
    ("no training_step", lambda t: t.fit(_no_training_step(), _loader()),
     MisconfigurationException, ["No `training_step()` method defined", "configure_optimizers()"], True),
    ("fit(nn.Module)", lambda t: t.fit(torch.nn.Linear(2, 2), _loader()),
     ConfigTypeError, ["fit()", "LightningModule", "Linear"], True),
    ("validate(nn.Module)", lambda t: t.validate(torch.nn.Linear(2, 2), _loader()),
     ConfigTypeError, ["validate()", "LightningModule"], True),
    ("test(None) before any run", lambda t: t.test(None, _loader()),
     MisconfigurationException, ["test()", "LightningModule"], True),
    ("fit without data", lambda t: t.fit(BoringModel()),
     MisconfigurationException, ["No training data", "train_dataloaders", "train_dataloader()"], True),
    ("fit(train_dataloaders=5)", lambda t: t.fit(BoringModel(), 5),
     ConfigTypeError, ["train_dataloaders", "5", "iterable of batches"], True),
    ("fit(val_dataloaders='x')", lambda t: t.fit(BoringModel(), _loader(), "x"),
     ConfigTypeError, ["val_dataloaders", "'x'"], True),
    ("fit(datamodule=5)", lambda t: t.fit(BoringModel(), datamodule=5),
     ConfigTypeError, ["datamodule", "LightningDataModule", "5"], True),
    ("fit(loader, datamodule)", lambda t: t.fit(BoringModel(), _loader(), datamodule=_EmptyDataModule()),
     MisconfigurationException, ["train_dataloaders", "datamodule", "one or the other"], True),
    ("datamodule without train_dataloader", lambda t: t.fit(BoringModel(), datamodule=_EmptyDataModule()),
     MisconfigurationException, ["No training data", "datamodule", "train_dataloader()"], True),
    ("datamodule without val_dataloader", lambda t: t.validate(BoringModel(), datamodule=_EmptyDataModule()),
     MisconfigurationException, ["No val data", "val_dataloader()"], True),
    ("datamodule without test_dataloader", lambda t: t.test(BoringModel(), datamodule=_EmptyDataModule()),
     MisconfigurationException, ["No test data", "test_dataloader()"], True),
    ("datamodule without predict_dataloader", lambda t: t.predict(BoringModel(), datamodule=_EmptyDataModule()),
     MisconfigurationException, ["No predict data", "predict_dataloader()"], True),
    ("ckpt_path=5", lambda t: t.fit(BoringModel(), _loader(), ckpt_path=5),
     ConfigTypeError, ["ckpt_path=5", "path", '"last"'], True),
    ("ckpt_path missing file", lambda t: t.fit(BoringModel(), _loader(), ckpt_path="nowhere/x.ckpt"),
     CheckpointError, ["not found", "nowhere/x.ckpt"], True),
    ('ckpt_path="best" without checkpointing', lambda t: t.validate(BoringModel(), _loader(), ckpt_path="best"),
     MisconfigurationException, ['ckpt_path="best"', "ModelCheckpoint"], True),
    ("predict(return_predictions='y')", lambda t: t.predict(BoringModel(), _loader(), return_predictions="y"),
     ConfigTypeError, ["return_predictions", "'y'"], True),
]


class _CountSteps(L.Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1


@pytest.mark.parametrize("call,exc,words,early", [c[1:] for c in USER_CODE], ids=[c[0] for c in USER_CODE])
def test_unusable_user_code_and_data_are_clear_errors(call, exc, words, early, quiet):
    counter = _CountSteps()
    trainer = L.Trainer(max_epochs=1, callbacks=[counter], **quiet)
    with pytest.raises(exc) as info:
        call(trainer)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert isinstance(info.value, (ValueError, TypeError, RuntimeError))
    if early:
        assert counter.batches == 0, "raised only after training started"
    else:
        assert counter.batches == 1, "raised at the first batch, where the bad value is first seen"


def test_returning_none_skips_the_batch(quiet):
    class SkipOdd(BoringModel):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    model = SkipOdd()
    trainer = L.Trainer(max_epochs=1, **quiet)
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((batch_idx, [p.detach().clone() for p in pl_module.parameters()]))

    trainer.callbacks.append(Watch())
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, _loader())
    weights = [before] + [w for _, w in seen]
    for i in range(1, len(weights)):
        changed = any(not torch.equal(a, b) for a, b in zip(weights[i - 1], weights[i]))
        assert changed == ((i - 1) % 2 == 0), f"batch {i - 1}"


def test_bad_input_table_size(capsys):
    n = len(BAD_ARGS) + len(MORE_BAD_ARGS) + len(USER_CODE)
    with capsys.disabled():
        print(f"\nbad inputs covered: {n} ({len(BAD_ARGS) + len(MORE_BAD_ARGS)} Trainer arguments, {len(USER_CODE)} user code and data)")
    assert n >= 80
