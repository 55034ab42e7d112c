"""`ParallelStrategy`: what every multi-process strategy (DDP, FSDP) shares.

What it owns: the ranks (read from the cluster environment), the launcher that starts the other
local processes, joining the torch.distributed process group (once per process), the
`DistributedSampler` in front of the loaders, the collectives (`barrier`, `broadcast`, `reduce`,
`all_gather`, `reduce_boolean_decision`), rank-zero checkpoint writing, and turning a broken
connection into the failing rank's error. How the model is wrapped is the subclass's job
(`ddp`, `fsdp`).
"""

from __future__ import annotations

import atexit
import datetime
import os
import traceback
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from ferrotrain.errors import MisconfigurationException
from ferrotrain.strategies import environment as env_mod
from ferrotrain.strategies.launcher import ERROR_FILE_VAR, SubprocessLauncher, record_failure
from ferrotrain.strategies.strategy import Strategy
from ferrotrain.utilities.rank_zero import rank_zero_only

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
BACKENDS = ("gloo", "nccl", "mpi", "ucc")


class ParallelStrategy(Strategy):
    strategy_name = "parallel"

    def __init__(
        self,
        process_group_backend: Optional[str] = None,
        timeout: Optional[datetime.timedelta] = DEFAULT_TIMEOUT,
        cluster_environment: Optional[env_mod.ClusterEnvironment] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if process_group_backend is not None and process_group_backend not in BACKENDS:
            raise MisconfigurationException(
                f"`{name}(process_group_backend={process_group_backend!r})` must be None (chosen from the "
                f"accelerator) or one of {', '.join(map(repr, BACKENDS))}"
            )
        if timeout is not None and not isinstance(timeout, datetime.timedelta):
            raise MisconfigurationException(f"`{name}(timeout=...)` must be a datetime.timedelta, got {timeout!r}")
        self._process_group_backend = process_group_backend
        self._timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        self.cluster_environment = cluster_environment
        self.launcher: Any = None

    @property
    def process_group_backend(self) -> Optional[str]:
        return self._process_group_backend

    @property
    def timeout(self) -> datetime.timedelta:
        return self._timeout

    # ---------------------------------------------------------------- layout
    def _configure(self, accelerator: str, devices: list, num_nodes: int) -> None:
        super()._configure(accelerator, devices, num_nodes)
        if self.cluster_environment is None:
            self.cluster_environment = env_mod.detect()
        if not self.cluster_environment.creates_processes_externally and (len(devices) > 1 or num_nodes > 1):
            self.launcher = self._make_launcher(len(devices), num_nodes)
        if self._process_group_backend is None:
            self._process_group_backend = "nccl" if accelerator == "cuda" else "gloo"
        elif self._process_group_backend == "nccl" and accelerator != "cuda":
            raise MisconfigurationException(
                f"`{type(self).__name__}(process_group_backend='nccl')` needs CUDA devices, but the accelerator is "
                f"{accelerator!r}; use 'gloo' (or leave it None)"
            )
        local = self.local_rank
        if local >= len(devices):
            raise MisconfigurationException(
                f"This process has LOCAL_RANK={local}, but `Trainer(devices=...)` gives this node only {len(devices)} devices"
            )
        self._root_device = devices[local]
        self.set_world_ranks()

    def set_world_ranks(self) -> None:
        """Tell the environment this process's rank and the world size (an environment whose
        scheduler owns them, such as SLURM's, ignores it), as Lightning's DDP does."""
        env = self.cluster_environment
        if env is not None:
            env.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
            env.set_world_size(self.num_nodes * self.num_processes)
        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]

    def _make_launcher(self, num_processes: int, num_nodes: int) -> Any:
        assert self.cluster_environment is not None
        return SubprocessLauncher(self.cluster_environment, num_processes, num_nodes)

    @property
    def world_size(self) -> int:
        env = self.cluster_environment
        return env.world_size() if env is not None else 1

    @property
    def global_rank(self) -> int:
        env = self.cluster_environment
        return env.global_rank() if env is not None else 0

    @property
    def local_rank(self) -> int:
        env = self.cluster_environment
        return env.local_rank() if env is not None else 0

    @property
    def node_rank(self) -> int:
        env = self.cluster_environment
        return env.node_rank() if env is not None else 0

    @property
    def distributed_sampler_kwargs(self) -> dict:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # ---------------------------------------------------------------- run life cycle
    def launch(self) -> None:
        if self.cluster_environment is not None:
            self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if self.launcher is not None:
            self.launcher.launch()

    def setup_environment(self) -> None:
        self.set_world_ranks()  # a spawned worker learns its local rank only now
        if self._root_device.type == "cuda":
            torch.cuda.set_device(self._root_device)
        if dist.is_initialized():
            if dist.get_world_size() != self.world_size:
                raise MisconfigurationException(
                    f"A process group of world size {dist.get_world_size()} already exists, but this Trainer "
                    f"needs {self.world_size} processes"
                )
            return
        env = self.cluster_environment
        assert env is not None
        # Every rank reads rank zero's address from its environment, as Lightning's `_init_dist_connection`.
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        dist.init_process_group(
            self._process_group_backend, rank=self.global_rank, world_size=self.world_size, timeout=self._timeout
        )
        atexit.register(destroy_process_group_if_any)

    def teardown(self) -> None:
        if self.cluster_environment is not None:
            self.cluster_environment.teardown()
        super().teardown()

    def process_dataloader(self, loader: Any, stage: str) -> Any:
        from ferrotrain.strategies.sampler import with_distributed_sampler

        return with_distributed_sampler(loader, stage, self.world_size, self.global_rank)

    def on_exception(self, exc: BaseException) -> BaseException:
        from ferrotrain.errors import SIGTERMException

        if isinstance(exc, SIGTERMException):
            return exc  # every rank agreed to stop at this step: the others end on their own
        if ERROR_FILE_VAR in os.environ:  # a child of our launcher: leave the traceback for rank 0
            record_failure("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        launcher = self.launcher
        if not isinstance(launcher, SubprocessLauncher) or not launcher.procs:
            return exc
        # A broken connection on rank 0 usually means another rank died: show that rank's error.
        failed = launcher.failure(wait_s=3.0 if _is_comm_error(exc) else 0.0)
        launcher.on_exception()
        return failed if failed is not None and _is_comm_error(exc) else exc

    # ---------------------------------------------------------------- collectives
    def _active(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def barrier(self, name: Optional[str] = None) -> None:
        if self._active():
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self._active():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def reduce(self, tensor: Any, group: Any = None, reduce_op: Optional[str] = "mean") -> Any:
        if not isinstance(tensor, torch.Tensor) or not self._active():
            return tensor
        op = (reduce_op or "sum").lower() if isinstance(reduce_op, str) else reduce_op
        out = tensor.clone()
        if op in ("mean", "avg"):
            dist.all_reduce(out, dist.ReduceOp.SUM, group=group)
            return out / dist.get_world_size(group)
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(out, ops.get(op, op), group=group)
        return out

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        if not self._active():
            return data
        device = self._root_device

        def gather(t: Any) -> torch.Tensor:
            t = torch.as_tensor(t, device=device)
            scalar = t.dim() == 0
            t = t.reshape(1) if scalar else t.contiguous()
            if sync_grads:
                from torch.distributed.nn.functional import all_gather as ag

                parts = list(ag(t, group=group or dist.group.WORLD))
            else:
                parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
                dist.all_gather(parts, t, group=group)
            out = torch.stack(parts)
            return out.reshape(-1) if scalar else out

        return _map_leaves(data, gather)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        if not self._active():
            return decision
        t = torch.tensor(int(bool(decision)), device=self._root_device)
        dist.all_reduce(t, dist.ReduceOp.SUM)
        return bool(t.item() == dist.get_world_size()) if all else bool(t.item() > 0)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, trainer: Any, path: str, ckpt: dict, sync: bool) -> None:
        from ferrotrain.trainer import checkpointing

        if self.world_size <= 1:
            checkpointing.write(trainer, path, ckpt, sync)
            return
        # Every rank built the dict (hooks may use collectives); rank zero writes the file,
        # synchronously, between barriers, so all ranks see the same files afterwards.
        self.barrier("checkpoint")
        if self.should_write_checkpoint():
            checkpointing.write(trainer, path, ckpt, sync=True)
        self.barrier("checkpoint written")


def forward_redirection(wrapper: torch.nn.Module, module: Any, name: str) -> Callable[..., Any]:
    """A callable that runs `module.<name>` through `wrapper`'s forward, so the wrapper (DDP,
    FSDP) prepares the gradient reduction or gathers the parameters for it. The module's `forward`
    is swapped for the step only while the wrapper calls it, and put back before the step runs (a
    step may call `self(x)`)."""
    method = getattr(module, name)
    d = module.__dict__

    def inner(*args: Any, **kwargs: Any) -> Any:
        d.pop("forward", None)
        return method(*args, **kwargs)

    def call(*args: Any, **kwargs: Any) -> Any:
        d["forward"] = inner
        try:
            return wrapper(*args, **kwargs)
        finally:
            d.pop("forward", None)

    return call


def _map_leaves(data: Any, fn: Callable[[Any], Any]) -> Any:
    """`fn` on every tensor or number inside dicts, lists and tuples (`self.all_gather` input)."""
    if isinstance(data, (torch.Tensor, int, float)) and not isinstance(data, bool):
        return fn(data)
    if isinstance(data, dict):
        return type(data)((k, _map_leaves(v, fn)) for k, v in data.items())
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(_map_leaves(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_map_leaves(v, fn) for v in data)
    return data


def _is_comm_error(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        w in text for w in ("connection", "peer", "gloo", "nccl", "timed out", "timeout", "broken pipe")
    )


def destroy_process_group_if_any() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
