"""Lightning's `core.saving` helpers: hyperparameters to and from YAML files (the `hparams.yaml`
the loggers write, which `load_from_checkpoint(hparams_file=...)` reads)."""

import ast
import csv
import os
from argparse import Namespace
from typing import Any, Dict, Union

from ferrotrain.loggers.utilities import save_hparams_to_yaml as _save_yaml
from ferrotrain.utilities.cloud_io import get_filesystem
from ferrotrain.utilities.rank_zero import rank_zero_warn

__all__ = [
    "load_hparams_from_yaml", "save_hparams_to_yaml", "load_hparams_from_tags_csv", "save_hparams_to_tags_csv",
    "update_hparams", "convert",
]


def load_hparams_from_yaml(config_yaml: Union[str, "os.PathLike[str]"], use_omegaconf: bool = True) -> Dict[str, Any]:
    """The hyperparameters in a YAML file (an empty dict, with a warning, when it does not exist);
    an omegaconf `DictConfig` when `use_omegaconf` and omegaconf is installed (Lightning)."""
    import yaml

    fs = get_filesystem(config_yaml)
    if not fs.exists(config_yaml):
        rank_zero_warn(f"Missing Tags: {config_yaml}.", category=RuntimeWarning)
        return {}
    with fs.open(config_yaml, "r") as fp:
        hparams = yaml.full_load(fp)
    if use_omegaconf:
        try:
            from omegaconf import OmegaConf
        except ImportError:
            return hparams
        return OmegaConf.create(hparams)
    return hparams


def save_hparams_to_yaml(
    config_yaml: Union[str, "os.PathLike[str]"], hparams: Union[Dict[str, Any], Namespace], use_omegaconf: bool = True
) -> None:
    """Write `hparams` (a dict, a Namespace or an omegaconf config) to `config_yaml`."""
    if use_omegaconf:
        try:
            from omegaconf import Container, OmegaConf
        except ImportError:
            pass
        else:
            if isinstance(hparams, Container):
                hparams = OmegaConf.to_container(hparams, resolve=True)
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    _save_yaml(os.fspath(config_yaml), hparams)


def update_hparams(hparams: Dict[str, Any], updates: Dict[str, Any]) -> None:
    """Merge `updates` into `hparams`, descending into nested dicts."""
    for k, v in updates.items():
        if k not in hparams:
            hparams[k] = v
        elif isinstance(v, dict):
            update_hparams(hparams[k], updates[k])
        else:
            hparams[k] = v


def convert(val: str) -> Union[int, float, bool, str]:
    """A string read from a tags file, as the Python literal it spells (or the string itself)."""
    try:
        return ast.literal_eval(val)
    except (ValueError, SyntaxError):
        return val


def load_hparams_from_tags_csv(tags_csv: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """The hyperparameters in a `key,value` tags file (the older format next to `hparams.yaml`), each
    value read back as the literal it spells; an empty dict, with a warning, when the file does not exist."""
    fs = get_filesystem(tags_csv)
    if not fs.exists(tags_csv):
        rank_zero_warn(f"Missing Tags: {tags_csv}.", category=RuntimeWarning)
        return {}
    with fs.open(tags_csv, "r", newline="") as fp:
        rows = list(csv.reader(fp, delimiter=","))
    return {row[0]: convert(row[1]) for row in rows[1:]}


def save_hparams_to_tags_csv(tags_csv: Union[str, "os.PathLike[str]"], hparams: Union[Dict[str, Any], Namespace]) -> None:
    """Write `hparams` as a `key,value` tags file; its folder must exist."""
    fs = get_filesystem(tags_csv)
    folder = os.path.dirname(str(tags_csv))
    if not fs.isdir(folder):
        raise RuntimeError(f"Missing folder: {folder}.")
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    with fs.open(tags_csv, "w", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(["key", "value"])
        for key, value in hparams.items():
            writer.writerow([key, value])
