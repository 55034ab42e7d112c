"""Lightning's messages, exception classes and info logs where its users (and its tests) match
them: the text Lightning writes must appear; ours may add words after it."""

from __future__ import annotations

import signal

import pytest
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.callbacks import ModelCheckpoint
from ferrotrain.errors import MisconfigurationException
from ferrotrain.loggers import Logger
from ferrotrain.strategies import SingleDeviceStrategy

from .conftest import BoringModel, make_dataset


@pytest.mark.parametrize("name", ["limit_train_batches", "limit_val_batches", "limit_test_batches",
                                  "limit_predict_batches", "overfit_batches", "val_check_interval"])
@pytest.mark.parametrize("value", [1, 1.0])
def test_batch_limit_of_one_is_announced(caplog, name, value):
    L.Trainer(**{name: value}, logger=False)
    assert f"`Trainer({name}={value})` was configured so" in caplog.text
    caplog.clear()
    L.Trainer(logger=False)
    assert "was configured so" not in caplog.text


def test_one_and_one_point_zero_say_different_things(caplog):
    L.Trainer(limit_train_batches=1, logger=False)
    assert "configured so 1 batch per epoch will be used." in caplog.text
    caplog.clear()
    L.Trainer(limit_train_batches=1.0, logger=False)
    assert "configured so 100% of the batches per epoch will be used." in caplog.text
    assert "used.." not in caplog.text


def test_non_int_check_val_every_n_epoch_is_a_misconfiguration():
    with pytest.raises(MisconfigurationException, match="should be an integer."):
        L.Trainer(check_val_every_n_epoch=1.2)


@pytest.mark.parametrize("value", ["test", -1, 1.5])
def test_bad_reload_dataloaders_every_n_epochs_is_a_misconfiguration(value):
    with pytest.raises(MisconfigurationException, match="should be an int >= 0"):
        L.Trainer(reload_dataloaders_every_n_epochs=value)


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_eval_without_any_model_is_a_type_error(fn):
    with pytest.raises(TypeError, match=rf"{fn}\(\)` requires a `LightningModule"):
        getattr(L.Trainer(logger=False), fn)()


def test_save_checkpoint_without_model_is_an_attribute_error(tmp_path):
    with pytest.raises(AttributeError, match="Saving a checkpoint is only possible if a model is attached"):
        L.Trainer(logger=False).save_checkpoint(str(tmp_path / "x.ckpt"))


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_missing_ckpt_path_is_file_not_found(quiet, fn):
    loader = DataLoader(make_dataset(16), batch_size=8)
    with pytest.raises(FileNotFoundError, match="random.ckpt"):
        getattr(L.Trainer(**quiet), fn)(BoringModel(), loader, ckpt_path="random.ckpt")


class KeywordOnlyLogger(Logger):
    """A logger whose `log_metrics` takes keywords only, as Lightning calls it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    @property
    def name(self):
        return "kw"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, *, metrics, step=None):
        self.calls.append((dict(metrics), step))


def test_loggers_get_metrics_and_step_by_keyword(tmp_path):
    logger = KeywordOnlyLogger()
    ds = make_dataset(32)
    trainer = L.Trainer(default_root_dir=str(tmp_path), logger=logger, max_epochs=1, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    trainer.validate(BoringModel(), DataLoader(ds, batch_size=8))
    keys = set().union(*(m.keys() for m, _ in logger.calls))
    assert {"train_loss", "val_loss"} <= keys


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_best_without_a_best_checkpoint_uses_lightnings_text(tmp_path, fn):
    ds = make_dataset(16)
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ModelCheckpoint(save_top_k=0)])
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8))
    with pytest.raises(ValueError, match="is not configured to save the best"):
        getattr(trainer, fn)(BoringModel(), DataLoader(ds, batch_size=8), ckpt_path="best")


def test_best_without_model_checkpoint_names_it(quiet):
    trainer = L.Trainer(**quiet)
    with pytest.raises(ValueError, match=r'`.validate\(ckpt_path="best"\)` is set but `ModelCheckpoint` is not configured'):
        trainer.validate(BoringModel(), DataLoader(make_dataset(8), batch_size=8), ckpt_path="best")


def test_freeze_and_unfreeze_return_the_module():
    model = BoringModel()
    assert model.freeze() is model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.unfreeze() is model
    assert model.training and all(p.requires_grad for p in model.parameters())


class _RecordingStrategy(SingleDeviceStrategy):
    seen: list = []

    def on_exception(self, exc):
        # What a second Ctrl-C would do while the shutdown runs.
        type(self).seen.append((type(exc).__name__, signal.getsignal(signal.SIGINT)))
        return super().on_exception(exc)


def test_keyboard_interrupt_reaches_the_strategy_then_exits_with_status_1(quiet):
    class Interrupting(BoringModel):
        def training_step(self, batch, batch_idx):
            raise KeyboardInterrupt

    _RecordingStrategy.seen = []
    before = signal.getsignal(signal.SIGINT)
    trainer = L.Trainer(**quiet, strategy=_RecordingStrategy("cpu"), max_epochs=1)
    # Lightning ends the program after its graceful shutdown: `sys.exit(1)`.
    with pytest.raises(SystemExit) as info:
        trainer.fit(Interrupting(), DataLoader(make_dataset(16), batch_size=8))
    assert info.value.code == 1
    assert trainer.interrupted
    # Further Ctrl-C presses are ignored during the shutdown, and work again after it.
    assert _RecordingStrategy.seen == [("KeyboardInterrupt", signal.SIG_IGN)]
    assert signal.getsignal(signal.SIGINT) is before


def test_datamodule_str_lists_each_loader(tmp_path):
    import os

    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    dm = L.LightningDataModule.from_datasets(train_dataset=make_dataset(64), test_dataset=[make_dataset(8), Stream()])
    assert str(dm) == os.linesep.join([
        "{Train dataloader: size=64}", "{Validation dataloader: None}",
        "{Test dataloader: 1. size=8 ; 2. size=NA}", "{Predict dataloader: None}",
    ])


def test_possible_user_warning_is_a_user_warning():
    from ferrotrain.utilities.warnings import PossibleUserWarning

    assert issubclass(PossibleUserWarning, UserWarning)


# ---------------------------------------------------------------------------------------------
# Lightning's error text leads ours. Each case runs under ferrotrain, and under Lightning too with
# FERROTRAIN_CROSSCHECK=1: the pattern is what a Lightning user's `pytest.raises(match=...)` holds.


def _fit_with(Lib, **overrides):
    """Fit `model_class(Lib)` with its methods replaced by `overrides` (functions of self)."""
    import torch

    from tests.lightning_ref import loader, model_class, trainer

    model = type("M", (model_class(Lib),), overrides)()
    trainer(Lib, max_epochs=1, limit_val_batches=0).fit(model, loader(4))
    return torch


def _logging(value):
    def training_step(self, batch, batch_idx):
        self.log("foo", value)
        return super(type(self), self).training_step(batch, batch_idx)

    return dict(training_step=training_step)


def _unsized_loader():
    from tests.lightning_ref import Unsized

    return Unsized(4)


_MESSAGE_CASES = [
    ("max_epochs", lambda Lib: Lib.Trainer(max_epochs=-100), "`max_epochs` must be a non-negative integer or -1"),
    ("max_steps", lambda Lib: Lib.Trainer(max_steps=-2), "`max_steps` must be a non-negative integer or -1"),
    ("clip value type", lambda Lib: Lib.Trainer(gradient_clip_val=(1, 2)),
     r"`gradient_clip_val` should be an int or a float\. Got \(1, 2\)\."),
    ("clip algorithm", lambda Lib: Lib.Trainer(gradient_clip_algorithm="norm2"),
     r"`gradient_clip_algorithm` norm2 is invalid\. Allowed algorithms: \['value', 'norm'\]\."),
    ("limit out of range", lambda Lib: Lib.Trainer(limit_val_batches=1.2),
     r"You have passed invalid value 1\.2 for limit_val_batches, it has to be in \[0\.0, 1\.0\] or an int\."),
    ("float interval without epochs", lambda Lib: Lib.Trainer(val_check_interval=1.0, check_val_every_n_epoch=None),
     r"`val_check_interval` should be an integer or a time-based duration .* when `check_val_every_n_epoch=None`\."),
    ("fraction of an unsized loader",
     lambda Lib: Lib.Trainer(limit_train_batches=0.5, logger=False).fit(
         __import__("tests.lightning_ref", fromlist=["model_class"]).model_class(Lib)(), _unsized_loader()),
     r"When using an `IterableDataset`, `Trainer\(limit_train_batches\)` must be `1\.0` or an int\. An int "
     r"specifies `num_train_batches` to use\."),
    ("not a LightningModule", lambda Lib: Lib.Trainer(logger=False).fit(__import__("torch").nn.Linear(2, 2)),
     "`model` must be a `LightningModule`.*, got `Linear`"),
    ("early stopping mode", lambda Lib: Lib.pytorch_callbacks.EarlyStopping(monitor="x", mode="unknown"),
     "`mode` can be min, max, got unknown"),
    ("checkpoint mode", lambda Lib: Lib.pytorch_callbacks.ModelCheckpoint(mode="unknown"),
     "`mode` can be min, max but got unknown"),
    ("checkpoint top k", lambda Lib: Lib.pytorch_callbacks.ModelCheckpoint(save_top_k=-3),
     r"Invalid value for save_top_k=-3\. Must be >= -1"),
    ("checkpoint every n epochs", lambda Lib: Lib.pytorch_callbacks.ModelCheckpoint(every_n_epochs=-3),
     r"Invalid value for every_n_epochs=-3\. Must be >= 0"),
    ("checkpoint top k without monitor", lambda Lib: Lib.pytorch_callbacks.ModelCheckpoint(save_top_k=3),
     r"ModelCheckpoint\(save_top_k=3, monitor=None\) is not a valid configuration\. No quantity for top_k to track\."),
    ("checkpoint triggers", lambda Lib: Lib.pytorch_callbacks.ModelCheckpoint(every_n_train_steps=2, every_n_epochs=3),
     "Combination of parameters every_n_train_steps=2, every_n_epochs=3 and train_time_interval=None should be "
     "mutually exclusive"),
    ("log None", lambda Lib: _fit_with(Lib, **_logging(None)),
     r"`self\.log\(foo, None\)` was called, but `NoneType` values cannot be logged"),
    ("log a list", lambda Lib: _fit_with(Lib, **_logging([1, 2])),
     r"`self\.log\(foo, \[1, 2\]\)` was called, but `list` values cannot be logged"),
    ("log a nested dict", lambda Lib: _fit_with(Lib, **_logging({"a": {"b": 1}})),
     r"`self\.log\(foo, \{'a': \{'b': 1\}\}\)` was called, but nested dictionaries cannot be logged"),
    ("log a vector", lambda Lib: _fit_with(Lib, **_logging(__import__("torch").ones(2))),
     r"`self\.log\(foo, tensor\(\[1\., 1\.\]\)\)` was called, but the tensor must have a single element\."),
    ("unknown optimizer config", lambda Lib: _fit_with(Lib, configure_optimizers=lambda self: 1),
     "Unknown configuration for model optimizers"),
    ("clip twice", lambda Lib: _clip_twice(Lib),
     r"You have set `Trainer\(gradient_clip_val=0\.0001\)` and have passed `clip_gradients\(gradient_clip_val=0\.01\)`"),
]


def _clip_twice(Lib):
    from tests.lightning_ref import loader, model_class, trainer

    class M(model_class(Lib)):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=0.01)

    trainer(Lib, max_epochs=1, gradient_clip_val=1e-4, limit_val_batches=0).fit(M(), loader(4))


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny runs' notes (no val loader, few workers)
@pytest.mark.parametrize("case, call, pattern", _MESSAGE_CASES, ids=[c[0] for c in _MESSAGE_CASES])
def test_lightnings_message_text_leads(case, call, pattern):
    import types

    from tests.lightning_ref import callbacks_module, libraries

    for lib in libraries():
        # One namespace per library: its Trainer, and its callbacks under one name.
        ns = types.SimpleNamespace(Trainer=lib.Trainer, LightningModule=lib.LightningModule,
                                   pytorch_callbacks=callbacks_module(lib), __name__=lib.__name__)
        with pytest.raises(Exception, match=pattern):  # noqa: PT011 - the class is Lightning's, checked elsewhere
            call(ns)


def _warnings_of(call):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in seen if issubclass(w.category, UserWarning)]


def test_default_max_epochs_is_announced_at_fit_only_when_nothing_bounds_it(tmp_path):
    from tests.lightning_ref import libraries, loader, model_class, trainer

    text = "`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set `max_epochs=-1`."
    for Lib in libraries():
        class Stop(model_class(Lib)):
            def training_step(self, batch, batch_idx):
                self.trainer.should_stop = True
                return super().training_step(batch, batch_idx)

        for kwargs, announced in ((dict(max_epochs=None), True), (dict(max_epochs=3), False),
                                  (dict(max_steps=2), False), (dict(fast_dev_run=1), False)):
            t = trainer(Lib, limit_val_batches=0, **kwargs)
            assert text not in _warnings_of(lambda: None)
            got = _warnings_of(lambda: t.fit(Stop(), loader(4)))
            assert (text in got) == announced, (Lib.__name__, kwargs)


def test_submodules_in_eval_mode_at_training_start_are_warned_about():
    import torch

    from tests.lightning_ref import libraries, loader, model_class, trainer

    text = "Found 1 module(s) in eval mode at the start of training."
    for Lib in libraries():
        model = model_class(Lib)()
        got = _warnings_of(lambda: trainer(Lib, max_epochs=1, limit_val_batches=0).fit(model, loader(4)))
        assert not any("eval mode" in w for w in got)
        model.frozen = torch.nn.Linear(1, 1).eval()
        got = _warnings_of(lambda: trainer(Lib, max_epochs=1, limit_val_batches=0).fit(model, loader(4)))
        assert any(w.startswith(text) for w in got), got


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny run's notes
def test_a_stop_before_min_epochs_is_announced_once(caplog):
    import logging

    from tests.lightning_ref import libraries, loader, model_class, trainer

    text = "Trainer was signaled to stop but the required `min_epochs=3` or `min_steps=None` has not been met."
    for Lib in libraries():
        class StopAtOnce(model_class(Lib)):
            def training_step(self, batch, batch_idx):
                self.trainer.should_stop = True
                return super().training_step(batch, batch_idx)

        caplog.clear()
        t = trainer(Lib, min_epochs=3, max_epochs=10, limit_val_batches=0)
        with caplog.at_level(logging.INFO):
            t.fit(StopAtOnce(), loader(4))
        assert t.current_epoch == 3  # the minimum holds
        assert sum(text in r.getMessage() for r in caplog.records) == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_fewer_batches_than_the_logging_interval_are_warned_about(tmp_path):
    from tests.lightning_ref import csv_logger, libraries, loader, model_class, trainer

    text = "The number of training batches (2) is smaller than the logging interval Trainer(log_every_n_steps=3)."
    for Lib in libraries():
        for kwargs, warned in ((dict(logger=csv_logger(Lib, tmp_path)), True), (dict(logger=False), False),
                               (dict(logger=csv_logger(Lib, tmp_path), fast_dev_run=2), False)):
            t = trainer(Lib, max_epochs=1, log_every_n_steps=3, limit_val_batches=0, **kwargs)
            got = _warnings_of(lambda: t.fit(model_class(Lib)(), loader(4)))
            assert any(w.startswith(text) for w in got) == warned, (Lib.__name__, kwargs, got)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_log_without_a_trainer_or_without_a_logger_warns():
    from tests.lightning_ref import libraries, loader, model_class, trainer

    for Lib in libraries():
        model = model_class(Lib)()
        got = _warnings_of(lambda: model.log("foo", 1.0))
        assert any("`self.trainer` reference is not registered on the model yet" in w for w in got), got

        class LogsToLogger(model_class(Lib)):
            def training_step(self, batch, batch_idx):
                self.log("foo", 1.0, logger=True)
                return super().training_step(batch, batch_idx)

        got = _warnings_of(lambda: trainer(Lib, max_epochs=1, limit_val_batches=0).fit(LogsToLogger(), loader(4)))
        assert any(w.startswith("You called `self.log('foo', ..., logger=True)` but have no logger configured.")
                   for w in got), got
