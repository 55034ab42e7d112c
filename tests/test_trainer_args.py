"""Constructor arguments: the reference defaults, the accepted types, and a clear error naming the
parameter, the value and what is allowed for every bad value, raised before anything runs."""

from __future__ import annotations

import inspect

import pytest

import ferrotrain as L
from ferrotrain.errors import ConfigTypeError, MisconfigurationException, NotSupportedYetError

REFERENCE_DEFAULTS = {
    "max_epochs": 1000, "max_steps": -1, "min_epochs": 1, "accelerator": "auto", "devices": "auto",
    "strategy": "auto", "precision": 32, "callbacks": None, "logger": None, "log_every_n_steps": None,
    "enable_progress_bar": None, "accumulate_grad_batches": 1, "gradient_clip_val": None,
    "gradient_clip_algorithm": "norm", "val_check_interval": 1.0, "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": None, "enable_checkpointing": None, "default_root_dir": None, "deterministic": None,
}


def test_defaults_match_the_reference() -> None:
    params = inspect.signature(L.Trainer).parameters
    for name, default in REFERENCE_DEFAULTS.items():
        assert name in params, name
        assert params[name].default == default, name
        assert type(params[name].default) in (type(default), type(None)) or isinstance(params[name].default, type(default))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(devices=1), dict(devices="1"), dict(devices="auto"), dict(devices=-1), dict(devices=[0]),
        dict(devices="0,"), dict(precision=32), dict(precision="32"), dict(precision="32-true"),
        dict(precision="bf16-mixed"), dict(val_check_interval=0.25),
        dict(val_check_interval=10), dict(check_val_every_n_epoch=None, val_check_interval=10),
        dict(max_epochs=-1), dict(max_epochs=None), dict(min_epochs=0), dict(gradient_clip_val=0.5),
        dict(gradient_clip_val=1, gradient_clip_algorithm="value"), dict(num_sanity_val_steps=-1),
        dict(log_every_n_steps=0), dict(deterministic=True), dict(deterministic="warn"),
        dict(default_root_dir="some/dir"), dict(accelerator="cpu"), dict(strategy="single_device"),
    ],
)
def test_accepted_values(kwargs, tmp_path) -> None:
    kwargs = {**kwargs}
    if kwargs.get("default_root_dir") == "some/dir":
        kwargs["default_root_dir"] = tmp_path / "some" / "dir"
    L.Trainer(**kwargs)
    import torch

    torch.use_deterministic_algorithms(False)


BAD = [
    # (kwargs, exception type, words the message must contain)
    (dict(max_epochs="ten"), ConfigTypeError, ["max_epochs", "'ten'", "int"]),
    (dict(max_epochs=-2), MisconfigurationException, ["max_epochs", "-2", ">= -1"]),
    (dict(max_epochs=2.5), ConfigTypeError, ["max_epochs", "2.5"]),
    (dict(max_steps=-5), MisconfigurationException, ["max_steps", "-5"]),
    (dict(max_steps=True), ConfigTypeError, ["max_steps", "True"]),
    (dict(min_epochs=-1), MisconfigurationException, ["min_epochs", "-1"]),
    (dict(min_epochs=5, max_epochs=2), MisconfigurationException, ["min_epochs", "max_epochs"]),
    (dict(accelerator="quantum"), MisconfigurationException, ["accelerator", "'quantum'", "'cpu'", "'gpu'"]),
    (dict(accelerator=3), ConfigTypeError, ["accelerator", "3"]),
    (dict(devices=0), MisconfigurationException, ["devices", "0"]),
    (dict(devices="two"), MisconfigurationException, ["devices", "'two'"]),
    (dict(devices=1.5), ConfigTypeError, ["devices", "1.5"]),
    (dict(devices=[0, 0]), MisconfigurationException, ["devices", "[0, 0]"]),
    (dict(strategy="warp_drive"), MisconfigurationException, ["strategy", "'warp_drive'", "'ddp'", "'fsdp'"]),
    (dict(precision="8-bit"), MisconfigurationException, ["precision", "'8-bit'", "'bf16-mixed'"]),
    (dict(precision=32.0), ConfigTypeError, ["precision", "32.0"]),
    (dict(callbacks="early_stopping"), ConfigTypeError, ["callbacks", "'early_stopping'"]),
    (dict(callbacks=[object()]), ConfigTypeError, ["callbacks", "item 0"]),
    (dict(logger="tensorboard"), ConfigTypeError, ["logger", "'tensorboard'"]),
    (dict(log_every_n_steps=-1), MisconfigurationException, ["log_every_n_steps", "-1"]),
    (dict(log_every_n_steps="50"), ConfigTypeError, ["log_every_n_steps", "'50'"]),
    (dict(enable_progress_bar="yes"), ConfigTypeError, ["enable_progress_bar", "'yes'", "True or False"]),
    (dict(enable_checkpointing=1), ConfigTypeError, ["enable_checkpointing", "1"]),
    (dict(accumulate_grad_batches=0), MisconfigurationException, ["accumulate_grad_batches", "0", ">= 1"]),
    (dict(accumulate_grad_batches=2.0), ConfigTypeError, ["accumulate_grad_batches", "2.0"]),
    (dict(gradient_clip_val=-1.0), MisconfigurationException, ["gradient_clip_val", "-1.0"]),
    (dict(gradient_clip_val="1"), ConfigTypeError, ["gradient_clip_val", "'1'"]),
    (dict(gradient_clip_algorithm="l2"), MisconfigurationException, ["gradient_clip_algorithm", "'l2'", "'norm'", "'value'"]),
    (dict(val_check_interval=1.5), MisconfigurationException, ["val_check_interval", "1.5"]),
    (dict(val_check_interval=0), MisconfigurationException, ["val_check_interval", "0"]),
    (dict(val_check_interval="1"), ConfigTypeError, ["val_check_interval", "'1'"]),
    (dict(check_val_every_n_epoch=0), MisconfigurationException, ["check_val_every_n_epoch", "0"]),
    (dict(check_val_every_n_epoch=None, val_check_interval=0.5), MisconfigurationException, ["val_check_interval", "int"]),
    (dict(num_sanity_val_steps=-2), MisconfigurationException, ["num_sanity_val_steps", "-2"]),
    (dict(default_root_dir=5), ConfigTypeError, ["default_root_dir", "5"]),
    (dict(deterministic="sometimes"), MisconfigurationException, ["deterministic", "'sometimes'"]),
    (dict(limit_train_batches=1.5), MisconfigurationException, ["limit_train_batches", "1.5"]),
]


@pytest.mark.parametrize("kwargs,exc,words", BAD, ids=[next(iter(k)) + "=" + repr(next(iter(k.values()))) for k, _, _ in BAD])
def test_bad_values_are_clear_errors(kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        L.Trainer(**kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    # Users catch the standard exceptions.
    assert isinstance(info.value, (ValueError, TypeError))


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(strategy="ddp_fork"), ["strategy", "'ddp_fork'", "not supported", "ddp_spawn"]),
        (dict(profiler="advanced"), ["profiler", "not supported yet"]),
    ],
)
def test_valid_but_unimplemented_settings_say_so(kwargs, words) -> None:
    with pytest.raises(NotSupportedYetError) as info:
        L.Trainer(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_gpu_without_cuda_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MisconfigurationException, match="accelerator='gpu'.*CUDA"):
        L.Trainer(accelerator="gpu")


def test_deepspeed_without_the_package_names_it() -> None:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed")
    with pytest.raises(MisconfigurationException, match="deepspeed"):
        L.Trainer(strategy="deepspeed_stage_2")


def test_enable_checkpointing_false_with_a_checkpoint_callback() -> None:
    from ferrotrain.callbacks import ModelCheckpoint

    with pytest.raises(MisconfigurationException, match="enable_checkpointing=False"):
        L.Trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint()])


def test_default_callbacks_and_logger(tmp_path) -> None:
    from ferrotrain.callbacks import ModelCheckpoint, ModelSummary, TQDMProgressBar

    t = L.Trainer(default_root_dir=str(tmp_path))
    kinds = [type(c) for c in t.callbacks]
    assert TQDMProgressBar in kinds and ModelSummary in kinds
    assert kinds[-1] is ModelCheckpoint  # checkpointing runs last, as in Lightning
    assert type(t.logger).__name__ == "TensorBoardLogger"
    assert L.Trainer(logger=False).loggers == []


def test_max_epochs_default_follows_max_steps(tmp_path) -> None:
    # As in Lightning: the 1000-epoch default applies only when no step limit is set; the fit
    # resolves it (reported None before).
    from tests.lightning_ref import loader, model_class

    seen = []

    class Peek(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen.append(trainer.max_epochs)
            trainer.should_stop = True

    for kwargs in ({}, {"max_steps": 10}, {"max_epochs": 3, "max_steps": 10}):
        t = L.Trainer(callbacks=[Peek()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, **kwargs)
        if kwargs:
            t.fit(model_class(L)(), loader(8))
        else:  # Lightning says so at the fit, as a PossibleUserWarning
            from ferrotrain.utilities.warnings import PossibleUserWarning

            with pytest.warns(PossibleUserWarning, match="`max_epochs` was not set. Setting it to 1000 epochs."):
                t.fit(model_class(L)(), loader(8))
    assert seen == [1000, -1, 3]


def test_home_is_expanded_in_root_dir_and_checkpoint_dirpath(tmp_path, monkeypatch) -> None:
    """`~` means the user's home in default_root_dir and ModelCheckpoint(dirpath), as in
    Lightning; a folder literally named `~` further down stays one."""
    import os
    from pathlib import Path

    from ferrotrain.callbacks import ModelCheckpoint

    monkeypatch.setenv("HOME", str(tmp_path))
    assert L.Trainer(default_root_dir="~/runs").default_root_dir == str(tmp_path / "runs")
    assert ModelCheckpoint(dirpath=Path("~/ckpts")).dirpath == str(tmp_path / "ckpts")
    monkeypatch.chdir(tmp_path)
    assert ModelCheckpoint(dirpath="./~/ckpts").dirpath == os.path.realpath(tmp_path / "~" / "ckpts")


def scen_epoch_limits_before_and_after_fit(Lib):
    from tests.lightning_ref import loader, model_class, trainer

    before = [(t.max_epochs, t.min_epochs) for t in (trainer(Lib), trainer(Lib, max_epochs=3, min_epochs=2))]
    stepped = trainer(Lib, max_steps=2)
    stepped.fit(model_class(Lib)(), loader(8))
    bounded = trainer(Lib, max_steps=2, min_steps=1)
    bounded.fit(model_class(Lib)(), loader(8))
    return before, (stepped.max_epochs, stepped.min_epochs), (bounded.max_epochs, bounded.min_epochs)


def test_epoch_limits_are_none_until_a_fit_resolves_them() -> None:
    """Left to their defaults, max_epochs and min_epochs read None before fit; the fit resolves
    max_epochs to -1 when max_steps bounds it, and min_epochs to 0, or 1 when min_steps is set."""
    from tests.lightning_ref import check

    check(scen_epoch_limits_before_and_after_fit, ([(None, None), (3, 2)], (-1, 0), (-1, 1)))


def test_pl_trainer_environment_variables_are_defaults(monkeypatch) -> None:
    """PL_TRAINER_<ARG> supplies an argument the caller left out, parsed as a literal; an
    argument passed explicitly wins; the signature is unchanged."""
    monkeypatch.setenv("PL_TRAINER_LOGGER", "False")
    monkeypatch.setenv("PL_TRAINER_MAX_STEPS", "7")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")
    t = L.Trainer()
    assert t.logger is None and t.max_steps == 7 and t.accelerator_name == "cpu"
    t = L.Trainer(max_steps=42, logger=True)
    assert t.max_steps == 42 and t.logger is not None
    assert "max_steps" in inspect.signature(L.Trainer).parameters
    monkeypatch.setenv("PL_TRAINER_MAX_STEPS", "seven")
    with pytest.raises(ConfigTypeError, match="max_steps"):
        L.Trainer()
