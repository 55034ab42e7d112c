"""`self.log` against Lightning 2.x: defaults per hook, step/epoch keys, batch-size-weighted epoch
means, reductions, the progress-bar and logger switches, the Trainer's three metric views after
fit and after validate, what validate/test return, the rows a real CSVLogger writes, and the
errors for values or places that cannot be logged.

Each scenario returns what a user observes; the expected values were measured under Lightning
(see `lightning_ref.py` to re-run them there)."""

from __future__ import annotations

import csv
import os
from typing import Any, Dict

import pytest
import torch

from tests.lightning_ref import check, csv_logger, loader, memory_logger, misconfiguration, model_class, round_floats, trainer


def _views(t: Any) -> Dict[str, Any]:
    """The Trainer's three metric views, sorted and rounded."""
    return {
        "callback": round_floats(dict(sorted(t.callback_metrics.items()))),
        "logged": round_floats(dict(sorted(t.logged_metrics.items()))),
        "bar": round_floats(dict(sorted(t.progress_bar_metrics.items()))),
    }


# --- defaults per hook --------------------------------------------------------------------------


def scen_defaults_per_hook(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("t", float(batch_idx + 10 * self.current_epoch))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("v", float(batch_idx))

        def on_train_epoch_end(self):
            self.log("e", float(self.current_epoch))

        def on_validation_epoch_end(self):
            self.log("ve", 7.0)

    lg = memory_logger(L)
    t = trainer(L, max_epochs=2, logger=lg, log_every_n_steps=1, num_sanity_val_steps=0)
    t.fit(M(), loader(6), loader(4))
    return dict(calls=lg.calls, **_views(t))


def test_log_defaults_per_hook():
    check(scen_defaults_per_hook, {"calls": [(0, {"epoch": 0, "t": 0.0}), (1, {"epoch": 0, "t": 1.0}),
                   (2, {"epoch": 0, "t": 2.0}), (2, {"epoch": 0, "v": 0.5, "ve": 7.0}),
                   (2, {"e": 0.0, "epoch": 0}), (3, {"epoch": 1, "t": 10.0}),
                   (4, {"epoch": 1, "t": 11.0}), (5, {"epoch": 1, "t": 12.0}),
                   (5, {"epoch": 1, "v": 0.5, "ve": 7.0}), (5, {"e": 1.0, "epoch": 1})],
         "callback": {"e": 1.0, "t": 12.0, "v": 0.5, "ve": 7.0},
         "logged": {"e": 1.0, "t": 12.0, "v": 0.5, "ve": 7.0},
         "bar": {}})


def scen_step_and_epoch_keys(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("x", float(batch_idx + 1), on_step=True, on_epoch=True, prog_bar=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("y", float(batch_idx + 1), on_step=True, on_epoch=True)

    lg = memory_logger(L)
    t = trainer(L, max_epochs=1, logger=lg, log_every_n_steps=1, num_sanity_val_steps=0)
    t.fit(M(), loader(6), loader(4))
    return dict(calls=lg.calls, **_views(t))


def test_on_step_and_on_epoch_make_step_and_epoch_keys():
    check(scen_step_and_epoch_keys, {"calls": [(0, {"epoch": 0, "x_step": 1.0}), (1, {"epoch": 0, "x_step": 2.0}),
                   (2, {"epoch": 0, "x_step": 3.0}), (0, {"y_step": 1.0}), (1, {"y_step": 2.0}),
                   (2, {"epoch": 0, "y_epoch": 1.5}), (2, {"epoch": 0, "x_epoch": 2.0})],
         "callback": {"x": 2.0, "x_epoch": 2.0, "x_step": 3.0, "y": 1.5, "y_epoch": 1.5},
         "logged": {"x_epoch": 2.0, "x_step": 3.0, "y_epoch": 1.5, "y_step": 2.0},
         "bar": {"x_epoch": 2.0, "x_step": 3.0}})


# --- reductions ---------------------------------------------------------------------------------


def scen_weighted_mean(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("t", float(batch_idx), on_step=False, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("v", float(batch_idx))
            self.log("w", float(batch_idx), batch_size=batch_idx + 1)
            self.log("tensor", torch.tensor(batch_idx, dtype=torch.float32))

    t = trainer(L, max_epochs=1, num_sanity_val_steps=0)
    t.fit(M(), loader(10, 4), loader(10, 4))
    return round_floats(dict(sorted(t.callback_metrics.items())))


def test_epoch_mean_is_weighted_by_batch_size():
    # sizes 4, 4, 2: (0*4 + 1*4 + 2*2) / 10; explicit sizes 1, 2, 3: (0 + 2 + 6) / 6
    check(scen_weighted_mean, {"t": 0.8, "tensor": 0.8, "v": 0.8, "w": 1.33333})


def scen_reduce_fx(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("t_sum", float(batch_idx + 1), on_step=False, on_epoch=True, reduce_fx="sum")
            self.log("t_max", float(batch_idx + 1), on_step=True, on_epoch=True, reduce_fx="max")
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            value = float([3, 1, 4, 1][batch_idx])
            self.log("v_sum", value, reduce_fx="sum")
            self.log("v_max", value, reduce_fx="max")
            self.log("v_min", value, reduce_fx="min")
            self.log("v_torch_sum", value, reduce_fx=torch.sum)

    lg = memory_logger(L)
    t = trainer(L, max_epochs=1, logger=lg, log_every_n_steps=1, num_sanity_val_steps=0)
    t.fit(M(), loader(8, 3), loader(8))
    return dict(calls=lg.calls, **_views(t))


def test_reduce_fx_sum_max_min():
    check(scen_reduce_fx, {"calls": [(0, {"epoch": 0, "t_max_step": 1.0}), (1, {"epoch": 0, "t_max_step": 2.0}),
                   (2, {"epoch": 0, "t_max_step": 3.0}),
                   (2, {"epoch": 0, "v_max": 4.0, "v_min": 1.0, "v_sum": 9.0, "v_torch_sum": 9.0}),
                   (2, {"epoch": 0, "t_max_epoch": 3.0, "t_sum": 6.0})],
         "callback": {"t_max": 3.0,
                      "t_max_epoch": 3.0,
                      "t_max_step": 3.0,
                      "t_sum": 6.0,
                      "v_max": 4.0,
                      "v_min": 1.0,
                      "v_sum": 9.0,
                      "v_torch_sum": 9.0},
         "logged": {"t_max_epoch": 3.0,
                    "t_max_step": 3.0,
                    "t_sum": 6.0,
                    "v_max": 4.0,
                    "v_min": 1.0,
                    "v_sum": 9.0,
                    "v_torch_sum": 9.0},
         "bar": {}})


# --- progress bar and logger switches -----------------------------------------------------------


def scen_prog_bar_and_logger_flags(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("p", 1.0, prog_bar=True)
            self.log("hidden", 2.0, logger=False)
            self.log("bar_only", 3.0, prog_bar=True, logger=False)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("vp", 4.0, prog_bar=True)
            self.log("vhidden", 5.0, logger=False)

    lg = memory_logger(L)
    t = trainer(L, max_epochs=1, logger=lg, log_every_n_steps=1, num_sanity_val_steps=0)
    t.fit(M(), loader(4), loader(4))
    return dict(calls=lg.calls, **_views(t))


def test_prog_bar_and_logger_false():
    check(scen_prog_bar_and_logger_flags, {"calls": [(0, {"epoch": 0, "p": 1.0}), (1, {"epoch": 0, "p": 1.0}),
                   (1, {"epoch": 0, "vp": 4.0})],
         "callback": {"bar_only": 3.0, "hidden": 2.0, "p": 1.0, "vhidden": 5.0, "vp": 4.0},
         "logged": {"p": 1.0, "vp": 4.0},
         "bar": {"bar_only": 3.0, "p": 1.0, "vp": 4.0}})


# --- views after validate / test, and what they return -----------------------------------------


def _eval_model(L):
    class M(model_class(L)):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), prog_bar=True)
            self.log("val_seen", float(batch_idx), on_step=True)

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    return M


def scen_views_after_fit_then_validate(L):
    lg = memory_logger(L)
    m = _eval_model(L)()
    t = trainer(L, max_epochs=1, logger=lg, log_every_n_steps=1, num_sanity_val_steps=0)
    t.fit(m, loader(4), loader(4))
    after_fit = _views(t)
    out = t.validate(m, loader(6), verbose=False)
    return dict(after_fit=after_fit, after_validate=_views(t), returned=round_floats(out), calls=lg.calls)


def test_metric_views_after_fit_and_after_validate():
    check(scen_views_after_fit_then_validate, {"after_fit": {"callback": {"val_loss": 1.76547, "val_seen": 0.5, "val_seen_epoch": 0.5},
                       "logged": {"val_loss": 1.76547, "val_seen_epoch": 0.5, "val_seen_step": 1.0},
                       "bar": {"val_loss": 1.76547}},
         "after_validate": {"callback": {"val_loss": 4.15722,
                                         "val_seen": 1.0,
                                         "val_seen_epoch": 1.0},
                            "logged": {"val_loss": 4.15722,
                                       "val_seen_epoch": 1.0,
                                       "val_seen_step": 2.0},
                            "bar": {"val_loss": 4.15722}},
         "returned": [{"val_loss": 4.15722, "val_seen_epoch": 1.0}],
         "calls": [(0, {"val_seen_step": 0.0}), (1, {"val_seen_step": 1.0}),
                   (1, {"epoch": 0, "val_loss": 1.76547, "val_seen_epoch": 0.5}),
                   (0, {"val_seen_step": 0.0}), (1, {"val_seen_step": 1.0}),
                   (2, {"val_seen_step": 2.0}),
                   (2, {"epoch": 1, "val_loss": 4.15722, "val_seen_epoch": 1.0})]})


def scen_validate_and_test_return(L):
    m = _eval_model(L)()
    t = trainer(L)
    val = t.validate(m, loader(6), verbose=False)
    test = t.test(m, loader(6), verbose=False)
    types = {type(v).__name__ for d in val + test for v in d.values()}
    return dict(val=round_floats(val), test=round_floats(test), types=types, views=_views(t))


def test_validate_and_test_return_a_list_of_float_dicts():
    check(scen_validate_and_test_return, {"val": [{"val_loss": 9.71094, "val_seen_epoch": 1.0}],
         "test": [{"test_loss": 9.71094}],
         "types": {"float"},
         "views": {"callback": {"test_loss": 9.71094}, "logged": {"test_loss": 9.71094}, "bar": {}}})


def scen_several_dataloaders(L):
    class M(model_class(L)):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("v", float(dataloader_idx * 10 + batch_idx))
            self.log(f"only_{dataloader_idx}", 1.0, add_dataloader_idx=False)

        def on_validation_epoch_end(self):
            self.log("shared", 5.0)

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("t", float(dataloader_idx + 1))

    m = M()
    t = trainer(L)
    val = t.validate(m, [loader(4), loader(6)], verbose=False)
    test = t.test(m, [loader(2), loader(2), loader(2)], verbose=False)
    return dict(val=round_floats(val), test=round_floats(test), views=_views(t))


def test_several_dataloaders_get_dataloader_idx_suffixes():
    check(scen_several_dataloaders, {"val": [{"v/dataloader_idx_0": 0.5, "only_0": 1.0, "shared": 5.0},
                 {"v/dataloader_idx_1": 11.0, "only_1": 1.0, "shared": 5.0}],
         "test": [{"t/dataloader_idx_0": 1.0}, {"t/dataloader_idx_1": 2.0},
                  {"t/dataloader_idx_2": 3.0}],
         "views": {"callback": {"t/dataloader_idx_0": 1.0,
                                "t/dataloader_idx_1": 2.0,
                                "t/dataloader_idx_2": 3.0},
                   "logged": {"t/dataloader_idx_0": 1.0,
                              "t/dataloader_idx_1": 2.0,
                              "t/dataloader_idx_2": 3.0},
                   "bar": {}}})


def scen_eval_step_logging_in_fit(L):
    class M(model_class(L)):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("vs", float(10 * dataloader_idx + batch_idx), on_step=True, prog_bar=True)
            self.log("ve", 1.0)

    lg = memory_logger(L)
    t = trainer(L, max_epochs=2, logger=lg, log_every_n_steps=100, num_sanity_val_steps=1)
    t.fit(M(), loader(4), [loader(4), loader(6)])
    return dict(calls=lg.calls, **_views(t))


def test_eval_step_values_reach_loggers_at_each_batch():
    check(scen_eval_step_logging_in_fit, {"calls": [(0, {"vs_step/dataloader_idx_0": 0.0}), (1, {"vs_step/dataloader_idx_0": 1.0}),
                   (0, {"vs_step/dataloader_idx_1": 10.0}), (1, {"vs_step/dataloader_idx_1": 11.0}),
                   (2, {"vs_step/dataloader_idx_1": 12.0}),
                   (1,
                    {"epoch": 0,
                     "ve/dataloader_idx_0": 1.0,
                     "ve/dataloader_idx_1": 1.0,
                     "vs_epoch/dataloader_idx_0": 0.5,
                     "vs_epoch/dataloader_idx_1": 11.0}),
                   (2, {"vs_step/dataloader_idx_0": 0.0}), (3, {"vs_step/dataloader_idx_0": 1.0}),
                   (3, {"vs_step/dataloader_idx_1": 10.0}), (4, {"vs_step/dataloader_idx_1": 11.0}),
                   (5, {"vs_step/dataloader_idx_1": 12.0}),
                   (3,
                    {"epoch": 1,
                     "ve/dataloader_idx_0": 1.0,
                     "ve/dataloader_idx_1": 1.0,
                     "vs_epoch/dataloader_idx_0": 0.5,
                     "vs_epoch/dataloader_idx_1": 11.0})],
         "callback": {"ve/dataloader_idx_0": 1.0,
                      "ve/dataloader_idx_1": 1.0,
                      "vs/dataloader_idx_0": 0.5,
                      "vs/dataloader_idx_1": 11.0,
                      "vs_epoch/dataloader_idx_0": 0.5,
                      "vs_epoch/dataloader_idx_1": 11.0},
         "logged": {"ve/dataloader_idx_0": 1.0,
                    "ve/dataloader_idx_1": 1.0,
                    "vs_epoch/dataloader_idx_0": 0.5,
                    "vs_epoch/dataloader_idx_1": 11.0,
                    "vs_step/dataloader_idx_0": 1.0,
                    "vs_step/dataloader_idx_1": 12.0},
         "bar": {"vs_epoch/dataloader_idx_0": 0.5,
                 "vs_epoch/dataloader_idx_1": 11.0,
                 "vs_step/dataloader_idx_0": 1.0,
                 "vs_step/dataloader_idx_1": 12.0}})


def scen_logged_metrics_without_logger(L):
    seen = []

    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("t", float(batch_idx))
            self.log("quiet", 1.0, logger=False)
            return super().training_step(batch, batch_idx)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(round_floats(dict(sorted(self.trainer.logged_metrics.items()))))

    t = trainer(L, max_epochs=1, log_every_n_steps=50)
    t.fit(M(), loader(6))
    return dict(seen=seen, **_views(t))


def test_logged_metrics_hold_latest_values_without_a_logger():
    check(scen_logged_metrics_without_logger, {"seen": [{"t": 0.0}, {"t": 1.0}, {"t": 2.0}],
         "callback": {"quiet": 1.0, "t": 2.0},
         "logged": {"t": 2.0},
         "bar": {}})


# --- a real CSVLogger ---------------------------------------------------------------------------


def _csv_rows(path: str):
    """The header, then each row as a tuple (None for an empty cell)."""
    with open(path, newline="") as fp:
        rows = list(csv.reader(fp))
    return [tuple(rows[0])] + [tuple(round(float(v), 4) if v else None for v in r) for r in rows[1:]]


def scen_csv_logger(L, tmp):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("t", float(batch_idx + 1))
            self.log("both", float(batch_idx + 1), on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("v", float(batch_idx + 1))

        def on_train_epoch_end(self):
            self.log("e", float(self.current_epoch))

    lg = csv_logger(L, tmp)
    m = M()
    t = trainer(L, max_epochs=2, logger=lg, log_every_n_steps=2, num_sanity_val_steps=0)
    t.fit(m, loader(10), loader(4))
    fit_rows = _csv_rows(os.path.join(lg.log_dir, "metrics.csv"))
    lg2 = csv_logger(L, tmp, name="validate")
    t2 = trainer(L, logger=lg2)
    t2.validate(m, loader(4), verbose=False)
    return dict(fit=fit_rows, validate=_csv_rows(os.path.join(lg2.log_dir, "metrics.csv")))


def test_csv_logger_rows_steps_and_epoch_column(tmp_path):
    check(lambda L: scen_csv_logger(L, tmp_path / L.__name__), {"fit": [("both_epoch", "both_step", "e", "epoch", "step", "t", "v"),
                 (None, 2.0, None, 0.0, 1.0, 2.0, None), (None, 4.0, None, 0.0, 3.0, 4.0, None),
                 (None, None, None, 0.0, 4.0, None, 1.5), (3.0, None, 0.0, 0.0, 4.0, None, None),
                 (None, 1.0, None, 1.0, 5.0, 1.0, None), (None, 3.0, None, 1.0, 7.0, 3.0, None),
                 (None, 5.0, None, 1.0, 9.0, 5.0, None), (None, None, None, 1.0, 9.0, None, 1.5),
                 (3.0, None, 1.0, 1.0, 9.0, None, None)],
         "validate": [("epoch", "step", "v"), (0.0, 0.0, 1.5)]})


# --- errors -------------------------------------------------------------------------------------


def _fit_error(L, fx, call):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            if fx == "training_step":
                call(self)
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            if fx == "configure_optimizers":
                call(self)
            return super().configure_optimizers()

        def on_train_epoch_end(self):
            if fx == "on_train_epoch_end":
                call(self)

    try:
        trainer(L, max_epochs=1).fit(M(), loader(4))
    except Exception as exc:  # noqa: BLE001 - what it is is the observation
        return isinstance(exc, ValueError), isinstance(exc, misconfiguration(L)), str(exc)
    return None


def scen_error_non_scalar(L):
    ok_value, _, msg = _fit_error(L, "training_step", lambda m: m.log("bad", torch.ones(3)))
    return ok_value, "bad" in msg


def scen_error_string(L):
    ok_value, _, msg = _fit_error(L, "training_step", lambda m: m.log("bad", "text"))
    return ok_value, "bad" in msg


# Lightning's MisconfigurationException is a plain Exception; ferrotrain's is also a ValueError.
def scen_error_in_configure_optimizers(L):
    _, misconf, msg = _fit_error(L, "configure_optimizers", lambda m: m.log("lr", 0.1))
    return misconf, "configure_optimizers" in msg


def scen_error_on_step_in_epoch_end(L):
    _, misconf, msg = _fit_error(L, "on_train_epoch_end", lambda m: m.log("e", 1.0, on_step=True))
    return misconf, "on_train_epoch_end" in msg, "on_step" in msg


@pytest.mark.parametrize(
    "scenario, expected",
    [
        (scen_error_non_scalar, (True, True)),
        (scen_error_string, (True, True)),
        (scen_error_in_configure_optimizers, (True, True)),
        (scen_error_on_step_in_epoch_end, (True, True, True)),
    ],
)
def test_log_errors(scenario, expected):
    check(scenario, expected)


def scen_views_seen_by_hooks(L):
    seen = []

    class CB(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append(("on_validation_end", trainer.sanity_checking, round_floats(dict(sorted(trainer.callback_metrics.items())))))

        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(("callback.on_train_epoch_end", round_floats(dict(sorted(trainer.callback_metrics.items())))))

    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.log("t", float(batch_idx), on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("v", float(batch_idx))

        def on_train_epoch_end(self):
            seen.append(("module.on_train_epoch_end", round_floats(dict(sorted(self.trainer.callback_metrics.items())))))

    t = trainer(L, max_epochs=2, callbacks=[CB()], num_sanity_val_steps=2, check_val_every_n_epoch=2)
    t.fit(M(), loader(6), loader(4))
    return seen


def test_callback_metrics_seen_by_hooks_during_fit():
    check(scen_views_seen_by_hooks, [("on_validation_end", True, {"v": 0.5}),
         ('callback.on_train_epoch_end', {"t": 1.0, "t_epoch": 1.0, "t_step": 2.0}),
         ('module.on_train_epoch_end', {"t": 1.0, "t_epoch": 1.0, "t_step": 2.0}),
         ("on_validation_end", False, {"t": 2.0, "t_epoch": 1.0, "t_step": 2.0, "v": 0.5}),
         ('callback.on_train_epoch_end', {"t": 1.0, "t_epoch": 1.0, "t_step": 2.0, "v": 0.5}),
         ('module.on_train_epoch_end', {"t": 1.0, "t_epoch": 1.0, "t_step": 2.0, "v": 0.5})])
