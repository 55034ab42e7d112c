"""Lightning's small public utilities at `ferrotrain.utilities`, checked by what they do."""

from __future__ import annotations

import os
import threading
import warnings

import pytest
import torch

from ferrotrain import utilities
from ferrotrain.utilities.warnings import LightningDeprecationWarning, PossibleUserWarning


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 3)
        self.decoder = torch.nn.Linear(3, 3)
        self.decoder.weight = self.encoder.weight


def test_shared_parameters_found_and_retied_after_a_device_move_unties_them() -> None:
    model = Tied()
    shared = utilities.find_shared_parameters(model)
    assert shared == [["encoder.weight", "decoder.weight"]]
    model.decoder.weight = torch.nn.Parameter(model.decoder.weight.detach().clone())  # untied, as a load can
    assert utilities.find_shared_parameters(model) == []
    utilities.set_shared_parameters(model, shared)
    assert model.decoder.weight is model.encoder.weight
    assert utilities.find_shared_parameters(torch.nn.Linear(2, 2)) == []


def test_measure_flops_counts_a_linear_layer_forward_and_backward() -> None:
    with torch.device("meta"):
        model = torch.nn.Linear(8, 4, bias=False)
        x = torch.randn(2, 8)
    forward = utilities.measure_flops(model, lambda: model(x))
    assert forward == 2 * 2 * 8 * 4  # one multiply-add per weight and sample
    both = utilities.measure_flops(model, lambda: model(x), lambda y: y.sum())
    assert both == 2 * forward  # backward: the weight gradient (the input needs none)


def test_is_picklable() -> None:
    assert utilities.is_picklable({"lr": 0.1, "layers": [1, 2]})
    assert not utilities.is_picklable(lambda: None)
    assert not utilities.is_picklable(threading.Lock())


def test_suggested_max_num_workers_shares_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert utilities.suggested_max_num_workers(1) == max(1, cores - 1)
    assert utilities.suggested_max_num_workers(cores * 4) == 1
    with pytest.raises(ValueError, match="local_world_size"):
        utilities.suggested_max_num_workers(0)


def test_one_process_always_shares_its_filesystem(tmp_path) -> None:
    assert utilities.is_shared_filesystem(strategy=None, path=str(tmp_path)) is True


def test_warning_helpers() -> None:
    with pytest.warns(LightningDeprecationWarning, match="old"):
        utilities.rank_zero_deprecation("old argument")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        utilities.disable_possible_user_warnings()
        warnings.warn("often a mistake", PossibleUserWarning)  # silenced, so no error
        with pytest.raises(UserWarning):
            warnings.warn("a plain user warning", UserWarning)
