"""What goes into a checkpoint and how a run is restored from one (Lightning's checkpoint dict:
weights, optimizer and scheduler states, loop progress, callback states, hyperparameters, RNG
states). The bytes are written and read by `ferrotrain.checkpoint` (the native format); this
module only builds and applies the dict.

Resuming is exact: the loop progress holds the position inside the epoch, and the RNG state at
the epoch's start is kept so the resumed epoch draws the same shuffle order; the batches already
trained on are skipped."""

from __future__ import annotations

import array
import os
import random
import re
import warnings
from typing import Any, Dict, Optional, Tuple

import torch

from ferrotrain.callbacks.callback import Callback, is_overridden
from ferrotrain.core.module import LightningModule
from ferrotrain.errors import CheckpointError, CheckpointNotFoundError, ConfigTypeError, MisconfigurationException

FORMAT_VERSION = 2  # 2: torch's zip format with Lightning's loop state (1: safetensors-based)
# The Lightning release whose checkpoint dict this is.
LIGHTNING_VERSION = "2.6.6"
# In a sharded checkpoint folder: everything but the weights and optimizer states (rank zero writes it).
SHARDED_METADATA = "meta.pt"


def _version() -> str:
    from ferrotrain import __version__

    return __version__


def rng_states() -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    # Python's Mersenne Twister state (625 ints) as one int64 tensor: a single entry in the file
    # instead of 625 JSON numbers, which made every checkpoint's metadata slow to build.
    # (array -> frombuffer: a third of the time of `torch.tensor` on a tuple of ints.)
    state = torch.frombuffer(array.array("q", internal), dtype=torch.int64)
    python_state = {"version": version, "state": state, "gauss": gauss}
    states: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": python_state}
    try:
        import numpy as np

        # As a tensor: numpy arrays are not in what torch.load(weights_only=True) reads.
        name, keys, pos, has_gauss, cached = np.random.get_state()
        states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    except ImportError:
        pass
    # (is_initialized first: it is a flag, while is_available may ask the driver)
    if torch.cuda.is_initialized() and torch.cuda.is_available():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "python" in states:
        py = states["python"]
        if isinstance(py, dict):
            random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        else:  # (version, internal state, gauss), as `random.getstate()` returns it
            random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in states:
        try:
            import numpy as np

            name, keys, *rest = states["numpy"]
            if isinstance(keys, torch.Tensor):
                keys = keys.numpy()
            np.random.set_state((name, np.asarray(keys).astype(np.uint32), *rest))
        except ImportError:
            pass
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


def dump(trainer: Any, weights_only: bool) -> Dict[str, Any]:
    """Lightning's `_CheckpointConnector.dump_checkpoint`."""
    module: LightningModule = trainer.lightning_module
    schedule = trainer._schedule
    ckpt: Dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "ferrotrain_version": _version(),
        "ferrotrain_format": FORMAT_VERSION,
        "state_dict": trainer.strategy.model_state_dict(module),
        "loops": _loops(trainer, module, dict(schedule.state_dict())),
    }
    if not weights_only:
        callbacks: Dict[str, Any] = {}
        for cb in trainer.callbacks:
            state = cb.state_dict()
            if state:
                callbacks[cb.state_key] = state
        ckpt["callbacks"] = callbacks
        ckpt["optimizer_states"] = [trainer.strategy.optimizer_state(opt) for opt in trainer.optimizers]
        ckpt["lr_schedulers"] = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
        prec = trainer._precision.state_dict()
        if prec:
            ckpt["MixedPrecision"] = prec
        ckpt["rng_states"] = rng_states()
        epoch_rng = getattr(trainer, "_epoch_start_rng", None)
        if epoch_rng is not None:
            ckpt["epoch_start_rng_states"] = epoch_rng
        per_rank = _gather_rank_rng(trainer, ckpt["rng_states"], epoch_rng)
        if per_rank is not None:
            ckpt["rank_rng_states"] = per_rank
    if len(module.hparams):
        ckpt["hparams_name"] = getattr(module, "_hparams_name", None) or "kwargs"
        ckpt["hyper_parameters"] = dict(module.hparams)
    dm = trainer.datamodule
    if dm is not None:
        if len(dm.hparams):
            ckpt["datamodule_hparams_name"] = getattr(dm, "_hparams_name", None) or "kwargs"
            ckpt["datamodule_hyper_parameters"] = dict(dm.hparams)
        state = dm.state_dict()
        if state:
            ckpt[type(dm).__qualname__] = state
    if not weights_only:
        for cb in trainer.callbacks:
            if is_overridden(cb, Callback, "on_save_checkpoint"):
                cb.on_save_checkpoint(trainer, module, ckpt)
    if is_overridden(module, LightningModule, "on_save_checkpoint"):
        module.on_save_checkpoint(ckpt)
    return ckpt


def _gather_rank_rng(trainer: Any, now: Dict[str, Any], epoch_start: Any) -> Optional[list]:
    """With several processes, every rank's RNG states (each rank draws its own dropout masks
    and loader seeds), so each resumes with its own: [(now, at the epoch's start)] by rank.
    Every rank builds the checkpoint dict, so this collective is met on all of them."""
    if getattr(trainer, "world_size", 1) <= 1:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, (now, epoch_start))
    return [list(pair) for pair in out]


def _loops(trainer: Any, module: Any, progress: Dict[str, Any]) -> Dict[str, Any]:
    from ferrotrain.checkpoint._migrate import to_lightning_loops

    n = getattr(trainer, "num_training_batches", None)
    last = isinstance(n, int) and n > 0 and int(progress.get("batches_in_epoch", 0)) >= n
    manual = not getattr(module, "automatic_optimization", True)
    return to_lightning_loops(progress, manual=manual, last_batch=last)


def save(trainer: Any, path: str, weights_only: bool, sync: bool) -> None:
    """Write a checkpoint of the trainer's state to `path`; asynchronous unless `sync`."""
    with trainer.profiler.profile("[Trainer]checkpoint_snapshot"):
        ckpt = dump(trainer, weights_only)
    # The strategy decides who writes what: one file here, one by rank zero with DDP, a folder of
    # shards written by every rank with FSDP's sharded state dicts.
    trainer.strategy.save_checkpoint(trainer, path, ckpt, sync)


def write(trainer: Any, path: str, ckpt: Dict[str, Any], sync: bool) -> None:
    """Write `ckpt` as one file at `path` (this process)."""
    from ferrotrain import checkpoint as io
    from ferrotrain.utilities.cloud_io import is_remote

    remote = is_remote(path)
    if not remote:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = getattr(trainer, "_checkpoint_writer", None)
    plugin = getattr(trainer.strategy, "checkpoint_io", None)
    if plugin is not None:
        # A CheckpointIO from `Trainer(plugins=...)` writes it (and runs its own threads, if any),
        # remote paths included.
        wait_for_writes(trainer)
        plugin.save_checkpoint(ckpt, path)
        _flush_removals(trainer)
        return
    if remote:
        # staged locally and copied up; synchronous, since the upload is the slow part anyway
        from ferrotrain.checkpoint._remote import write_via_local

        wait_for_writes(trainer)
        write_via_local(path, lambda local: io.save(local, ckpt))
        _flush_removals(trainer)
        return
    if sync:
        wait_for_writes(trainer)
        io.save(path, ckpt)
        _flush_removals(trainer)
    else:
        if writer is None:
            writer = io.AsyncCheckpointWriter()
            trainer._checkpoint_writer = writer
        # The previous file is durable once this returns: the files it replaced may go now.
        # The background thread deletes replaced files, so the loop does not wait on the file
        # system; a replaced folder (a sharded checkpoint, written by every rank) goes here.
        writer.wait()
        pending = trainer.__dict__.pop("_checkpoint_removals", None) or []
        folders = [(o, p) for o, p in pending if os.path.isdir(p) and not os.path.islink(p)]
        files = [(o, p) for o, p in pending if (o, p) not in folders]
        if folders:
            trainer._checkpoint_removals = folders
            _flush_removals(trainer)
        defer = _until_next_step(trainer)
        try:
            writer.submit(path, ckpt, remove=[p for owner, p in files if owner._may_remove(p)], defer=defer)
        except BaseException:
            # Not taken (an unsavable value, a previous failure): the files stay queued.
            trainer.__dict__.setdefault("_checkpoint_removals", [])[:0] = files
            raise
        if writer.snapshot_pending:
            _finish_before_next_step(trainer)


def _until_next_step(trainer: Any) -> list:
    """The tensors that change only in an optimizer step (the parameters and the optimizers'
    states): their snapshot copy may run while the next forward and backward do. Strategies
    that step through an engine of their own (DeepSpeed) copy everything before returning."""
    from ferrotrain.strategies.strategy import Strategy

    if type(trainer.strategy).automatic_step is not Strategy.automatic_step or not trainer.optimizers:
        return []
    module = trainer.lightning_module
    tensors = [p for p in module.parameters()]
    for opt in trainer.optimizers:
        for state in opt.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return tensors


def _finish_before_next_step(trainer: Any) -> None:
    """Make every optimizer of the run finish the pending snapshot before its next update: a
    step pre-hook, which hands a closure on (torch's optimizers update only after calling it:
    forward and backward overlap the copy) or else waits at once. The hooks stay (idle) until
    the next save or the end of the run: torch does not allow removing one while it runs."""
    _remove_step_hooks(trainer)
    pending = [True]

    def finish() -> None:
        if pending[0]:
            pending[0] = False
            finish_snapshot(trainer)

    def before_step(_opt: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
        if not pending[0]:
            return None
        # torch passes the call's arguments as they are: `args` starts with the optimizer.
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            finish()
            return None

        def closure_then_finish() -> Any:
            try:
                return closure()
            finally:
                finish()

        return args[:1], dict(kwargs, closure=closure_then_finish)

    trainer._snapshot_hooks = [opt.register_step_pre_hook(before_step) for opt in trainer.optimizers]


def _remove_step_hooks(trainer: Any) -> None:
    for handle in trainer.__dict__.pop("_snapshot_hooks", ()):
        handle.remove()


def finish_snapshot(trainer: Any) -> None:
    """Wait for the copy of the checkpoint submitted last, if it still runs (it reads the
    parameters and optimizer states until the next optimizer step): called before they are
    modified in place outside an optimizer step (restores, weight averaging). Raises the
    checkpoint's `CheckpointError` when its copy failed."""
    writer = getattr(trainer, "_checkpoint_writer", None)
    if writer is not None:
        writer.finish_snapshot()


def wait_for_writes(trainer: Any) -> None:
    """Block until the checkpoint in flight is durable (raising its error), then delete the
    files it replaced."""
    finish_snapshot(trainer)
    writer = getattr(trainer, "_checkpoint_writer", None)
    if writer is not None:
        writer.wait()
    _flush_removals(trainer)


def close_writer(trainer: Any) -> None:
    """End of a run: wait for the write in flight, delete what it replaced, release the buffer."""
    _remove_step_hooks(trainer)
    writer = getattr(trainer, "_checkpoint_writer", None)
    if writer is not None:
        trainer._checkpoint_writer = None
        writer.close()
    plugin = getattr(trainer.strategy, "checkpoint_io", None)
    if plugin is not None:
        plugin.teardown()
    _flush_removals(trainer)


def remove_when_durable(trainer: Any, owner: Any, path: str) -> None:
    """Delete `path` once every checkpoint submitted so far is durable (at the next save, wait
    or the end of the run), so a crash never leaves fewer files than the top k; `owner`
    (a `ModelCheckpoint`) may still veto it then with `_may_remove(path)`, e.g. when a newer
    checkpoint was written under the same name."""
    trainer.__dict__.setdefault("_checkpoint_removals", []).append((owner, path))


def _flush_removals(trainer: Any) -> None:
    pending = trainer.__dict__.get("_checkpoint_removals")
    if not pending:
        return
    trainer._checkpoint_removals = []
    from ferrotrain.utilities.cloud_io import get_filesystem, is_remote

    plugin = getattr(trainer.strategy, "checkpoint_io", None)
    for owner, path in pending:
        if plugin is not None:
            # The CheckpointIO that wrote the file deletes it (Lightning calls its remove_checkpoint).
            if owner._may_remove(path):
                plugin.remove_checkpoint(path)
            continue
        if is_remote(path):
            fs = get_filesystem(path)
            if owner._may_remove(path) and fs.exists(path):
                fs.rm(path, recursive=True)
            continue
        if owner._may_remove(path) and os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):  # a sharded checkpoint
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def resolve_path(trainer: Any, ckpt_path: str, fn: str) -> Optional[str]:
    """The file `ckpt_path` names ("best", "last" or a path); None for "last" when there is none."""
    if not isinstance(ckpt_path, (str, os.PathLike)):
        raise ConfigTypeError(
            f"`{fn}(ckpt_path={ckpt_path!r})` must be a path (str or os.PathLike), \"best\" or \"last\"; "
            f"got {type(ckpt_path).__name__}"
        )
    if ckpt_path == "best":
        cb = trainer.checkpoint_callback
        if cb is None:
            raise MisconfigurationException(
                f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured: the Trainer has '
                "no `ModelCheckpoint` callback (`enable_checkpointing=False`?); pass a checkpoint path instead"
            )
        wait_for_writes(trainer)
        if not cb.best_model_path:
            if trainer.fast_dev_run:
                raise MisconfigurationException(
                    f'You cannot execute `.{fn}(ckpt_path="best")` with `fast_dev_run=True`. Please pass an exact '
                    f"checkpoint path to `.{fn}(ckpt_path=...)`"
                )
            raise MisconfigurationException(
                f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured to save the best model: '
                "it has not saved a best model yet; pass a checkpoint path instead"
            )
        return cb.best_model_path
    if ckpt_path == "hpc":
        from ferrotrain.trainer.preemption import hpc_resume_path

        path = hpc_resume_path(os.fspath(trainer.default_root_dir))
        if path is None:
            raise ValueError(
                f'`.{fn}(ckpt_path="hpc")` is set but no HPC checkpoint was found. Please pass an exact checkpoint '
                f"path to `.{fn}(ckpt_path=...)`"
            )
        return path
    if ckpt_path == "last":
        cb = trainer.checkpoint_callback
        if cb is not None:
            wait_for_writes(trainer)
        path = (cb.last_model_path or _latest_in(cb.dirpath, cb.CHECKPOINT_NAME_LAST)) if cb is not None else ""
        path = _newer_preemption_checkpoint(trainer, path)
        if not path:
            # As in Lightning: not an error, so "last" can be set before the first run.
            warnings.warn(
                f'`.{fn}(ckpt_path="last")` is set, but there is no last checkpoint available. No checkpoint '
                "will be loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`.",
                UserWarning,
                stacklevel=4,
            )
            return None
        return path
    path = os.fspath(ckpt_path)
    if not trainer.strategy.checkpoint_exists(path):
        if os.path.isdir(path):
            raise CheckpointError(
                f"{path!r} is a folder: a sharded checkpoint, which only `FSDPStrategy` reads; pass a checkpoint file"
            )
        raise CheckpointNotFoundError(f"Checkpoint file not found: {path!r}")
    return path


def fit_ckpt_path(trainer: Any, ckpt_path: Optional[str]) -> Optional[str]:
    """Lightning's rule: a `fit()` without `ckpt_path` under SLURM resumes from the newest
    preemption checkpoint (`hpc_ckpt_<n>.ckpt` in `default_root_dir`) when there is one, so a
    requeued job goes on by itself."""
    if ckpt_path is not None:
        return ckpt_path
    from ferrotrain.strategies.environment import SLURMEnvironment
    from ferrotrain.trainer.preemption import hpc_resume_path

    if SLURMEnvironment.detect() and hpc_resume_path(os.fspath(trainer.default_root_dir)) is not None:
        return "hpc"
    return None


def _newer_preemption_checkpoint(trainer: Any, path: str) -> str:
    """`path`, or the preemption checkpoint in `default_root_dir` when that one is newer: "last"
    is the newest state the run saved, whatever wrote it."""
    from ferrotrain.utilities.cloud_io import is_remote
    from ferrotrain.trainer.preemption import hpc_resume_path

    root = os.fspath(trainer.default_root_dir)
    hpc = None if is_remote(root) else hpc_resume_path(root)
    if hpc is None:
        return path
    if not path or is_remote(path) or not os.path.exists(path):
        return hpc
    return hpc if os.stat(hpc).st_mtime_ns >= os.stat(path).st_mtime_ns else path


def _latest_in(folder: Optional[str], last_name: Optional[str] = None) -> str:
    """The newest complete checkpoint in `folder`. Given `last_name`, files named like the last
    checkpoint (`last.ckpt`, `last-v1.ckpt`, ...) come first, as Lightning looks only at those;
    the newest other file is the fallback (a run killed before it wrote a `last` resumes from its
    newest top-k file). Files written within one mtime tick are ordered by their version suffix,
    so the pick does not depend on the clock's resolution."""
    from ferrotrain.utilities.cloud_io import is_remote

    pattern = re.compile(rf"^{re.escape(last_name)}(?:-v(\d+))?\.ckpt$") if last_name else None
    if folder and is_remote(folder):
        return _latest_in_remote(folder, pattern)
    if not folder or not os.path.isdir(folder):
        return ""
    last, other = [], []
    # Only complete checkpoints: a crashed write leaves a hidden `.<name>.<pid>.<n>.tmp` file, and a
    # `last.ckpt` link whose target was removed is skipped rather than failing the lookup.
    for name in os.listdir(folder):
        if not name.endswith(".ckpt") or name.startswith("."):
            continue
        path = os.path.join(folder, name)
        # A folder is a sharded checkpoint when its metadata file is there (complete).
        if not (os.path.isfile(path) or os.path.isfile(os.path.join(path, SHARDED_METADATA))):
            continue
        m = pattern.match(name) if pattern else None
        order = int(m.group(1) or 0) if m else 0
        (last if m else other).append((os.stat(path).st_mtime_ns, order, _natural(name), path))
    found = last or other
    return max(found)[3] if found else ""


def _latest_in_remote(folder: str, pattern: Optional["re.Pattern[str]"]) -> str:
    """`_latest_in` for an fsspec folder: modification times vary by backend (or are absent),
    so files are ordered by their version suffix and name."""
    from ferrotrain.utilities.cloud_io import get_filesystem

    fs = get_filesystem(folder)
    if not fs.isdir(folder):
        return ""
    last, other = [], []
    for info in fs.ls(folder, detail=True):
        name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") != "file" or not name.endswith(".ckpt") or name.startswith("."):
            continue
        m = pattern.match(name) if pattern else None
        order = int(m.group(1) or 0) if m else 0
        (last if m else other).append((order, _natural(name), f"{folder.rstrip('/')}/{name}"))
    found = last or other
    return max(found)[2] if found else ""


def _natural(name: str) -> Tuple[Any, ...]:
    """`step=10` after `step=9`: numbers in a file name compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))


def load(path: str, map_location: Any = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
    """A ferrotrain checkpoint, or a Lightning one (read with `torch.load(weights_only=True)`
    unless the caller passed `weights_only=False`)."""
    from ferrotrain.checkpoint._migrate import load_any
    from ferrotrain.utilities.cloud_io import is_remote

    if is_remote(path):
        from ferrotrain.checkpoint._remote import local_copy

        with local_copy(path) as local:
            return load_any(local, map_location=map_location, weights_only=weights_only)
    return load_any(path, map_location=map_location, weights_only=weights_only)


def _strict(module: Any) -> bool:
    strict = getattr(module, "strict_loading", None)
    return True if strict is None else bool(strict)


def restore_weights(trainer: Any, ckpt_path: str, weights_only: Optional[bool] = None) -> None:
    fn = trainer.state.fn.value if trainer.state.fn is not None else "validate"
    path = resolve_path(trainer, ckpt_path, fn)
    if path is None:
        return
    finish_snapshot(trainer)  # the weights are overwritten in place
    module = trainer.lightning_module
    strategy = trainer.strategy
    ckpt = strategy.load_checkpoint(path, trainer._device, weights_only)
    if is_overridden(module, LightningModule, "on_load_checkpoint"):
        module.on_load_checkpoint(ckpt)
    strategy.load_model_state_dict(module, ckpt, path, _strict(module))
    trainer._ckpt_path = path


def restore_modules_for_fit(trainer: Any, ckpt_path: str, weights_only: Optional[bool] = None) -> None:
    """First half of a resume, before `configure_optimizers` as in Lightning: the module's and
    callbacks' state (their `on_load_checkpoint` hooks included). The rest waits for the optimizers."""
    path = resolve_path(trainer, ckpt_path, "fit")
    if path is None:
        return
    ckpt = _restore_modules_and_callbacks(trainer, path, weights_only)
    trainer._resume_ckpt = (path, ckpt)


def restore_training_for_fit(trainer: Any) -> None:
    """Second half of a resume: optimizers, schedulers, precision, loop progress and RNG."""
    pending = trainer.__dict__.pop("_resume_ckpt", None)
    if pending is None:
        return
    path, ckpt = pending
    _restore_training_state(trainer, path, ckpt)
    trainer._resume_rng = (ckpt.get("epoch_start_rng_states"), ckpt.get("rng_states"))
    per_rank = ckpt.get("rank_rng_states")
    if per_rank is not None and len(per_rank) == trainer.world_size:
        now, epoch_start = per_rank[trainer.global_rank]
        trainer._resume_rng = (epoch_start, now)
    trainer._ckpt_path = path


def restore_state(trainer: Any, path: str, weights_only: Optional[bool] = None) -> Dict[str, Any]:
    """Put the model, datamodule, callbacks, optimizers, schedulers, precision and loop progress
    back as `path` holds them (Lightning's `_CheckpointConnector.restore`, which the tuners use to
    undo their trial runs); the RNG is left alone. Returns the checkpoint dict."""
    ckpt = _restore_modules_and_callbacks(trainer, path, weights_only)
    _restore_training_state(trainer, path, ckpt)
    return ckpt


def _restore_modules_and_callbacks(trainer: Any, path: str, weights_only: Optional[bool]) -> Dict[str, Any]:
    finish_snapshot(trainer)  # the weights are overwritten in place
    module = trainer.lightning_module
    strategy = trainer.strategy
    ckpt = strategy.load_checkpoint(path, trainer._device, weights_only)
    if is_overridden(module, LightningModule, "on_load_checkpoint"):
        module.on_load_checkpoint(ckpt)
    strategy.load_model_state_dict(module, ckpt, path, _strict(module))
    if trainer.datamodule is not None:
        state = ckpt.get(type(trainer.datamodule).__qualname__)
        if state:
            trainer.datamodule.load_state_dict(state)
    states = ckpt.get("callbacks", {})
    for cb in trainer.callbacks:
        if is_overridden(cb, Callback, "on_load_checkpoint"):
            cb.on_load_checkpoint(trainer, module, ckpt)
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])
    return ckpt


def _restore_training_state(trainer: Any, path: str, ckpt: Dict[str, Any]) -> None:
    strategy = trainer.strategy
    opt_states = ckpt.get("optimizer_states")
    if opt_states is None:
        raise CheckpointError(f"{path!r} holds only weights (saved with weights_only=True); it cannot resume a fit")
    if len(opt_states) != len(trainer.optimizers):
        raise CheckpointError(
            f"{path!r} has {len(opt_states)} optimizer states but the model configured {len(trainer.optimizers)} optimizers"
        )
    strategy.load_optimizer_states(trainer.optimizers, opt_states, path)
    for cfg, state in zip(trainer.lr_scheduler_configs, ckpt.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(state)
    if "MixedPrecision" in ckpt:
        trainer._precision.load_state_dict(ckpt["MixedPrecision"])
    progress = {k: int(v) for k, v in ckpt["loops"]["progress"].items()}
    trainer._schedule.load_state_dict(**progress)


def load_module_from_checkpoint(cls: type, checkpoint_path: Any, map_location: Any, strict: Optional[bool],
                                kwargs: Dict[str, Any], weights_only: Optional[bool] = None) -> LightningModule:
    """Lightning's `LightningModule.load_from_checkpoint`: rebuild `cls` from the saved
    hyperparameters (overridden by `kwargs`; filtered to the constructor's parameters unless it
    takes `**kwargs`), run `on_load_checkpoint`, load the weights."""
    import inspect

    path = os.fspath(checkpoint_path)
    ckpt = load(path, map_location=map_location, weights_only=weights_only)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint '{path}' has no 'state_dict' entry: it is not a model checkpoint")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    params = inspect.signature(cls.__init__).parameters
    name = ckpt.get("hparams_name")
    if isinstance(name, str) and name != "kwargs" and name in params:
        # `save_hyperparameters(a_dict)`: the dict was one constructor argument, as Lightning saves it.
        hparams = {name: hparams}
    elif not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        hparams = {k: v for k, v in hparams.items() if k in params and k != "self"}
    hparams.update(kwargs)
    try:
        model = cls(**hparams)
    except TypeError as exc:
        raise CheckpointError(
            f"Could not build {cls.__name__} from the hyperparameters saved in {path!r} "
            f"({sorted(hparams)}): {exc}"
        ) from exc
    if is_overridden(model, LightningModule, "on_load_checkpoint"):
        model.on_load_checkpoint(ckpt)
    if strict is None:
        strict = getattr(model, "strict_loading", None)
    load_weights(model, ckpt["state_dict"], path, True if strict is None else bool(strict))
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    return model


def load_weights(model: torch.nn.Module, state_dict: Dict[str, Any], path: str, strict: bool) -> None:
    """`model.load_state_dict` with torch's error wording, as a `CheckpointError` (a
    RuntimeError) naming the file. Mis-shaped keys are always an error; with `strict=False`,
    missing and unexpected keys are warnings listing them, as in Lightning."""
    import warnings

    try:
        keys = model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{e}\n\t(checkpoint: '{path}')") from None
    if not strict:
        if keys.missing_keys:
            warnings.warn(
                f"Found keys that are in the model state dict but not in the checkpoint: {keys.missing_keys}",
                UserWarning, stacklevel=3,
            )
        if keys.unexpected_keys:
            warnings.warn(
                f"Found keys that are not in the model state dict but in the checkpoint: {keys.unexpected_keys}",
                UserWarning, stacklevel=3,
            )
