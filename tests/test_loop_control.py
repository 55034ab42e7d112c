"""Loop control against Lightning 2.x: epoch and step limits, early stops and minimums, when
validation and the sanity check run, loaders without a length or without batches, batch limits,
gradient accumulation, `on_train_batch_start` returning -1, the counters hooks see, and the
batch counts the Trainer exposes.

Each scenario returns what a user observes; the expected values were measured under Lightning
(see `lightning_ref.py` to re-run them there)."""

from __future__ import annotations

from typing import Any, List

import ferrotrain
from tests.lightning_ref import Unsized, check, loader, model_class, trainer

INF = float("inf")


def _train(seen: List[Any]) -> List[Any]:
    return [(e, b) for kind, e, b, _ in seen if kind == "train"]


def _val_starts(seen: List[Any]) -> List[Any]:
    """(epoch, index of the training batch before it, global_step) for each validation run."""
    out = []
    last = None
    for kind, e, b, g in seen:
        if kind == "train":
            last = b
        elif kind == "val_start":
            out.append((e, last, g))
    return out


def _with_val_start(L: Any) -> type:
    class M(model_class(L)):
        def on_validation_start(self) -> None:
            if not self.trainer.sanity_checking:
                self.seen.append(("val_start", self.current_epoch, None, self.global_step))

    return M


# --- epoch and step limits --------------------------------------------------------------------------


def scen_max_epochs(L):
    m = model_class(L)()
    t = trainer(L, max_epochs=2)
    t.fit(m, loader(8))
    return dict(train=_train(m.seen), epoch=t.current_epoch, step=t.global_step)


def test_max_epochs():
    check(scen_max_epochs, {"train": [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)],
         "epoch": 2,
         "step": 8})


def scen_max_steps_mid_epoch(L):
    m = model_class(L)()
    t = trainer(L, max_epochs=10, max_steps=6)
    t.fit(m, loader(8))
    return dict(train=_train(m.seen), epoch=t.current_epoch, step=t.global_step)


def test_max_steps_stops_mid_epoch():
    check(scen_max_steps_mid_epoch, {"train": [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)], "epoch": 2, "step": 6})


def scen_max_steps_only(L):
    m = model_class(L)()
    t = trainer(L, max_steps=3)
    t.fit(m, loader(4))
    return dict(n=len(_train(m.seen)), epoch=t.current_epoch, step=t.global_step, max_epochs=t.max_epochs)


def test_max_steps_without_max_epochs():
    check(scen_max_steps_only, {"n": 3, "epoch": 2, "step": 3, "max_epochs": -1})


def scen_min_epochs_callback_stop(L):
    class Stop(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    m = model_class(L)()
    t = trainer(L, max_epochs=10, min_epochs=3, callbacks=[Stop()])
    t.fit(m, loader(4))
    return dict(train=_train(m.seen), epoch=t.current_epoch, step=t.global_step, should_stop=t.should_stop)


def test_min_epochs_outlasts_should_stop_from_callback():
    check(scen_min_epochs_callback_stop, {"train": [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)],
         "epoch": 3,
         "step": 6,
         "should_stop": True})


def scen_min_epochs_step_stop(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 0 and batch_idx == 1:
                self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    m = M()
    t = trainer(L, max_epochs=10, min_epochs=2)
    t.fit(m, loader(8))
    return dict(train=_train(m.seen), epoch=t.current_epoch, step=t.global_step)


def test_min_epochs_outlasts_should_stop_from_training_step():
    check(scen_min_epochs_step_stop, {"train": [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)],
         "epoch": 2,
         "step": 8})


def scen_should_stop_no_minimum(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    m = M()
    t = trainer(L, max_epochs=10)
    t.fit(m, loader(8))
    return dict(train=_train(m.seen), epoch=t.current_epoch, step=t.global_step)


def test_should_stop_from_training_step_ends_after_the_batch():
    check(scen_should_stop_no_minimum, {"train": [(0, 0), (0, 1)], "epoch": 1, "step": 2})


def scen_min_steps(L):
    class M(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    m = M()
    t = trainer(L, max_epochs=10, min_steps=6)
    t.fit(m, loader(8))
    return dict(train=_train(m.seen), epoch=t.current_epoch, step=t.global_step)


def test_min_steps_outlasts_should_stop():
    check(scen_min_steps, {"train": [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)], "epoch": 2, "step": 6})


# --- validation scheduling ----------------------------------------------------------------------


def scen_val_check_fraction(L):
    m = _with_val_start(L)()
    t = trainer(L, max_epochs=2, val_check_interval=0.5, num_sanity_val_steps=0)
    t.fit(m, loader(8), loader(4))
    return _val_starts(m.seen)


def test_val_check_interval_fraction():
    check(scen_val_check_fraction, [(0, 1, 2), (0, 3, 4), (1, 1, 6), (1, 3, 8)])


def scen_val_check_fraction_uneven(L):
    m = _with_val_start(L)()
    t = trainer(L, max_epochs=1, val_check_interval=0.3, num_sanity_val_steps=0)
    t.fit(m, loader(14), loader(4))
    return _val_starts(m.seen)


def test_val_check_interval_fraction_of_odd_length():
    check(scen_val_check_fraction_uneven, [(0, 1, 2), (0, 3, 4), (0, 5, 6)])


def scen_val_check_int(L):
    m = _with_val_start(L)()
    t = trainer(L, max_epochs=2, val_check_interval=3, num_sanity_val_steps=0)
    t.fit(m, loader(16), loader(4))
    return _val_starts(m.seen)


def test_val_check_interval_int():
    check(scen_val_check_int, [(0, 2, 3), (0, 5, 6), (1, 2, 11), (1, 5, 14)])


def scen_val_every_n_epoch(L):
    m = _with_val_start(L)()
    t = trainer(L, max_epochs=5, check_val_every_n_epoch=2, num_sanity_val_steps=0)
    t.fit(m, loader(4), loader(4))
    return _val_starts(m.seen)


def test_check_val_every_n_epoch():
    check(scen_val_every_n_epoch, [(1, 1, 4), (3, 1, 8)])


def scen_val_across_epochs(L):
    m = _with_val_start(L)()
    t = trainer(L, max_epochs=3, val_check_interval=5, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    t.fit(m, loader(8), loader(4))
    return _val_starts(m.seen)


def test_check_val_every_n_epoch_none_counts_batches_across_epochs():
    check(scen_val_across_epochs, [(1, 0, 5), (2, 1, 10)])


def scen_val_interval_too_large(L):
    m = model_class(L)()
    t = trainer(L, max_epochs=1, val_check_interval=10)
    try:
        t.fit(m, loader(8), loader(4))
    except ValueError as exc:
        return "val_check_interval" in str(exc)
    return None


def test_val_check_interval_larger_than_epoch_is_an_error():
    check(scen_val_interval_too_large, True)


def _sanity_count(L, steps, val_batches=3):
    m = model_class(L)()
    t = trainer(L, max_epochs=1, num_sanity_val_steps=steps)
    t.fit(m, loader(4), loader(2 * val_batches))
    return sum(1 for s in m.seen if s[0] == "sanity"), t.num_sanity_val_steps


def scen_sanity_steps(L):
    return [_sanity_count(L, s) for s in (0, 2, 5, -1)]


def test_num_sanity_val_steps():
    check(scen_sanity_steps, [(0, 0), (2, 2), (3, 5), (3, INF)])


# --- loaders --------------------------------------------------------------------------------------


def scen_unsized_train_loader(L):
    m = _with_val_start(L)()
    t = trainer(L, max_epochs=2, num_sanity_val_steps=0)
    t.fit(m, Unsized(10), loader(4))
    return dict(train=_train(m.seen), val=_val_starts(m.seen), step=t.global_step, n=t.num_training_batches)


def test_train_loader_without_len():
    check(scen_unsized_train_loader, {"train": [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)],
         "val": [(0, 4, 5), (1, 4, 10)],
         "step": 10,
         "n": INF})


def test_estimated_stepping_batches_is_inf_without_len_or_limit():
    # Deliberate difference: Lightning returns `max_steps` (-1) here, ferrotrain the "no limit" it means,
    # as Lightning itself does for `max_epochs=-1`.
    t = trainer(ferrotrain, max_epochs=2, num_sanity_val_steps=0)
    t.fit(model_class(ferrotrain)(), Unsized(10))
    assert t.estimated_stepping_batches == INF


def scen_unsized_with_max_steps(L):
    m = model_class(L)()
    t = trainer(L, max_steps=7, num_sanity_val_steps=0)
    t.fit(m, Unsized(10))
    return dict(train=_train(m.seen), step=t.global_step, epoch=t.current_epoch, est=t.estimated_stepping_batches)


def test_train_loader_without_len_and_max_steps():
    check(scen_unsized_with_max_steps, {"train": [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)],
         "step": 7,
         "epoch": 2,
         "est": 7})


def scen_empty_train_loader(L):
    calls = []

    class M(_with_val_start(L)):
        def on_train_start(self):
            calls.append("on_train_start")

        def on_train_epoch_start(self):
            calls.append("on_train_epoch_start")

        def on_fit_end(self):
            calls.append("on_fit_end")

    m = M()
    t = trainer(L, max_epochs=2)
    t.fit(m, loader(0), loader(4))
    return dict(seen=m.seen, calls=calls, step=t.global_step, epoch=t.current_epoch, n=t.num_training_batches)


def test_empty_train_loader_skips_training():
    check(scen_empty_train_loader, {"seen": [("sanity", 0, 0, 0), ("sanity", 0, 1, 0)],
         "calls": ["on_fit_end"],
         "step": 0,
         "epoch": 0,
         "n": 0})


def scen_empty_val_loader(L):
    m = _with_val_start(L)()
    t = trainer(L, max_epochs=2)
    t.fit(m, loader(4), loader(0))
    return dict(n_train=len(_train(m.seen)), val=[s for s in m.seen if s[0] != "train"], nval=t.num_val_batches)


def test_empty_val_loader():
    check(scen_empty_val_loader, {"n_train": 4, "val": [], "nval": [0]})


def scen_limits(L):
    out = []
    for ltb, lvb in ((3, 1), (0.5, 0.5), (0.3, 0.25), (1.0, 0)):
        m = model_class(L)()
        t = trainer(L, max_epochs=1, limit_train_batches=ltb, limit_val_batches=lvb, num_sanity_val_steps=0)
        t.fit(m, loader(16), loader(8))
        n_val = sum(1 for s in m.seen if s[0] == "val")
        out.append((len(_train(m.seen)), n_val, t.num_training_batches, list(t.num_val_batches)))
    return out


def test_limit_train_and_val_batches():
    check(scen_limits, [(3, 1, 3, [1]), (4, 2, 4, [2]), (2, 1, 2, [1]), (8, 0, 8, [])])


# --- accumulation, -1, counters -------------------------------------------------------------------


def scen_accumulate(L):
    counts = {"step": 0, "zero": 0}

    class M(model_class(L)):
        def on_before_optimizer_step(self, optimizer):
            counts["step"] += 1

        def on_before_zero_grad(self, optimizer):
            counts["zero"] += 1

    m = M()
    t = trainer(L, max_epochs=2, accumulate_grad_batches=3)
    t.fit(m, loader(16))
    return dict(train=_train(m.seen), step=t.global_step, counts=counts)


def test_accumulate_grad_batches():
    check(scen_accumulate, {"train": [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (1, 0), (1, 1),
                   (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7)],
         "step": 6,
         "counts": {"step": 6, "zero": 6}})


def scen_batch_start_minus_one(L):
    class M(model_class(L)):
        def on_train_batch_start(self, batch, batch_idx):
            if batch_idx == 2:
                return -1
            return None

    m = M()
    t = trainer(L, max_epochs=2)
    t.fit(m, loader(10))
    return dict(train=_train(m.seen), step=t.global_step, epoch=t.current_epoch)


def test_on_train_batch_start_minus_one_ends_the_epoch():
    check(scen_batch_start_minus_one, {"train": [(0, 0), (0, 1), (1, 0), (1, 1)], "step": 4, "epoch": 2})


def scen_counters_in_hooks(L):
    seen = []

    class M(model_class(L)):
        def _note(self, name):
            seen.append((name, self.trainer.current_epoch, self.trainer.global_step))

        def on_fit_start(self):
            self._note("on_fit_start")

        def on_train_start(self):
            self._note("on_train_start")

        def on_train_epoch_start(self):
            self._note("on_train_epoch_start")

        def on_train_batch_start(self, batch, batch_idx):
            self._note("on_train_batch_start")

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self._note("on_train_batch_end")

        def on_validation_start(self):
            self._note("on_validation_start")

        def on_validation_end(self):
            self._note("on_validation_end")

        def on_train_epoch_end(self):
            self._note("on_train_epoch_end")

        def on_train_end(self):
            self._note("on_train_end")

        def on_fit_end(self):
            self._note("on_fit_end")

    m = M()
    t = trainer(L, max_epochs=2, num_sanity_val_steps=1)
    t.fit(m, loader(4), loader(2))
    return seen


def test_current_epoch_and_global_step_inside_hooks():
    check(scen_counters_in_hooks, [("on_fit_start", 0, 0), ("on_validation_start", 0, 0), ("on_validation_end", 0, 0),
         ("on_train_start", 0, 0), ("on_train_epoch_start", 0, 0), ("on_train_batch_start", 0, 0),
         ("on_train_batch_end", 0, 1), ("on_train_batch_start", 0, 1), ("on_train_batch_end", 0, 2),
         ("on_validation_start", 0, 2), ("on_validation_end", 0, 2), ("on_train_epoch_end", 0, 2),
         ("on_train_epoch_start", 1, 2), ("on_train_batch_start", 1, 2),
         ("on_train_batch_end", 1, 3), ("on_train_batch_start", 1, 3), ("on_train_batch_end", 1, 4),
         ("on_validation_start", 1, 4), ("on_validation_end", 1, 4), ("on_train_epoch_end", 1, 4),
         ("on_train_end", 2, 4), ("on_fit_end", 2, 4)])


def scen_estimated_stepping_batches(L):
    seen = []

    class M(model_class(L)):
        def configure_optimizers(self):
            seen.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    out = []
    for kw in (dict(max_epochs=3), dict(max_epochs=2, accumulate_grad_batches=3), dict(max_epochs=5, max_steps=4),
               dict(max_epochs=2, limit_train_batches=0.5), dict(max_epochs=-1, max_steps=9)):
        t = trainer(L, **kw)
        t.fit(M(), loader(20))
        out.append((seen[-1], t.estimated_stepping_batches))
    return out


def test_estimated_stepping_batches():
    check(scen_estimated_stepping_batches, [(30, 30), (8, 8), (4, 4), (10, 10), (9, 9)])


def scen_batch_counts(L):
    seen = []

    class M(model_class(L)):
        def on_train_start(self):
            seen.append((self.trainer.num_training_batches, list(self.trainer.num_val_batches)))

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.seen.append(("val", dataloader_idx, batch_idx, self.trainer.sanity_checking))

    m = M()
    t = trainer(L, max_epochs=1, limit_val_batches=3)
    t.fit(m, loader(10, 3), [loader(10, 4), loader(2)])
    return seen, t.num_training_batches, list(t.num_val_batches), list(t.num_sanity_val_batches), m.seen[:8]


def test_num_training_and_val_batches():
    check(scen_batch_counts, ([(4, [3, 1])], 4, [3, 1], [2, 1],
         [("val", 0, 0, True), ("val", 0, 1, True), ("val", 1, 0, True), ("train", 0, 0, 0),
          ("train", 0, 1, 1), ("train", 0, 2, 2), ("train", 0, 3, 3), ("val", 0, 0, False)]))


def scen_several_val_loaders_need_dataloader_idx(L):
    t = trainer(L, max_epochs=1)
    try:
        t.fit(model_class(L)(), loader(4), [loader(4), loader(4)])
    except Exception as exc:  # noqa: BLE001 - Lightning: RuntimeError; ferrotrain: MisconfigurationException
        return "`dataloader_idx`" in str(exc), "validation_step" in str(exc)
    return None


def test_several_val_loaders_need_a_dataloader_idx_argument():
    check(scen_several_val_loaders_need_dataloader_idx, (True, True))


def _overfit_scenario(L) -> dict:
    import warnings as _warnings

    import torch

    from tests.lightning_ref import dataset, is_lightning

    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(4, 1)
            self.seen = {"train": [], "val": []}

        def training_step(self, batch, batch_idx):
            self.seen["train"].append(round(float(batch[0][0, 0]), 5))
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.seen["val"].append(round(float(batch[0][0, 0]), 5))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    m = M()
    t = L.Trainer(max_epochs=3, overfit_batches=2, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False)
    train = torch.utils.data.DataLoader(dataset(12), batch_size=3, shuffle=True)
    val = torch.utils.data.DataLoader(dataset(9, seed=1), batch_size=3, shuffle=True)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        t.fit(m, train, val)
    said = sorted({str(w.message) for w in caught if "overfit" in str(w.message)})
    return dict(said=said, train=m.seen["train"], val=m.seen["val"], limits=(t.num_training_batches, t.num_val_batches),
                overfit=t.overfit_batches, weight=[round(v, 5) for v in m.net.weight.flatten().tolist()])


def test_overfit_batches_trains_on_the_same_first_batches() -> None:
    from tests.lightning_ref import check, dataset

    first = [round(float(dataset(12)[i][0][0]), 5) for i in (0, 3)]
    first_val = [round(float(dataset(9, seed=1)[i][0][0]), 5) for i in (0, 3)]
    got = _overfit_scenario(ferrotrain)
    assert got["said"] == [
        "You requested to overfit but enabled train dataloader shuffling. We are turning off the train dataloader "
        "shuffling for you.",
        "You requested to overfit but enabled val dataloader shuffling. We are turning off the val dataloader "
        "shuffling for you.",
    ]
    assert got["train"] == first * 3 and got["val"] == first_val * 3
    assert got["limits"] == (2, [2]) and got["overfit"] == 2
    check(_overfit_scenario, got)


def scen_interval_beyond_epoch_without_validation(L):
    m = model_class(L)()
    t = trainer(L, max_epochs=1, val_check_interval=10, limit_val_batches=0)
    t.fit(m, loader(8), loader(8))
    return dict(train=len(_train(m.seen)), step=t.global_step)


def test_val_check_interval_beyond_the_epoch_is_fine_when_validation_is_off():
    """An int interval longer than the epoch is an error only when validation would run."""
    check(scen_interval_beyond_epoch_without_validation, {"train": 4, "step": 4})


def scen_sampler_epochs(L):
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    class EpochSampler(RandomSampler):
        def __init__(self, data):
            super().__init__(data)
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))

    def make(batched):
        s = EpochSampler(data)
        return (DataLoader(data, batch_sampler=BatchSampler(s, 2, True)) if batched else
                DataLoader(data, sampler=s, batch_size=2)), s

    out = {}
    for batched in (False, True):
        (tl, ts), (vl, vs) = make(batched), make(batched)
        t = trainer(L, max_epochs=2, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1)
        m = model_class(L)()
        t.fit(m, tl, vl)
        pl, ps = make(batched)
        t.validate(m, pl)
        out[batched] = (ts.epochs, vs.epochs, ps.epochs)
    return out


def test_samplers_learn_the_epoch_in_training_and_evaluation():
    """set_epoch reaches the sampler (or the batch sampler's sampler) of training and
    validation loaders each pass: sanity check and epoch 0, then epoch 1; a later validate
    gets the epoch the fit ended at."""
    check(scen_sampler_epochs, {False: ([0, 1], [0, 0, 1], [2]), True: ([0, 1], [0, 0, 1], [2])})
