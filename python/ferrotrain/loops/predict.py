"""`trainer.predict_loop`: what Lightning's `_PredictionLoop` exposes to callbacks (the cached
predictions, the sample indices of each batch), and the loader rewrite that records those indices.

`run_predict` runs the batches (Lightning's predict loop, on the evaluation loop's helpers);
the rest is the state a `BasePredictionWriter` reads. Sample indices are recorded, as in Lightning, by putting a
recording wrapper around the predict loader's batch sampler (the loader is rebuilt with it, and
with `drop_last=False` so every sample is predicted). The rebuild only happens when a prediction
writer is attached: nothing else reads the indices.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, List, Optional, Sequence, Union

from ferrotrain.loops.evaluation import _CPU, _call_fx, _model_mode_hook, _no_grad
from ferrotrain.trainer.data import Fetcher, set_sampler_epoch
from ferrotrain.utilities.apply_func import move_data_to_device


class IndexBatchSampler:
    """Wraps a batch sampler and keeps every batch of indices it hands out (Lightning's
    `_IndexBatchSamplerWrapper`); the list restarts with each new iteration."""

    def __init__(self, batch_sampler: Any) -> None:
        # Keep the wrapped sampler's attributes (batch_size, drop_last, sampler) visible.
        self.__dict__ = {k: v for k, v in batch_sampler.__dict__.items()
                         if k not in ("__next__", "__iter__", "__len__", "__getstate__")}
        self.seen_batch_indices: List[List[int]] = []
        self._batch_sampler = batch_sampler
        self._iterator: Optional[Iterator[List[int]]] = None

    def __iter__(self) -> "IndexBatchSampler":
        self.seen_batch_indices = []
        self._iterator = iter(self._batch_sampler)
        return self

    def __next__(self) -> List[int]:
        assert self._iterator is not None
        batch = next(self._iterator)
        self.seen_batch_indices.append(batch)
        return batch

    def __len__(self) -> int:
        return len(self._batch_sampler)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_iterator"] = None  # generators do not pickle (worker processes)
        return state


def with_index_tracking(loader: Any) -> Any:
    """`loader` rebuilt around an `IndexBatchSampler`, or as it is when it cannot be (not a
    DataLoader, an iterable dataset, no batch sampler): the writer then gets no indices."""
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    batch_sampler = loader.batch_sampler
    if batch_sampler is None:
        return loader
    if type(batch_sampler) is BatchSampler:
        batch_sampler = BatchSampler(loader.sampler, batch_size=batch_sampler.batch_size, drop_last=False)
    elif hasattr(batch_sampler, "batch_size") and hasattr(batch_sampler, "drop_last"):
        # Lightning rebuilds a BatchSampler look-alike the same way, around the loader's sampler.
        batch_sampler = type(batch_sampler)(loader.sampler, batch_size=batch_sampler.batch_size, drop_last=False)
    else:
        warnings.warn(
            f"You are using a custom batch sampler `{type(batch_sampler).__qualname__}` for prediction."
            " Lightning would normally set `drop_last=False` to ensure all samples are returned, but for"
            " custom samplers it can't guarantee this. Make sure your sampler is configured correctly to return"
            " all indices.",
            stacklevel=2,
        )
    from ferrotrain.trainer.data import rebuild_loader

    try:
        return rebuild_loader(loader, batch_sampler=IndexBatchSampler(batch_sampler))
    except TypeError as exc:
        warnings.warn(f"Could not rebuild the predict loader ({type(loader).__name__}) to record batch indices ({exc})",
                      stacklevel=2)
        return loader


class PredictLoop:
    """The predict loop's state, as `trainer.predict_loop` (Lightning's attribute names)."""

    def __init__(self) -> None:
        self.epoch_batch_indices: List[List[List[int]]] = []  # dataloaders x batches x samples
        self.current_batch_indices: List[int] = []  # the batch being written
        self.max_batches: List[Any] = []
        self._predictions: List[List[Any]] = []  # dataloaders x batches
        self._return_predictions = True
        self._num_dataloaders = 0

    @property
    def return_predictions(self) -> bool:
        return self._return_predictions

    @return_predictions.setter
    def return_predictions(self, value: Optional[bool]) -> None:
        self._return_predictions = True if value is None else bool(value)

    @property
    def num_dataloaders(self) -> int:
        return self._num_dataloaders

    @property
    def predictions(self) -> List[Any]:
        """The predictions kept so far: one list per dataloader, or the only one's list."""
        if self._predictions == []:
            return self._predictions
        return self._predictions[0] if self._num_dataloaders == 1 else self._predictions


def batch_indices_of(loader: Any) -> Optional[List[List[int]]]:
    sampler = getattr(loader, "batch_sampler", None)
    return sampler.seen_batch_indices if isinstance(sampler, IndexBatchSampler) else None


def run_predict(trainer: Any, loaders: Sequence[Any], num_batches: Sequence[Union[int, float]],
                return_predictions: bool) -> Optional[List[Any]]:
    """Lightning's predict loop. With a `BasePredictionWriter` attached, each batch's sample
    indices are looked up (`trainer.predict_loop`), and predictions are kept for an epoch-level
    writer even when `return_predictions=False`; without one, nothing extra runs per batch."""
    # Callbacks sit above the loops (the layers): imported at call time until the writer's
    # hooks are read through the hook table instead.
    from ferrotrain.callbacks.prediction_writer import BasePredictionWriter

    module = trainer.lightning_module
    hooks = trainer._hooks
    mod = hooks.mod
    multi = len(loaders) > 1
    cb_start, cb_end = hooks.cb["on_predict_batch_start"], hooks.cb["on_predict_batch_end"]
    m_start, m_end = mod["on_predict_batch_start"], mod["on_predict_batch_end"]
    transfer = trainer._transfer_batch if trainer._needs_transfer() else None
    step_context = trainer._precision.step_context if trainer._precision.has_step_context else None
    loop = trainer.predict_loop
    writers = [cb for cb in trainer.callbacks if isinstance(cb, BasePredictionWriter)]
    on_epoch = any(cb.interval.on_epoch for cb in writers)
    on_batch = any(cb.interval.on_batch for cb in writers)
    keep = return_predictions or on_epoch
    to_cpu = trainer._device.type != "cpu"
    loop.return_predictions = return_predictions
    loop._num_dataloaders = len(loaders)
    loop.max_batches = list(num_batches)
    loop.epoch_batch_indices = [[] for _ in loaders]
    loop._predictions = [[] for _ in loaders]
    loop.current_batch_indices = []
    warned = False
    predict_step = trainer.strategy.step_fn(module, "predict_step")
    with _no_grad(trainer):
        modes = _model_mode_hook(trainer, "on_predict_model_eval")
        _call_fx(trainer, "on_predict_start", hooks)
        _call_fx(trainer, "on_predict_epoch_start", hooks)
        for dl_idx, (loader, n) in enumerate(zip(loaders, num_batches)):
            preds = loop._predictions[dl_idx]
            if n == 0:
                continue
            extra = (dl_idx,) if multi else ()
            kwargs = {"dataloader_idx": dl_idx} if multi else {}
            set_sampler_epoch(loader, trainer.current_epoch)
            fetcher = Fetcher(loader, n)
            batch_idx = 0
            while True:
                item = fetcher.fetch()
                if item is None:
                    break
                batch = item[0] if transfer is None else transfer(item[0], dl_idx)
                if writers:
                    seen = batch_indices_of(loader)
                    if seen is None:
                        if not warned:  # Lightning's WarningCache: said once per run
                            warned = True
                            from ferrotrain.utilities.rank_zero import rank_zero_warn

                            rank_zero_warn(f"Couldn't infer the batch indices fetched from your dataloader: "
                                           f"`{type(loader).__name__}`")
                    else:
                        if on_epoch:
                            loop.epoch_batch_indices[dl_idx].append(seen[batch_idx])
                        if on_batch:
                            loop.current_batch_indices = seen[batch_idx]
                module.__dict__["_current_fx_name"] = "on_predict_batch_start"
                for f in cb_start:
                    f(trainer, module, batch, batch_idx, *extra)
                if m_start is not None:
                    m_start(batch, batch_idx, *extra)
                module.__dict__["_current_fx_name"] = "predict_step"
                if step_context is None:
                    out = predict_step(batch, batch_idx, **kwargs)
                else:
                    with step_context():
                        out = predict_step(batch, batch_idx, **kwargs)
                module.__dict__["_current_fx_name"] = "on_predict_batch_end"
                for f in cb_end:
                    f(trainer, module, out, batch, batch_idx, *extra)
                if m_end is not None:
                    m_end(out, batch, batch_idx, *extra)
                if keep:
                    # Lightning keeps predictions on the CPU.
                    preds.append(move_data_to_device(out, _CPU) if to_cpu else out)
                batch_idx += 1
        _call_fx(trainer, "on_predict_epoch_end", hooks)
        result = loop.predictions if return_predictions else None
        # Lightning drops what it kept only for the writers before `on_predict_end`.
        if not return_predictions:
            loop._predictions = []
        loop.epoch_batch_indices = []
        _call_fx(trainer, "on_predict_end", hooks)
        # Lightning has no `on_predict_model_train` hook: the captured modes come back.
        _model_mode_hook(trainer, "on_predict_model_train", modes)
    return result
