"""TQDMProgressBar's Lightning API: the bar references kept after each loop, the `init_*_tqdm`
constructors subclasses override, and tqdm's `TQDM_MINITERS` variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.callbacks import TQDMProgressBar

from .conftest import BoringModel, make_dataset


def _trainer(tmp_path, bar, **kwargs):
    return L.Trainer(default_root_dir=str(tmp_path), callbacks=[bar], logger=False, enable_checkpointing=False,
                     enable_model_summary=False, **kwargs)


def test_bar_references_survive_their_loops(tmp_path):
    ds = make_dataset(32)
    bar = TQDMProgressBar()
    trainer = _trainer(tmp_path, bar, max_epochs=2, num_sanity_val_steps=2)
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16))
    assert bar.train_progress_bar.total == 4
    assert bar.val_progress_bar.total == 2
    trainer.test(BoringModel(), DataLoader(ds, batch_size=4))
    assert bar.test_progress_bar.total == 8
    assert bar.train_progress_bar.total == 4


def test_sanity_bar_is_the_val_bar_with_the_sanity_total(tmp_path):
    seen = {}

    class Recording(TQDMProgressBar):
        def on_sanity_check_end(self, *args):
            seen["sanity"] = self.val_progress_bar.total
            super().on_sanity_check_end(*args)

        def on_validation_epoch_end(self, *args):
            seen["val"] = self.val_progress_bar.total
            super().on_validation_epoch_end(*args)

    ds = make_dataset(40)
    trainer = _trainer(tmp_path, Recording(), max_epochs=1, limit_train_batches=1, num_sanity_val_steps=2,
                       limit_val_batches=5)
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    assert seen == {"sanity": 2, "val": 5}


def test_unset_reference_is_a_type_error():
    with pytest.raises(TypeError, match="_predict_progress_bar` reference has not been set yet"):
        TQDMProgressBar().predict_progress_bar


@pytest.mark.parametrize("leave, calls", [(True, 4), (False, 1)])
def test_init_train_tqdm_once_or_once_per_epoch(tmp_path, leave, calls):
    class Counting(TQDMProgressBar):
        made = 0

        def init_train_tqdm(self):
            type(self).made += 1
            return super().init_train_tqdm()

    ds = make_dataset(16)
    Counting.made = 0
    trainer = _trainer(tmp_path, Counting(leave=leave), max_epochs=3, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    assert Counting.made == calls


@pytest.mark.parametrize("rate, env, expected", [(0, "1", 1), (1, "0", 1), (2, "1", 2), (1, "2", 2)])
def test_tqdm_miniters_raises_the_refresh_rate(rate, env, expected):
    code = f"from ferrotrain.callbacks import TQDMProgressBar; print(TQDMProgressBar(refresh_rate={rate}).refresh_rate)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TQDM_MINITERS": env},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_tqdm_class_formats_numbers_as_the_bar_does_and_needs_tqdm_for_a_bar():
    # Lightning's `callbacks.progress.tqdm_progress.Tqdm`: its `format_num` pads floats to 5 characters.
    from ferrotrain.callbacks.progress.tqdm_progress import Tqdm

    values = [1, 1.0, 0.1, 1e-3, 1e-5, "1.0", "10000", "abc"]
    assert [Tqdm.format_num(v) for v in values] == ["1", "1.000", "0.100", "0.001", "1e-5", "1.000", "10000", "abc"]
    try:
        import tqdm  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match="tqdm"):
            Tqdm(total=3)
    else:
        assert Tqdm(total=3, disable=True).total == 3


@pytest.mark.parametrize(("max_epochs", "every", "expected"), [(1, 2, [0]), (4, 2, [0, 2, 0, 2]), (3, 1, [2, 2, 2])])
def test_total_val_batches_is_zero_on_epochs_that_skip_validation(tmp_path, max_epochs, every, expected):
    seen = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.progress_bar_callback.total_val_batches)

    ds = make_dataset(32)
    trainer = L.Trainer(default_root_dir=str(tmp_path), callbacks=[Watch()], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, max_epochs=max_epochs, num_sanity_val_steps=0,
                        limit_val_batches=2, check_val_every_n_epoch=every)
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    assert seen == expected


def test_total_val_batches_is_zero_when_validation_is_off(tmp_path):
    seen = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.progress_bar_callback.total_val_batches)

    trainer = L.Trainer(default_root_dir=str(tmp_path), callbacks=[Watch()], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, max_epochs=1, limit_val_batches=0)
    trainer.fit(BoringModel(), DataLoader(make_dataset(32), batch_size=8), DataLoader(make_dataset(32), batch_size=8))
    assert seen == [0]


def test_a_turned_off_bar_keeps_its_references_and_totals_and_prints_nothing(tmp_path, capsys):
    ds = make_dataset(32)
    bar = TQDMProgressBar(refresh_rate=0)
    trainer = _trainer(tmp_path, bar, max_epochs=2, num_sanity_val_steps=2)
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16))
    trainer.test(BoringModel(), DataLoader(ds, batch_size=4))
    assert bar.is_disabled
    assert bar.train_progress_bar.total == 4 and bar.train_progress_bar.disable
    assert bar.val_progress_bar.total == 2
    assert bar.test_progress_bar.total == 8
    assert "Epoch" not in capsys.readouterr().out
