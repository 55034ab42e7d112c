"""`DeviceStatsMonitor`: which keys it logs at which steps (pinned to Lightning 2.x through
`lightning_ref.check`; the values are the machine's load, so only their presence is compared),
and Lightning's errors without a logger or without `psutil`."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import pytest

from tests.lightning_ref import QUIET, check, is_lightning, loader, memory_logger, misconfiguration, model_class

HAS_PSUTIL = importlib.util.find_spec("psutil") is not None
PSUTIL_HINT = "Requirement 'psutil' not met. HINT: Try running `pip install -U 'psutil'`"


def _monitor(L: Any, **kwargs: Any) -> Any:
    cbs = importlib.import_module("lightning.pytorch.callbacks" if is_lightning(L) else "ferrotrain.callbacks")
    return cbs.DeviceStatsMonitor(**kwargs)


def _fit(L: Any, cpu_stats: Any, logger: Any = None) -> Any:
    class Model(model_class(L)):  # type: ignore[misc,valid-type]
        def test_step(self, batch: Any, batch_idx: int) -> None:
            pass

    model = Model()
    t = L.Trainer(**{**QUIET, "logger": logger if logger is not None else False, "max_epochs": 1,
                     "log_every_n_steps": 2, "callbacks": [_monitor(L, cpu_stats=cpu_stats)]})
    t.fit(model, loader(10, batch_size=2), loader(4, batch_size=2))
    return t


@pytest.mark.skipif(not HAS_PSUTIL, reason="CPU stats need psutil")
def test_logs_cpu_stats_on_logging_steps():
    def scenario(L: Any) -> Any:
        lg = memory_logger(L)
        _fit(L, None, lg)
        return [(step, sorted(m)) for step, m in lg.calls if any(k.startswith("DeviceStatsMonitor") for k in m)]

    stats = ["cpu_percent", "cpu_swap_percent", "cpu_vm_percent"]
    start = [f"DeviceStatsMonitor.on_train_batch_start/{s}" for s in stats]
    end = [f"DeviceStatsMonitor.on_train_batch_end/{s}" for s in stats]
    vstart = [f"DeviceStatsMonitor.on_validation_batch_start/{s}" for s in stats]
    vend = [f"DeviceStatsMonitor.on_validation_batch_end/{s}" for s in stats]
    # Training logs before logging steps 2 and 4 (at steps 1 and 3); evaluation logs on its own
    # second batch, the sanity check's at step 0 and the epoch-end validation's at step 4 (it runs
    # before the epoch's last batch is counted).
    check(scenario, [(0, vstart), (0, vend), (1, start), (1, end), (3, start), (3, end), (4, vstart), (4, vend)])


@pytest.mark.skipif(not HAS_PSUTIL, reason="CPU stats need psutil")
def test_logs_test_batches_at_the_fit_step():
    def scenario(L: Any) -> Any:
        lg = memory_logger(L)
        t = _fit(L, True, lg)
        lg.calls.clear()
        t.test(t.lightning_module, loader(8, batch_size=2), verbose=False)
        return [(step, sorted(m)[0]) for step, m in lg.calls if any(k.startswith("DeviceStatsMonitor") for k in m)]

    start, end = "DeviceStatsMonitor.on_test_batch_start/cpu_percent", "DeviceStatsMonitor.on_test_batch_end/cpu_percent"
    check(scenario, [(5, start), (5, end), (5, start), (5, end)])


def test_cpu_stats_false_logs_nothing_on_cpu():
    def scenario(L: Any) -> Any:
        lg = memory_logger(L)
        _fit(L, False, lg)
        return [step for step, m in lg.calls if any(k.startswith("DeviceStatsMonitor") for k in m)]

    check(scenario, [])


def test_needs_a_logger():
    def scenario(L: Any) -> Any:
        with pytest.raises(misconfiguration(L)) as err:
            _fit(L, None)
        return str(err.value)

    check(scenario, "Cannot use `DeviceStatsMonitor` callback with `Trainer(logger=False)`.")


@pytest.mark.skipif(HAS_PSUTIL, reason="checks the error raised without psutil")
def test_without_psutil():
    def scenario(L: Any) -> Any:
        errors = []
        for cpu_stats in (None, True):  # None: refused at setup; True: fails at the first stats read
            with pytest.raises(ModuleNotFoundError) as err:
                _fit(L, cpu_stats, memory_logger(L))
            errors.append(str(err.value))
        return errors

    check(scenario, [
        f"`DeviceStatsMonitor` cannot log CPU stats as `psutil` is not installed. {PSUTIL_HINT} ",
        f"Fetching CPU device stats requires `psutil` to be installed. {PSUTIL_HINT}",
    ])
