"""`DDPStrategy`: one process per device, gradients all-reduced by torch's
`DistributedDataParallel` over gloo (CPU) or NCCL (GPU).

What it owns: wrapping the LightningModule in DDP while fitting (`trainer.model` is then the
wrapper; the module's hooks are still called on the module itself), routing `training_step`
through the wrapper's forward so DDP sees the forward pass (Lightning's forward redirection), and
`no_sync` for accumulating batches. Ranks, the process group, samplers and collectives are
`parallel`'s; starting processes is the launcher's: `launcher` re-runs the script
(start_method="popen", the default), `spawn` runs each Trainer call in new processes
(start_method="spawn" or "forkserver"; strategy="ddp_spawn").
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, ContextManager, Optional

import torch

from ferrotrain.errors import MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies import environment as env_mod
from ferrotrain.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy, forward_redirection

_START_METHODS = ("popen", "spawn", "fork", "forkserver")
FORK_UNSAFE = (
    "is not supported by ferrotrain: forking copies a process whose native background threads (the batch "
    "prefetcher, the checkpoint writer) and torch's thread pools may hold locks that no thread of the child "
    "will release, so the child can hang. Use strategy='ddp_spawn' (also from a notebook, if the model class "
    "is importable), strategy='ddp' (it re-runs your script) or torchrun"
)


class DDPStrategy(ParallelStrategy):
    strategy_name = "ddp"

    def __init__(
        self,
        process_group_backend: Optional[str] = None,
        timeout: Optional[datetime.timedelta] = DEFAULT_TIMEOUT,
        start_method: str = "popen",
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        cluster_environment: Optional[env_mod.ClusterEnvironment] = None,
        **ddp_kwargs: Any,
    ) -> None:
        if start_method not in _START_METHODS:
            raise MisconfigurationException(
                f"`DDPStrategy(start_method={start_method!r})` must be one of {', '.join(map(repr, _START_METHODS))}"
            )
        if start_method == "fork":
            raise NotSupportedYetError(
                f"`DDPStrategy(start_method='fork')` ('ddp_fork', 'ddp_notebook') {FORK_UNSAFE}"
            )
        super().__init__(process_group_backend, timeout, cluster_environment)
        self._start_method = start_method
        self._ddp_kwargs = dict(ddp_kwargs, find_unused_parameters=find_unused_parameters, static_graph=static_graph)

    @property
    def start_method(self) -> str:
        return self._start_method

    def _make_launcher(self, num_processes: int, num_nodes: int) -> Any:
        if self._start_method == "popen":
            return super()._make_launcher(num_processes, num_nodes)
        from ferrotrain.strategies.spawn import SpawnLauncher

        return SpawnLauncher(num_processes, num_nodes, self._start_method)

    @property
    def find_unused_parameters(self) -> bool:
        return bool(self._ddp_kwargs["find_unused_parameters"])

    @property
    def static_graph(self) -> bool:
        return bool(self._ddp_kwargs["static_graph"])

    def wrap_model(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if not any(p.requires_grad for p in module.parameters()):
            self._model = None  # nothing to synchronise (DDP refuses such a module)
            return module
        device_ids = [self._root_device.index] if self._root_device.type == "cuda" else None
        self._model = DistributedDataParallel(module, device_ids=device_ids, **self._ddp_kwargs)
        return self._model

    def step_fn(self, module: Any, name: str) -> Callable[..., Any]:
        wrapper = self._model
        if wrapper is None or name != "training_step":
            return getattr(module, name)
        return forward_redirection(wrapper, module, name)

    def no_sync(self) -> Optional[Callable[[], ContextManager[Any]]]:
        wrapper = self._model
        return wrapper.no_sync if wrapper is not None else None

    def teardown(self) -> None:
        super().teardown()
        self._model = None
