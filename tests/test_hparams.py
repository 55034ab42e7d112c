"""`save_hyperparameters` in each of Lightning's forms, observed as a user observes it (`hparams`,
`hparams_initial`, the name a checkpoint records), pinned to what Lightning 2.6 stores
(FERROTRAIN_CROSSCHECK=1 reruns each scenario under Lightning)."""

import dataclasses
import importlib
import importlib.util
import inspect
from argparse import Namespace
from typing import Any

import pytest
import torch

from tests.lightning_ref import check, is_lightning


def observed(obj: Any) -> dict:
    return {"hparams": dict(obj.hparams), "initial": dict(obj.hparams_initial),
            "name": getattr(obj, "_hparams_name", None)}


def test_no_arguments_saves_every_init_argument():
    def scenario(L):
        class Model(L.LightningModule):
            def __init__(self, lr=0.1, layers=2, *args, name="m", **kwargs):
                super().__init__()
                self.save_hyperparameters()
        return observed(Model(0.5, 3, name="x", extra=True))
    check(scenario, {"hparams": {"lr": 0.5, "layers": 3, "name": "x", "extra": True},
                     "initial": {"lr": 0.5, "layers": 3, "name": "x", "extra": True}, "name": "kwargs"})


def test_named_arguments_and_ignore():
    def scenario(L):
        class Named(L.LightningModule):
            def __init__(self, lr=0.1, layers=2, name="m"):
                super().__init__()
                self.save_hyperparameters("lr", "name")

        class Ignoring(L.LightningModule):
            def __init__(self, lr=0.1, net=None, name="m"):
                super().__init__()
                self.save_hyperparameters(ignore="net")

        class IgnoringList(L.LightningModule):
            def __init__(self, lr=0.1, net=None, name="m"):
                super().__init__()
                self.save_hyperparameters(ignore=["net", "name", 3])

        return [observed(Named()), observed(Ignoring(net=torch.nn.Linear(1, 1))), observed(IgnoringList())]
    check(scenario, [
        {"hparams": {"lr": 0.1, "name": "m"}, "initial": {"lr": 0.1, "name": "m"}, "name": "kwargs"},
        {"hparams": {"lr": 0.1, "name": "m"}, "initial": {"lr": 0.1, "name": "m"}, "name": "kwargs"},
        {"hparams": {"lr": 0.1}, "initial": {"lr": 0.1}, "name": "kwargs"},
    ])


def test_a_dict_or_a_namespace_becomes_the_hparams():
    def scenario(L):
        class FromDict(L.LightningModule):
            def __init__(self, config):
                super().__init__()
                self.save_hyperparameters(config)

        class FromNamespace(L.LightningModule):
            def __init__(self, args):
                super().__init__()
                self.save_hyperparameters(args)

        d, n = FromDict({"lr": 0.1, "depth": 2}), FromNamespace(Namespace(lr=0.2, act="relu"))
        return [observed(d), observed(n), type(d.hparams).__name__, n.hparams.act]
    check(scenario, [
        {"hparams": {"lr": 0.1, "depth": 2}, "initial": {"lr": 0.1, "depth": 2}, "name": "config"},
        {"hparams": {"lr": 0.2, "act": "relu"}, "initial": {"lr": 0.2, "act": "relu"}, "name": "args"},
        "AttributeDict", "relu",
    ])


def test_an_omegaconf_config_is_kept_as_it_is():
    if importlib.util.find_spec("omegaconf") is None:
        pytest.skip("omegaconf is not installed")

    def scenario(L):
        from omegaconf import OmegaConf

        class FromConfig(L.LightningModule):
            def __init__(self, cfg):
                super().__init__()
                self.save_hyperparameters(cfg)

        model = FromConfig(OmegaConf.create({"optim": {"lr": 0.1}, "depth": 2}))
        return [type(model.hparams).__name__, model.hparams.optim.lr, OmegaConf.to_container(model.hparams),
                type(model.hparams_initial).__name__, model._hparams_name]
    check(scenario, ["DictConfig", 0.1, {"optim": {"lr": 0.1}, "depth": 2}, "DictConfig", "cfg"])


def test_repeated_calls_add_and_hparams_initial_is_a_copy():
    def scenario(L):
        class Twice(L.LightningModule):
            def __init__(self, lr=0.1, layers=2):
                super().__init__()
                self.save_hyperparameters("lr")
                self.save_hyperparameters({"extra": 1})
                self.save_hyperparameters("layers")

        model = Twice()
        model.hparams.lr = 9.0  # an edit shows in hparams, never in hparams_initial
        return observed(model)
    check(scenario, {"hparams": {"lr": 9.0, "extra": 1, "layers": 2},
                     "initial": {"lr": 0.1, "extra": 1, "layers": 2}, "name": "kwargs"})


def test_arguments_up_the_init_chain_and_of_an_enclosing_module():
    def scenario(L):
        class Base(L.LightningModule):
            def __init__(self, lr=0.1, **kwargs):
                super().__init__()
                self.save_hyperparameters()

        class Child(Base):
            def __init__(self, width=4, lr=0.2):
                super().__init__(lr=lr)

        class Inner(L.LightningModule):
            def __init__(self, depth=1):
                super().__init__()
                self.save_hyperparameters()

        class Outer(L.LightningModule):
            def __init__(self, size=3):
                super().__init__()
                self.inner = Inner(depth=5)

        outer = Outer()
        return [observed(Child()), observed(outer.inner), observed(outer)]
    check(scenario, [
        {"hparams": {"lr": 0.2, "width": 4}, "initial": {"lr": 0.2, "width": 4}, "name": "kwargs"},
        {"hparams": {"depth": 5, "size": 3}, "initial": {"depth": 5, "size": 3}, "name": "kwargs"},
        {"hparams": {}, "initial": {}, "name": None},
    ])


def test_frame_argument_reads_that_init():
    def scenario(L):
        def save_from_caller(obj):
            obj.save_hyperparameters(frame=inspect.currentframe().f_back)

        class Model(L.LightningModule):
            def __init__(self, lr=0.3):
                super().__init__()
                save_from_caller(self)
        return observed(Model())
    check(scenario, {"hparams": {"lr": 0.3}, "initial": {"lr": 0.3}, "name": "kwargs"})


def test_dataclass_module_saves_its_init_fields():
    def scenario(L):
        @dataclasses.dataclass(eq=False)
        class Model(L.LightningModule):
            mandatory: int
            optional: str = "opt"
            ignore_me: bool = False
            derived: int = dataclasses.field(init=False, default=0)

            def __post_init__(self):
                super().__init__()
                self.save_hyperparameters(ignore=("ignore_me",))
        return observed(Model(mandatory=3))
    check(scenario, {"hparams": {"mandatory": 3, "optional": "opt"}, "initial": {"mandatory": 3, "optional": "opt"},
                     "name": "kwargs"})


def test_a_primitive_is_rejected_and_an_empty_config_saves_nothing():
    def scenario(L):
        class Primitive(L.LightningModule):
            def __init__(self, lr=0.1):
                super().__init__()
                self.save_hyperparameters(0.5)

        class Empty(L.LightningModule):
            def __init__(self, lr=0.1):
                super().__init__()
                self.save_hyperparameters({})

        try:
            Primitive()
            error = None
        except ValueError as exc:
            error = str(exc)
        return [error, observed(Empty())]
    check(scenario, ["Primitives (<class 'bool'>, <class 'int'>, <class 'float'>, <class 'str'>) are not allowed.",
                     {"hparams": {}, "initial": {}, "name": None}])


def test_mixin_on_plain_classes_and_datamodules():
    def scenario(L):
        mixins = importlib.import_module("lightning.pytorch.core.mixins" if is_lightning(L) else "ferrotrain.core.mixins")

        class Plain(mixins.HyperparametersMixin):
            def __init__(self, alpha=1, beta="b"):
                super().__init__()
                self.save_hyperparameters(ignore="beta")

        class Data(L.LightningDataModule):
            def __init__(self, batch_size=8, root="data"):
                super().__init__()
                self.save_hyperparameters()
        return [observed(Plain(alpha=2)), observed(Data(batch_size=4))]
    check(scenario, [{"hparams": {"alpha": 2}, "initial": {"alpha": 2}, "name": "kwargs"},
                     {"hparams": {"batch_size": 4, "root": "data"}, "initial": {"batch_size": 4, "root": "data"},
                      "name": "kwargs"}])


def test_tags_csv_round_trips_hyperparameters_as_literals(tmp_path):
    from argparse import Namespace

    from ferrotrain.core.saving import load_hparams_from_tags_csv, save_hparams_to_tags_csv

    path = tmp_path / "tags.csv"
    save_hparams_to_tags_csv(path, Namespace(lr=0.01, layers=3, name="mlp", use_bn=True, dims=[4, 8]))
    assert path.read_text().splitlines()[0] == "key,value"
    assert load_hparams_from_tags_csv(path) == {"lr": 0.01, "layers": 3, "name": "mlp", "use_bn": True, "dims": [4, 8]}
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert load_hparams_from_tags_csv(tmp_path / "absent.csv") == {}
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_tags_csv(tmp_path / "no" / "tags.csv", {"a": 1})
