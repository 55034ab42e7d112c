"""Lightning's public names at Lightning's paths: each name we export resolves to the real object,
and (when Lightning is installed) every name Lightning exports from the modules we cover exists here."""

import importlib

import pytest

import ferrotrain

# module path under ferrotrain -> names it must export (Lightning 2.6's names in those modules)
EXPECTED = {
    "ferrotrain.accelerators": ["Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator",
                                "XLAAccelerator", "find_usable_cuda_devices"],
    "ferrotrain.core": ["LightningModule", "LightningDataModule"],
    "ferrotrain.trainer": ["Trainer", "seed_everything"],
    "ferrotrain.utilities": ["AttributeDict", "CombinedLoader", "grad_norm", "move_data_to_device",
                             "rank_zero_info", "rank_zero_only", "rank_zero_warn", "GradClipAlgorithmType",
                             "LightningEnum"],
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_names_resolve(module):
    mod = importlib.import_module(module)
    for name in EXPECTED[module]:
        assert name in mod.__all__, name
        assert getattr(mod, name) is not None


def test_same_objects_as_top_level():
    from ferrotrain.core import LightningDataModule, LightningModule
    from ferrotrain.trainer import Trainer, seed_everything
    assert LightningModule is ferrotrain.LightningModule
    assert LightningDataModule is ferrotrain.LightningDataModule
    assert Trainer is ferrotrain.Trainer
    assert seed_everything is ferrotrain.seed_everything


def test_unknown_name_is_attribute_error():
    import ferrotrain.core
    with pytest.raises(AttributeError, match="no_such_name"):
        ferrotrain.core.no_such_name


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_matches_lightning(module):
    lp = pytest.importorskip("lightning.pytorch")
    theirs = importlib.import_module(module.replace("ferrotrain", lp.__name__, 1))
    ours = importlib.import_module(module)
    wanted = [n for n in EXPECTED[module] if n in getattr(theirs, "__all__", [])]
    assert wanted, "Lightning no longer exports these names here"
    assert [n for n in wanted if not hasattr(ours, n)] == []


def test_accelerator_instance_selects_device(tmp_path):
    import torch
    from ferrotrain.accelerators import CPUAccelerator
    from ferrotrain.trainer.config import _check_accelerator
    assert _check_accelerator(CPUAccelerator()) == "cpu"
    with pytest.raises((TypeError, ValueError), match="accelerator"):
        _check_accelerator(object())
    assert CPUAccelerator.is_available() and CPUAccelerator.auto_device_count() == 1
    from ferrotrain.accelerators import CUDAAccelerator
    assert CUDAAccelerator.auto_device_count() == torch.cuda.device_count()


def test_find_usable_cuda_devices_rejects_bad_count():
    from ferrotrain.accelerators import find_usable_cuda_devices
    with pytest.raises(ValueError, match="num_devices"):
        find_usable_cuda_devices(-2)


def test_trainer_accepts_accelerator_instance(quiet, loaders):
    from tests.conftest import BoringModel
    from ferrotrain.accelerators import CPUAccelerator
    model = BoringModel()
    before = model.layer.weight.detach().clone()
    trainer = ferrotrain.Trainer(accelerator=CPUAccelerator(), max_steps=3, **quiet)
    trainer.fit(model, loaders[0])
    assert trainer.global_step == 3
    assert model.layer.weight.device.type == "cpu"
    assert not model.layer.weight.detach().equal(before)


def test_advanced_profiler_reports_each_action(tmp_path):
    from ferrotrain.profilers import AdvancedProfiler

    def busy():
        return sum(i * i for i in range(20000))

    profiler = AdvancedProfiler(dirpath=tmp_path, filename="perf")
    with profiler.profile("my_action"):
        busy()
    text = profiler.summary()
    assert "Profile stats for: my_action" in text and "busy" in text
    profiler.describe()
    assert "busy" in (tmp_path / "fit-perf.txt").read_text()
    with pytest.raises(ValueError, match="never started"):
        profiler.stop("other")
    with pytest.raises(ValueError, match="line_count_restriction"):
        AdvancedProfiler(line_count_restriction=0)


def test_trainer_runs_with_advanced_profiler(quiet, loaders):
    from tests.conftest import BoringModel
    from ferrotrain.profilers import AdvancedProfiler
    trainer = ferrotrain.Trainer(profiler=AdvancedProfiler(), max_steps=2, **quiet)
    trainer.fit(BoringModel(), loaders[0])
    assert trainer.global_step == 2


def test_lightning_enum_compares_as_string():
    from ferrotrain.utilities import GradClipAlgorithmType
    assert GradClipAlgorithmType("norm") == "NORM"
    assert GradClipAlgorithmType.from_str("Value") is GradClipAlgorithmType.VALUE
    with pytest.raises(ValueError, match="'value', 'norm'"):
        GradClipAlgorithmType.from_str("median")


def test_unsupported_kinds_say_so_when_built():
    """Names Lightning code imports but this build cannot run: importable, and clear when built."""
    from ferrotrain.errors import NotSupportedYetError
    from ferrotrain.profilers import XLAProfiler
    from ferrotrain.strategies import ModelParallelStrategy

    with pytest.raises(NotSupportedYetError, match="ddp"):
        ModelParallelStrategy()
    with pytest.raises(NotSupportedYetError, match="torch_xla"):
        XLAProfiler()
    from ferrotrain.loggers import LitLogger

    with pytest.raises(NotSupportedYetError, match="litlogger"):
        LitLogger()


def _servable(answer):
    import torch

    from ferrotrain.serve import ServableModule
    from tests.lightning_ref import model_class

    class Servable(model_class(ferrotrain), ServableModule):
        def configure_payload(self):
            return {"body": {"x": [[1.0, 2.0, 3.0, 4.0]]}}

        def configure_serialization(self):
            return {"x": lambda v: torch.tensor(v)}, {"output": lambda t: list(t.shape)}  # one answer of one value

        def serve_step(self, x):
            assert not self.training and not torch.is_grad_enabled()
            return {"output": self(x)}

        def configure_response(self):
            return {"output": answer}

    return Servable()


def test_servable_module_validator_checks_the_contract_when_the_fit_starts(tmp_path):
    from ferrotrain.serve import ServableModuleValidator
    from tests.lightning_ref import loader

    ok = ServableModuleValidator()
    t = ferrotrain.Trainer(callbacks=[ok], max_steps=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    t.fit(_servable([1, 1]), loader(4))
    assert ok.successful is True and t.global_step == 1
    bad = ServableModuleValidator()
    t = ferrotrain.Trainer(callbacks=[bad], max_steps=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="isn't servable"):
        t.fit(_servable([1, 2]), loader(4))
    assert bad.successful is False and t.global_step == 0


def test_servable_module_validator_bad_arguments_name_the_allowed_values():
    from ferrotrain.errors import MisconfigurationException
    from ferrotrain.serve import ServableModuleValidator

    with pytest.raises(MisconfigurationException, match="optimization='onnx'.*allowed: None"):
        ServableModuleValidator(optimization="onnx")
    with pytest.raises(MisconfigurationException, match="server='torchserve'.*allowed: 'fastapi'"):
        ServableModuleValidator(server="torchserve")


def _lightning_public_modules(lp):
    """Lightning's public modules that define `__all__` (no underscore in the path; loops, demos and
    the trainer's connectors are internals), with their names: the walk the coverage check does."""
    import pkgutil
    import warnings

    found = {lp.__name__: list(lp.__all__)}
    for info in pkgutil.walk_packages(lp.__path__, lp.__name__ + "."):
        name = info.name
        if any(part.startswith("_") for part in name.split(".")) or any(
                skip in name for skip in (".demos", ".loops", "connectors")):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # an optional dependency of Lightning's that is not installed
            continue
        names = [n for n in getattr(module, "__all__", []) if not n.startswith("_")]
        if names:
            found[name] = names
    return found


def test_every_lightning_public_name_exists_at_the_same_path():
    lp = pytest.importorskip("lightning.pytorch")
    missing = []
    for name, names in sorted(_lightning_public_modules(lp).items()):
        ours = "ferrotrain" + name[len(lp.__name__):]
        try:
            module = importlib.import_module(ours)
        except ImportError:
            missing.append(ours)
            continue
        missing += [f"{ours}.{n}" for n in names if not hasattr(module, n)]
    assert missing == []
