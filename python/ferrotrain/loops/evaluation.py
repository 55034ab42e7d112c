"""The validation, test and sanity-check loops, and the predict loop.

Each runs its dataloaders one after another under `torch.inference_mode` (or `no_grad`), calls
the stage's hooks in Lightning's order, and leaves the epoch-level metrics in the stage's
`Results`. Hook order for a stage S (validation, test):

    on_S_model_eval, on_S_start, on_S_epoch_start,
      per batch: transfer hooks, on_S_batch_start, S_step, on_S_batch_end
    on_S_epoch_end, (metrics reduced and logged), on_S_end, on_S_model_train
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ferrotrain.errors import MisconfigurationException
from ferrotrain.trainer.data import INF, Fetcher, set_sampler_epoch
from ferrotrain.trainer.results import Results
from ferrotrain.loops.step_signature import check_dataloader_idx, takes_batch_idx, without_batch_idx

_CPU = torch.device("cpu")


def _no_grad(trainer: Any) -> Any:
    # A fit's validation (and sanity check) runs under `no_grad`, as Lightning's: tensors made
    # there (e.g. by callbacks pruning at validation end) are used by the training that follows.
    fitting = trainer.state.fn == "fit"
    return torch.inference_mode() if trainer._config.inference_mode and not fitting else torch.no_grad()


def run_evaluation(trainer: Any, stage: str, loaders: Sequence[Any], num_batches: Sequence[Union[int, float]],
                   results: Results) -> List[Dict[str, float]]:
    """Run the 'validation' or 'test' loop over `loaders`; return per-dataloader epoch metrics."""
    if sum(num_batches) == 0:
        return []  # nothing to run: Lightning skips the loop and its start/end hooks too
    module = trainer.lightning_module
    hooks = trainer._hooks
    mod = hooks.mod
    set_fx = module.__dict__.__setitem__
    multi = len(loaders) > 1
    results.num_dataloaders = len(loaders)
    results.reset()
    check_dataloader_idx(module, (f"{stage}_step", f"on_{stage}_batch_start", f"on_{stage}_batch_end"), multi,
                         "val" if stage == "validation" else stage)
    # The module's method, or routed through the strategy's wrapper (FSDP gathers parameters there).
    step_fn = trainer.strategy.step_fn(module, f"{stage}_step")
    if not takes_batch_idx(getattr(module, f"{stage}_step")):
        step_fn = without_batch_idx(step_fn)
    cb_batch_start = hooks.cb[f"on_{stage}_batch_start"]
    cb_batch_end = hooks.cb[f"on_{stage}_batch_end"]
    m_batch_start = mod[f"on_{stage}_batch_start"]
    m_batch_end = mod[f"on_{stage}_batch_end"]
    # Decided once, off the per-batch path: whether batches need the transfer hooks or a device
    # copy, whether the precision wraps the step in a context, and the hook names.
    transfer = trainer._transfer_batch if trainer._needs_transfer() else None
    precision = trainer._precision
    step_context = precision.step_context if precision.has_step_context else None
    fx_batch_start, fx_step, fx_batch_end = f"on_{stage}_batch_start", f"{stage}_step", f"on_{stage}_batch_end"
    prev_results = trainer._active_results
    trainer._active_results = results
    module._results = results
    results.dataloader_idx = None
    log_steps = not trainer.sanity_checking

    with _no_grad(trainer):
        modes = _model_mode_hook(trainer, f"on_{stage}_model_eval")
        _call_fx(trainer, f"on_{stage}_start", hooks)
        _call_fx(trainer, f"on_{stage}_epoch_start", hooks)
        for dl_idx, (loader, n) in enumerate(zip(loaders, num_batches)):
            if n == 0:
                continue
            extra = (dl_idx,) if multi else ()
            set_sampler_epoch(loader, trainer.current_epoch)
            fetcher = Fetcher(loader, n)
            trainer._eval_fetchers.append(fetcher)
            batch_idx = 0
            try:
                while True:
                    item = fetcher.fetch()
                    if item is None:
                        break
                    batch = item[0] if transfer is None else transfer(item[0], dl_idx)
                    results.batch = batch
                    results._batch_size = None
                    results.dataloader_idx = dl_idx if multi else None
                    if cb_batch_start or m_batch_start is not None:
                        set_fx("_current_fx_name", fx_batch_start)
                        for f in cb_batch_start:
                            f(trainer, module, batch, batch_idx, *extra)
                        if m_batch_start is not None:
                            m_batch_start(batch, batch_idx, *extra)
                    set_fx("_current_fx_name", fx_step)
                    if step_context is None:
                        out = step_fn(batch, batch_idx, *extra)
                    else:
                        with step_context():
                            out = step_fn(batch, batch_idx, *extra)
                    if cb_batch_end or m_batch_end is not None:
                        set_fx("_current_fx_name", fx_batch_end)
                        for f in cb_batch_end:
                            f(trainer, module, out, batch, batch_idx, *extra)
                        if m_batch_end is not None:
                            m_batch_end(out, batch, batch_idx, *extra)
                    if log_steps and results.has_step_entries:
                        _log_eval_step(trainer, results, stage, dl_idx, batch_idx)
                    batch_idx += 1
            finally:
                fetcher.close()
                trainer._eval_fetchers.remove(fetcher)
                if log_steps:
                    key = (stage, dl_idx)
                    trainer._eval_step_base[key] = trainer._eval_step_base.get(key, 0) + batch_idx
        results.dataloader_idx = None
        results.epoch_end_reached = True
        _call_fx(trainer, f"on_{stage}_epoch_end", hooks)
        metrics = results.dataloader_metrics()
        trainer._on_eval_epoch_end(stage, results)
        results.reset_metrics()
        _call_fx(trainer, f"on_{stage}_end", hooks)
        _model_mode_hook(trainer, f"on_{stage}_model_train", modes)
    module._results = prev_results
    trainer._active_results = prev_results
    return metrics


def _log_eval_step(trainer: Any, results: Results, stage: str, dl_idx: int, batch_idx: int) -> None:
    """Step values logged in an evaluation batch go to the loggers at once, at a step that counts
    this dataloader's batches over the run (Lightning's `update_eval_step_metrics`; no `epoch`)."""
    log, bar, _ = results.step_metrics(results.dataloader_idx)
    trainer._progress_bar_metrics.update(bar)
    if not log:
        return
    trainer._logged_metrics.update({k: torch.tensor(v) for k, v in log.items()})
    step = trainer._eval_step_base.get((stage, dl_idx), 0) + batch_idx
    for lg in trainer.loggers:
        lg.log_metrics(metrics=log, step=step)
        lg.save()


def _call_fx(trainer: Any, name: str, hooks: Any) -> None:
    if hooks.has(name):
        trainer.lightning_module.__dict__["_current_fx_name"] = name
        hooks.callbacks_then_module(name, trainer)


def _model_mode_hook(trainer: Any, name: str, modes: Optional[Dict[str, bool]] = None) -> Dict[str, bool]:
    """`on_*_model_eval`: each submodule's train/eval mode is captured, then the module's override
    runs, else `model.eval()`. `on_*_model_train`: the override, else the captured `modes` are put
    back, so a submodule the user keeps in eval mode stays there (Lightning's `_ModuleMode`)."""
    module = trainer.lightning_module
    overridden = trainer._hooks.overridden.get(name)
    if name.endswith("_eval"):
        captured = {n: m.training for n, m in module.named_modules()}
        if overridden:
            getattr(module, name)()
        else:
            trainer.model.eval()
        return captured
    if overridden:
        getattr(module, name)()
    elif modes:
        for n, m in module.named_modules():
            if n in modes:
                m.training = modes[n]
    return {}
