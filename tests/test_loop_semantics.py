"""Loop semantics that Lightning's users rely on: hooks switched off by None, opt-out defaults
resolved late (so `barebones=True` works alone), and the step signatures the loops accept."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.errors import MisconfigurationException
from tests.conftest import BoringModel, make_dataset


def test_validation_step_set_to_none_skips_validation(quiet):
    model = BoringModel()
    model.validation_step = None  # an instance attribute of None means "not overridden"
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, **quiet)
    ds = make_dataset()
    trainer.fit(model, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    assert trainer.global_step == 2
    assert "val_loss" not in trainer.callback_metrics


def test_val_dataloader_set_to_none_is_not_requested(quiet):
    class WithLoaders(BoringModel):
        def train_dataloader(self):
            return DataLoader(make_dataset(), batch_size=8)

    model = WithLoaders()
    model.val_dataloader = None
    model.validation_step = None
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, **quiet)
    trainer.fit(model)
    assert trainer.global_step == 2


def test_barebones_alone_turns_the_opt_outs_off(tmp_path):
    trainer = L.Trainer(barebones=True, default_root_dir=str(tmp_path), max_steps=2)
    assert trainer.barebones
    assert trainer.loggers == []
    assert trainer.checkpoint_callback is None
    assert trainer.progress_bar_callback is None
    assert trainer.num_sanity_val_steps == 0
    assert trainer.log_every_n_steps == 0
    ds = make_dataset()
    trainer.fit(BoringModel(), DataLoader(ds, batch_size=8))
    assert trainer.global_step == 2
    assert not list(tmp_path.iterdir())  # no logs, no checkpoints


@pytest.mark.parametrize("name, value", [
    ("enable_checkpointing", True), ("enable_progress_bar", True), ("enable_model_summary", True),
    ("logger", True), ("log_every_n_steps", 5), ("num_sanity_val_steps", 2), ("fast_dev_run", True),
    ("detect_anomaly", True), ("profiler", "simple"),
])
def test_barebones_rejects_an_explicit_opt_in(name, value):
    with pytest.raises(ValueError, match=rf"barebones=True, {name}="):
        L.Trainer(barebones=True, **{name: value})


def test_opt_outs_default_on_without_barebones(tmp_path):
    trainer = L.Trainer(default_root_dir=str(tmp_path))
    assert trainer.num_sanity_val_steps == 2
    assert trainer.log_every_n_steps == 50
    assert trainer.checkpoint_callback is not None
    assert trainer.progress_bar_callback is not None
    assert len(trainer.loggers) == 1


class _NoBatchIdx(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def training_step(self, batch):
        self.seen.append("train")
        return super().training_step(batch, 0)

    def validation_step(self, batch):
        self.seen.append("val")

    def test_step(self, batch):
        self.seen.append("test")


def test_steps_without_batch_idx_are_called_with_the_batch_only(quiet):
    model = _NoBatchIdx()
    ds = make_dataset(16)
    trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=0, **quiet)
    trainer.fit(model, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    trainer.test(model, DataLoader(ds, batch_size=8))
    assert model.seen == ["train", "train", "val", "val", "test", "test"]


def test_required_dataloader_idx_with_one_dataloader_is_a_runtime_error(quiet):
    class Extra(BoringModel):
        def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx): ...

    trainer = L.Trainer(**quiet)
    with pytest.raises(RuntimeError, match=r"single `val_dataloader`, but have included `dataloader_idx` in "
                                           r"`Extra.on_validation_batch_end\(\)`"):
        trainer.validate(Extra(), DataLoader(make_dataset(16), batch_size=8))


def test_dataloader_idx_with_a_default_is_optional_and_passed_with_several_loaders(quiet):
    class Default(BoringModel):
        seen: list = []

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.seen.append(dataloader_idx)

    ds = make_dataset(16)
    trainer = L.Trainer(**quiet)
    trainer.validate(Default(), DataLoader(ds, batch_size=8))
    trainer.validate(Default(), [DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16)])
    assert Default.seen == [0, 0, 0, 0, 1]


def test_several_dataloaders_need_dataloader_idx_and_kwargs_do_not_count(quiet):
    class KwargsOnly(BoringModel):
        def validation_step(self, batch, batch_idx, **kwargs): ...

    class VarArgs(BoringModel):
        def validation_step(self, batch, batch_idx, *args): ...

    ds = make_dataset(16)
    two = [DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8)]
    trainer = L.Trainer(**quiet)
    with pytest.raises(RuntimeError, match=r"multiple `val_dataloader`, but no `dataloader_idx` argument in "
                                           r"`KwargsOnly.validation_step\(\)`"):
        trainer.validate(KwargsOnly(), two)
    trainer.validate(VarArgs(), two)  # *args takes the index


@pytest.mark.parametrize("sanity, check_every, reload_every, train_epochs, val_epochs", [
    (0, 3, 4, [0, 4, 8], [2, 8]),  # first requested at the first validation epoch
    (1, 3, 4, [0, 4, 8], [2, 8]),  # a sanity check on a non-validating epoch does not count
    (1, 1, 1, list(range(10)), list(range(1, 10))),  # the sanity check's request serves epoch 0
    (0, 2, 2, [0, 2, 4, 6, 8], [1, 3, 5, 7, 9]),
    (1, 1, 2, [0, 2, 4, 6, 8], [2, 4, 6, 8]),
])
def test_reload_dataloaders_every_n_epochs_requests_at_lightnings_epochs(
        quiet, sanity, check_every, reload_every, train_epochs, val_epochs):
    asked = {"train": [], "val": [], "sanity": []}

    class Reloading(BoringModel):
        def train_dataloader(self):
            asked["train"].append(self.current_epoch)
            return DataLoader(make_dataset(16), batch_size=8)

        def val_dataloader(self):
            asked["sanity" if self.trainer.sanity_checking else "val"].append(self.current_epoch)
            return DataLoader(make_dataset(16), batch_size=8)

    trainer = L.Trainer(max_epochs=10, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=sanity,
                        check_val_every_n_epoch=check_every, reload_dataloaders_every_n_epochs=reload_every, **quiet)
    trainer.fit(Reloading())
    assert asked["train"] == train_epochs
    assert asked["val"] == val_epochs
    assert asked["sanity"] == ([0] if sanity else [])


def test_explicit_deterministic_false_switches_torch_determinism_off():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        L.Trainer(logger=False)  # the default leaves torch's flag as it is
        assert torch.are_deterministic_algorithms_enabled()
        L.Trainer(logger=False, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("n, reported", [(True, True), (1, True), (3, 3)])
def test_fast_dev_run_reports_lightnings_attributes(tmp_path, n, reported):
    from ferrotrain.loggers.logger import DummyLogger

    trainer = L.Trainer(default_root_dir=str(tmp_path), fast_dev_run=n, enable_progress_bar=False)
    assert trainer.fast_dev_run is reported or trainer.fast_dev_run == reported
    batches = 1 if n is True else n
    assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (batches,) * 3
    assert isinstance(trainer.logger, DummyLogger)
    trainer.fit(BoringModel(), DataLoader(make_dataset(), batch_size=4), DataLoader(make_dataset(), batch_size=4))
    assert trainer.num_training_batches == batches
    assert not list(tmp_path.iterdir())  # the dummy logger writes nothing


def test_fast_dev_run_without_loggers_keeps_none():
    assert L.Trainer(fast_dev_run=True, logger=False).loggers == []


def test_negative_fast_dev_run_is_refused_with_lightnings_words():
    with pytest.raises(MisconfigurationException,
                       match="fast_dev_run=-1 is not a valid configuration. It should be >= 0"):
        L.Trainer(fast_dev_run=-1)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny run's notes
@pytest.mark.parametrize("mode, expected", [
    ("max_size_cycle", [{"a": 0, "b": 3}, {"a": 1, "b": 4}, {"a": 2, "b": 3}]),
    ("min_size", [{"a": 0, "b": 3}, {"a": 1, "b": 4}]),
    ("max_size", [{"a": 0, "b": 3}, {"a": 1, "b": 4}, {"a": 2, "b": None}]),
])
@pytest.mark.parametrize("fn", ["validate", "test"])
def test_zipped_combined_loader_in_evaluation_counts_each_iterable(tmp_path, mode, expected, fn):
    """Validate/test run a zipping CombinedLoader's combined batches, and report, as Lightning
    does, each iterable's own number of batches."""
    import importlib

    from tests.lightning_ref import libraries, model_class

    for lib in libraries():
        utilities = importlib.import_module("lightning.pytorch.utilities" if lib.__name__ == "lightning"
                                            else "ferrotrain.utilities")
        seen = []

        class M(model_class(lib)):
            def validation_step(self, batch, batch_idx):
                seen.append(batch)

            def test_step(self, batch, batch_idx):
                seen.append(batch)

        trainer = lib.Trainer(default_root_dir=tmp_path, barebones=True)
        getattr(trainer, fn)(M(), utilities.CombinedLoader({"a": [0, 1, 2], "b": [3, 4]}, mode))
        assert (trainer.num_val_batches if fn == "validate" else trainer.num_test_batches) == [3, 2]
        assert seen == expected


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny run's notes
def test_fast_dev_run_validates_even_with_limit_val_batches_zero(tmp_path):
    """`fast_dev_run` replaces every batch limit (Lightning): limit_val_batches=0 does not stop it."""
    from tests.lightning_ref import libraries, loader, model_class, trainer

    for lib in libraries():
        seen = []

        class M(model_class(lib)):
            def validation_step(self, batch, batch_idx):
                seen.append(batch_idx)

        t = trainer(lib, fast_dev_run=True, limit_val_batches=0.0, limit_test_batches=0)
        t.fit(M(), loader(8), loader(8))
        assert seen == [0]
        assert (t.limit_val_batches, t.limit_test_batches) == (1, 1)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny run's notes (and the eval-mode warning)
def test_a_submodule_kept_in_eval_mode_stays_there_through_every_loop(tmp_path):
    """Evaluation puts the module in eval mode and then back to each submodule's own mode
    (Lightning's `_ModuleMode`), so a frozen submodule in eval mode is still so when training."""
    import torch

    from tests.lightning_ref import libraries, loader, model_class, trainer

    for lib in libraries():
        seen = []

        class M(model_class(lib)):
            def __init__(self):
                super().__init__()
                self.frozen = torch.nn.Linear(1, 1).eval()

            def training_step(self, batch, batch_idx):
                seen.append(("train", self.layer.training, self.frozen.training))
                return super().training_step(batch, batch_idx)

            def validation_step(self, batch, batch_idx):
                seen.append(("val", self.layer.training, self.frozen.training))

            def predict_step(self, batch, batch_idx):
                seen.append(("predict", self.layer.training, self.frozen.training))
                return batch

        model = M()
        t = trainer(lib, max_epochs=1, val_check_interval=1, limit_train_batches=2, limit_val_batches=1,
                    num_sanity_val_steps=1)
        t.fit(model, loader(4), loader(4))
        t.predict(model, loader(2))
        assert seen == [("val", False, False), ("train", True, False), ("val", False, False),
                        ("train", True, False), ("val", False, False), ("predict", False, False)]
        assert model.layer.training and not model.frozen.training  # back after predict too
