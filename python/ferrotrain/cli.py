"""LightningCLI: configure and run a Trainer, a model and a datamodule from
the command line and YAML files, at Lightning's path ``lightning.pytorch.cli``.

jsonargparse is an optional extra (``ferrotrain[cli]``); it is imported only
when a CLI is built so that ``import ferrotrain`` stays light.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, Optional, Type, Union

from ferrotrain.callbacks import Callback

_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _jsonargparse():
    try:
        import jsonargparse
    except ImportError as err:  # the extra is not installed
        raise ImportError(
            "LightningCLI needs the package `jsonargparse[signatures]`; "
            "install it with `pip install 'ferrotrain[cli]'`."
        ) from err
    _register_yaml_sentinels()
    return jsonargparse


def _register_yaml_sentinels() -> None:
    # The Trainer marks its untouched defaults with int subclasses; a saved
    # config must write them as plain ints.
    import yaml

    from ferrotrain.trainer import config as trainer_config

    for name, cls in vars(trainer_config).items():
        if not (isinstance(cls, type) and name.startswith("_Default")):
            continue
        for base, represent in ((int, "represent_int"), (float, "represent_float")):
            if issubclass(cls, base):
                for dumper in (yaml.SafeDumper, yaml.Dumper):
                    dumper.add_representer(
                        cls, lambda d, v, b=base, r=represent: getattr(d, r)(b(v)))


def LightningArgumentParser(*args: Any, **kwargs: Any):
    """A jsonargparse ArgumentParser (built lazily; jsonargparse is optional)."""
    return _jsonargparse().ArgumentParser(*args, **kwargs)


class SaveConfigCallback(Callback):
    """Writes the parsed config to ``<log_dir>/config.yaml`` when fitting starts."""

    def __init__(self, parser: Any, config: Any, config_filename: str = "config.yaml",
                 overwrite: bool = False, multifile: bool = False) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.already_saved = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = getattr(trainer, "log_dir", None) or trainer.default_root_dir
        path = os.path.join(log_dir, self.config_filename)
        if os.path.exists(path) and not self.overwrite:
            raise RuntimeError(
                f"SaveConfigCallback: {path} already exists; pass "
                "save_config_kwargs={'overwrite': True} to replace it."
            )
        if getattr(trainer, "is_global_zero", True):
            os.makedirs(log_dir, exist_ok=True)
            self.parser.save(self.config, path, skip_none=False,
                             overwrite=self.overwrite, multifile=self.multifile)
        self.already_saved = True


class LightningCLI:
    """Parse a config (CLI flags and/or ``--config`` YAML), build the objects and
    optionally run a subcommand (fit/validate/test/predict)."""

    def __init__(
        self,
        model_class: Optional[Union[Type, Callable]] = None,
        datamodule_class: Optional[Union[Type, Callable]] = None,
        save_config_callback: Optional[Type[SaveConfigCallback]] = SaveConfigCallback,
        save_config_kwargs: Optional[Dict[str, Any]] = None,
        trainer_class: Optional[Type] = None,
        trainer_defaults: Optional[Dict[str, Any]] = None,
        seed_everything_default: Union[bool, int] = True,
        parser_kwargs: Optional[Dict[str, Any]] = None,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: Optional[Any] = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
    ) -> None:
        from ferrotrain import Trainer

        self.model_class = model_class
        self.datamodule_class = datamodule_class
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class or Trainer
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.subclass_mode_model = subclass_mode_model
        self.subclass_mode_data = subclass_mode_data

        parser_kwargs = dict(parser_kwargs or {})
        self.subcommand: Optional[str] = None
        if run:
            self.parser = self._build_parser_with_subcommands(parser_kwargs)
            self.config = self.parser.parse_args(args)
            self.subcommand = self.config["subcommand"]
            own = self.config[self.subcommand]
            sub_parser = self.parser._subcommands_action._name_parser_map[self.subcommand]
        else:
            self.parser = self._build_parser(parser_kwargs)
            self.config = self.parser.parse_args(args)
            own = self.config
            sub_parser = self.parser
        self._run_parser = sub_parser
        self._own_config = own
        with warnings.catch_warnings():
            # newer jsonargparse flags some call forms as deprecated; the
            # behaviour used here is unchanged, the warning is noise for users
            warnings.simplefilter("ignore", DeprecationWarning)
            self.config_init = sub_parser.instantiate_classes(own)
        self._instantiate(own)
        if run:
            self._run_subcommand(self.subcommand)

    # parser construction -------------------------------------------------
    def _build_parser(self, kwargs: Dict[str, Any]):
        ja = _jsonargparse()
        kwargs.setdefault("exit_on_error", True)
        parser = ja.ArgumentParser(**kwargs)
        parser.add_argument("-c", "--config", action=ja.ActionConfigFile,
                            help="Path to a YAML config file.")
        parser.add_argument("--seed_everything", type=Union[bool, int],
                            default=self.seed_everything_default,
                            help="Seed for the random generators; True picks one.")
        parser.add_class_arguments(self.trainer_class, "trainer", instantiate=False,
                                   fail_untyped=False)
        if self.trainer_defaults:
            parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items()})
        if self.model_class is not None:
            self._add_component(parser, "model", self.model_class, self.subclass_mode_model)
        if self.datamodule_class is not None:
            self._add_component(parser, "data", self.datamodule_class, self.subclass_mode_data)
        return parser

    @staticmethod
    def _add_component(parser: Any, key: str, cls: Any, subclass_mode: bool) -> None:
        if subclass_mode:
            parser.add_subclass_arguments(cls, key, required=True, fail_untyped=False)
        else:
            parser.add_class_arguments(cls, key, fail_untyped=False)

    def _build_parser_with_subcommands(self, kwargs: Dict[str, Any]):
        ja = _jsonargparse()
        root = ja.ArgumentParser(**{k: v for k, v in kwargs.items() if k not in _SUBCOMMANDS})
        root.add_argument("-c", "--config", action=ja.ActionConfigFile,
                          help="Path to a YAML config file.")
        subcommands = root.add_subcommands(required=True, dest="subcommand")
        for name in _SUBCOMMANDS:
            sub_kwargs = dict(kwargs.get(name, {}))
            subcommands.add_subcommand(name, self._build_parser(sub_kwargs),
                                       help=f"Runs Trainer.{name}.")
        return root

    # instantiation and running -------------------------------------------
    def _instantiate(self, config: Any) -> None:
        from ferrotrain.utilities.seed import seed_everything

        seed = config.get("seed_everything")
        if seed is True:
            seed_everything(None)
        elif seed is not False and seed is not None:
            seed_everything(int(seed))
        self.model = self.config_init.get("model")
        self.datamodule = self.config_init.get("data")
        trainer_kwargs = dict(self.config_init["trainer"])
        callbacks = trainer_kwargs.get("callbacks") or []
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        if self.save_config_callback is not None and self.subcommand in (None, "fit"):
            callbacks = list(callbacks) + [
                self.save_config_callback(self._run_parser, config, **self.save_config_kwargs)
            ]
        trainer_kwargs["callbacks"] = callbacks
        self.trainer = self.trainer_class(**trainer_kwargs)

    def _run_subcommand(self, name: str) -> None:
        getattr(self.trainer, name)(self.model, datamodule=self.datamodule)
