"""`SpawnLauncher`: `strategy="ddp_spawn"` (`DDPStrategy(start_method="spawn")`), as Lightning's
multiprocessing launcher does it.

The process that calls `trainer.fit(model)` (or validate/test/predict) starts no training itself:
it starts one new process per device with `torch.multiprocessing.start_processes`, handing each
a pickled copy of the Trainer, the model and the call's arguments, plus this process's global
state (RNG states, so every rank draws as the main process would). Each worker joins the process
group and runs the same call. Rank zero then writes what the main process needs into a file: the
call's result (rank zero's predictions or metrics), the trained weights, the checkpoint
callbacks' best and last paths, the metrics views and the loop progress. The main process loads it
once the workers have exited, so after `fit` the user's model object holds the trained weights.

A failing worker stops the others (torch does) and the main process raises `RankFailedError` with
its traceback. Everything the call needs must pickle: the model class must be importable (defined
in a module or under the script's `if __name__ == "__main__":` guard, not in a notebook).

"ddp_fork" / "ddp_notebook" are refused (see `ddp`): forking copies a process whose native
background threads (the batch prefetcher, the checkpoint writer) and torch's thread pools may
hold locks that no thread of the child will ever release.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, Tuple

import torch

from ferrotrain.strategies.environment import find_free_port
from ferrotrain.strategies.launcher import RankFailedError
from ferrotrain.strategies.parallel import destroy_process_group_if_any

_RESULT_FILE = "rank0.pt"


class SpawnLauncher:
    """Runs a Trainer call in `num_processes` new processes of this node (see the module doc)."""

    runs_in_workers = True

    def __init__(self, num_processes: int, num_nodes: int, start_method: str = "spawn") -> None:
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.start_method = start_method

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    def launch(self) -> None:
        """Nothing to start ahead of the call: `run` starts the workers for each call."""

    def run(self, trainer: Any, entry: str, args: Tuple[Any, ...]) -> Any:
        import torch.multiprocessing as mp

        if getattr(mp.current_process(), "_inheriting", False):
            # A spawned child re-imports the script; without the guard it would reach `fit` again.
            from ferrotrain.errors import MisconfigurationException

            raise MisconfigurationException(
                "`strategy='ddp_spawn'` starts new processes that import your script again: put the code that "
                "calls the Trainer under an `if __name__ == \"__main__\":` guard"
            )
        from ferrotrain.trainer.checkpointing import rng_states

        result_dir = tempfile.mkdtemp(prefix="ferrotrain-spawn-")
        node_rank = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
        addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        # A fresh port per call (several fits in one script), unless the user fixed one.
        port = os.environ.get("MASTER_PORT") or str(find_free_port())
        ranks = dict(addr=addr, port=port, node_rank=node_rank, nprocs=self.num_processes,
                     world=self.num_processes * self.num_nodes)
        try:
            try:
                mp.start_processes(
                    _worker, args=(trainer, entry, args, ranks, rng_states(), result_dir),
                    nprocs=self.num_processes, start_method=self.start_method,
                )
            except mp.ProcessRaisedException as exc:
                rank = node_rank * self.num_processes + exc.error_index
                raise RankFailedError(
                    f"Rank {rank} (local rank {exc.error_index}) of the spawned run failed:\n{exc}"
                ) from None
            except mp.ProcessExitedException as exc:
                rank = node_rank * self.num_processes + exc.error_index
                raise RankFailedError(
                    f"Rank {rank} (local rank {exc.error_index}) of the spawned run exited with code "
                    f"{exc.exit_code} (see its output above)"
                ) from None
            path = os.path.join(result_dir, _RESULT_FILE)
            if not os.path.isfile(path):
                return None  # rank zero lives on another node
            payload = torch.load(path, map_location="cpu", weights_only=False)
        finally:
            shutil.rmtree(result_dir, ignore_errors=True)
        _restore_in_main(trainer, args, payload)
        return payload["result"]


def _worker(local_rank: int, trainer: Any, entry: str, args: Tuple[Any, ...], ranks: Dict[str, Any],
            rng: Dict[str, Any], result_dir: str) -> None:
    """One spawned process: become rank `node_rank * nprocs + local_rank`, run the call, and on
    rank zero leave the results for the main process."""
    from ferrotrain.trainer.checkpointing import set_rng_states

    os.environ.update(
        MASTER_ADDR=ranks["addr"], MASTER_PORT=str(ranks["port"]), NODE_RANK=str(ranks["node_rank"]),
        LOCAL_RANK=str(local_rank), WORLD_SIZE=str(ranks["world"]),
        RANK=str(ranks["node_rank"] * ranks["nprocs"] + local_rank),
    )
    if "OMP_NUM_THREADS" not in os.environ:
        # Lightning's rule: the processes share the cores instead of each taking them all.
        threads = max(1, (os.cpu_count() or 1) // ranks["nprocs"])
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    _unshare_modules(trainer, args)
    set_rng_states(rng)
    trainer._apply_determinism()  # process-wide torch flags do not travel with the pickle
    strategy = trainer.strategy
    strategy.launcher = None  # this process is a rank: it starts nothing
    strategy._root_device = strategy.parallel_devices[local_rank]
    result = getattr(trainer, entry)(*args)
    # Nothing in this process talks to the other ranks any more. Destroying the process group now,
    # not in the atexit handler during interpreter shutdown, lets gloo's worker threads drop what
    # they hold while Python can still take it (a late release aborted a rank at exit, rarely).
    destroy_process_group_if_any()
    if strategy.global_rank != 0:
        return
    module = trainer.lightning_module
    payload = {
        "result": result,
        # The trained weights only after fit, as Lightning: evaluation leaves the user's model as it was.
        "weights": module.state_dict() if module is not None and entry == "fit" else None,
        "checkpoints": [_checkpoint_state(cb) for cb in trainer.checkpoint_callbacks],
        "callback_metrics": dict(trainer.callback_metrics),
        "logged_metrics": dict(trainer.logged_metrics),
        "progress_bar_metrics": dict(trainer.progress_bar_metrics),
        "progress": {k: int(v) for k, v in dict(trainer._schedule.state_dict()).items()},
        "should_stop": trainer.should_stop,
        "status": trainer.state.status,
    }
    tmp = os.path.join(result_dir, _RESULT_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, os.path.join(result_dir, _RESULT_FILE))


def _unshare_modules(trainer: Any, args: Tuple[Any, ...]) -> None:
    """torch moves the CPU tensors handed to spawned processes into shared memory: every rank
    would then step the same weights. Each rank gets its own copy (as Lightning does)."""
    modules = [a for a in args if isinstance(a, torch.nn.Module)]
    if trainer.lightning_module is not None:
        modules.append(trainer.lightning_module)
    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                if t.is_shared():
                    t.data = t.data.clone()


_CHECKPOINT_FIELDS = ("dirpath", "best_model_path", "best_model_score", "last_model_path", "best_k_models",
                      "kth_best_model_path", "kth_value", "current_score")


def _checkpoint_state(cb: Any) -> Dict[str, Any]:
    return {k: getattr(cb, k, None) for k in _CHECKPOINT_FIELDS}


def _restore_in_main(trainer: Any, args: Tuple[Any, ...], payload: Dict[str, Any]) -> None:
    """The main process takes over rank zero's results (Lightning's `_recover_results_in_main_process`)."""
    from ferrotrain.core.module import LightningModule
    from ferrotrain.core.datamodule import LightningDataModule

    model = args[0] if args and isinstance(args[0], LightningModule) else trainer.lightning_module
    if model is not None:
        if payload["weights"] is not None:
            model.load_state_dict(payload["weights"])
        datamodule = next((a for a in args if isinstance(a, LightningDataModule)), trainer.datamodule)
        trainer._attach(model, datamodule)
    for cb, state in zip(trainer.checkpoint_callbacks, payload["checkpoints"]):
        for k, v in state.items():
            setattr(cb, k, v)
    for view, key in ((trainer._callback_metrics, "callback_metrics"), (trainer._logged_metrics, "logged_metrics"),
                      (trainer._progress_bar_metrics, "progress_bar_metrics")):
        view.clear()
        view.update(payload[key])
    trainer._active_results = None
    trainer._schedule.load_state_dict(**payload["progress"])
    trainer._schedule.should_stop = payload["should_stop"]
