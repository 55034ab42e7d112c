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


def test_freeze_returns_the_module():
    model = BoringModel()
    assert model.freeze() is model
    assert not model.training and not any(p.requires_grad for p in model.parameters())


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
