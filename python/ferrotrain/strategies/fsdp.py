"""`FSDPStrategy`: one process per device, parameters, gradients and optimizer states sharded
over the processes by torch's `FullyShardedDataParallel` (FSDP1), over gloo on the CPU or NCCL on
CUDA.

What it owns: checking the FSDP options (before anything runs), wrapping the LightningModule
after `configure_model` and before `configure_optimizers` (the optimizers see the sharded
parameters), activation checkpointing, routing every `*_step` through the FSDP root's forward (it
gathers the parameters there), `no_sync` for accumulating batches, gradient clipping by the
norm over all shards, and the checkpoint layout: "full" gathers the weights and optimizer states
into one ordinary ferrotrain checkpoint written by rank zero (optimizer states keyed by parameter
index, so a run without FSDP can resume from it), "sharded" writes a folder in which every rank
writes its own shards through `torch.distributed.checkpoint`, plus the rest of the checkpoint
(`meta.pt`) written by rank zero. Ranks, the process group, samplers and collectives are
`parallel`'s.

On the CPU, `cpu_offload` is refused: torch's FSDP moves offloaded parameters to a CUDA device for
each forward, so it needs one, and the parameters are on the CPU already.
"""

from __future__ import annotations

import datetime
import os
import warnings
from typing import Any, Callable, ContextManager, Dict, Optional

import torch

from ferrotrain.errors import CheckpointError, ConfigTypeError, MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies import environment as env_mod
from ferrotrain.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy, forward_redirection
from ferrotrain.utilities.rank_zero import rank_zero_warn

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
STATE_DICT_TYPES = ("full", "sharded")
# Precisions that need nothing from FSDP: the parameters and their gradients stay in one dtype.
# "16-mixed" would need torch's ShardedGradScaler (a per-rank inf check skips steps unevenly).
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "bf16-true", "16-true")
# Set by this strategy itself; passing them through `**kwargs` too would be ambiguous.
_OWN_KWARGS = ("module", "sharding_strategy", "cpu_offload", "auto_wrap_policy", "device_id")
# Names torch puts into the parameter names of wrapped modules; checkpoints use the plain names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class FSDPStrategy(ParallelStrategy):
    strategy_name = "fsdp"
    runs_own_precision = True

    def __init__(
        self,
        process_group_backend: Optional[str] = None,
        timeout: Optional[datetime.timedelta] = DEFAULT_TIMEOUT,
        cpu_offload: Any = None,
        auto_wrap_policy: Any = None,
        activation_checkpointing_policy: Any = None,
        sharding_strategy: Any = "FULL_SHARD",
        state_dict_type: str = "full",
        device_mesh: Any = None,
        cluster_environment: Optional[env_mod.ClusterEnvironment] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(process_group_backend, timeout, cluster_environment)
        self.sharding_strategy = _check_sharding_strategy(sharding_strategy)
        if state_dict_type not in STATE_DICT_TYPES:
            raise MisconfigurationException(
                f"`FSDPStrategy(state_dict_type={state_dict_type!r})` must be one of "
                f"{', '.join(map(repr, STATE_DICT_TYPES))}"
            )
        self._state_dict_type = state_dict_type
        self.cpu_offload = _check_cpu_offload(cpu_offload)
        self._fsdp_kwargs = _check_kwargs(kwargs)
        # Lightning's default: `configure_optimizers` may use `self.parameters()` and several groups.
        self._fsdp_kwargs.setdefault("use_orig_params", True)
        policy = _check_policy("auto_wrap_policy", auto_wrap_policy)
        if policy is not None:
            self._fsdp_kwargs["auto_wrap_policy"] = policy
        self._checkpointing_policy = _check_policy("activation_checkpointing_policy", activation_checkpointing_policy)
        self._device_mesh = _check_device_mesh(device_mesh, self.sharding_strategy)

    @property
    def state_dict_type(self) -> str:
        return self._state_dict_type

    @property
    def kwargs(self) -> Dict[str, Any]:
        """The keyword arguments given to `FullyShardedDataParallel` (besides the named options)."""
        return dict(self._fsdp_kwargs)

    # ---------------------------------------------------------------- layout
    def _configure(self, accelerator: str, devices: list, num_nodes: int) -> None:
        if accelerator not in ("cpu", "cuda"):
            raise NotSupportedYetError(
                f"`FSDPStrategy` runs on accelerator='cpu' or 'cuda'; torch's FSDP does not support {accelerator!r}"
            )
        if self.cpu_offload.offload_params and accelerator != "cuda":
            raise MisconfigurationException(
                "`FSDPStrategy(cpu_offload=True)` offloads parameters from CUDA devices to the CPU; with "
                f"accelerator={accelerator!r} they are on the CPU already (torch's FSDP needs CUDA for it). "
                "Use cpu_offload=False (or None) on the CPU"
            )
        super()._configure(accelerator, devices, num_nodes)

    def check_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise NotSupportedYetError(
                f"`Trainer(precision={precision!r})` with `FSDPStrategy` is not supported yet by ferrotrain "
                f"(it needs torch's ShardedGradScaler); supported: {', '.join(map(repr, PRECISIONS))}"
            )

    def setup_environment(self) -> None:
        super().setup_environment()
        if _is_device_mesh(self._device_mesh):
            return
        from torch.distributed.device_mesh import init_device_mesh

        if self.sharding_strategy.name == "HYBRID_SHARD":
            # Shard inside a node, replicate across nodes. torch's default guesses the node size
            # from the CUDA device count, which is wrong on the CPU: say it.
            mesh = self._device_mesh
            shape = mesh if mesh is not None else (self.num_nodes, self.world_size // self.num_nodes)
            self._device_mesh = init_device_mesh(self._root_device.type, tuple(shape), mesh_dim_names=("replicate", "shard"))
        else:
            # A one-dimensional mesh over every rank: sharded state dicts are then DTensors (torch
            # deprecates the ShardedTensors FSDP makes without one).
            self._device_mesh = init_device_mesh(self._root_device.type, (self.world_size,))

    # ---------------------------------------------------------------- the model
    def wrap_model(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if self._model is not None and self._model.module is module:
            return self._model  # wrapped by an earlier run of this Trainer
        kwargs = dict(self._fsdp_kwargs)
        if any(isinstance(m, FSDP) for m in module.modules()):
            if "auto_wrap_policy" in kwargs:
                rank_zero_warn("A FSDP `auto_wrap_policy` is set, but the model is already wrapped. The policy is ignored.")
                kwargs.pop("auto_wrap_policy")
        if _is_device_mesh(self._device_mesh):
            kwargs["device_mesh"] = self._device_mesh
        cuda = self._root_device.type == "cuda"
        if not cuda and not kwargs.get("sync_module_states"):
            # DDP starts every rank from rank zero's weights; FSDP's own `sync_module_states` needs CUDA.
            _broadcast_module_states(module)
        with warnings.catch_warnings():
            # On the CPU, torch warns on every wrap that sharding runs on the CPU: it is meant to.
            warnings.filterwarnings("ignore", message=".*will thus have FSDP's sharding initialization run on CPU.*")
            wrapped = FSDP(
                module, sharding_strategy=self.sharding_strategy, cpu_offload=self.cpu_offload,
                # On the CPU torch wants `device_id=torch.device("cpu")`: None means "look for an accelerator".
                device_id=self._root_device, **kwargs,
            )
        if self._checkpointing_policy is not None:
            _apply_activation_checkpointing(wrapped, self._checkpointing_policy)
        self._model = wrapped
        return wrapped

    def prepare_for_evaluation(self, module: torch.nn.Module) -> None:
        # As Lightning: evaluation runs on the sharded model too (and reads sharded checkpoints).
        self.wrap_model(module)

    def step_fn(self, module: Any, name: str) -> Callable[..., Any]:
        wrapper = self._model
        if wrapper is None:
            return getattr(module, name)
        # Every step goes through the root's forward, which gathers the root's parameters.
        return forward_redirection(wrapper, module, name)

    def no_sync(self) -> Optional[Callable[[], ContextManager[Any]]]:
        wrapper = self._model
        return wrapper.no_sync if wrapper is not None else None

    def clip_grad_norm(self, parameters: list, max_norm: float) -> Any:
        if self._model is None:
            return super().clip_grad_norm(parameters, max_norm)
        # The total norm over every shard on every rank (a collective), not this rank's shard's.
        return self._model.clip_grad_norm_(max_norm)

    def teardown(self) -> None:
        pass  # the module stays sharded after fit (as in Lightning): later runs go through the wrapper

    # ---------------------------------------------------------------- checkpoints
    def _options(self, full: bool, **extra: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=full, cpu_offload=full, **extra)

    def model_state_dict(self, module: torch.nn.Module) -> dict:
        if self._model is None:
            return module.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        # "full": gathered on rank zero only (the other ranks get an empty dict); "sharded": each rank's shards.
        return get_model_state_dict(self._model, options=self._options(self._state_dict_type == "full"))

    def optimizer_state(self, optimizer: Any) -> dict:
        optimizer = getattr(optimizer, "optimizer", optimizer)
        if self._model is None:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = self._state_dict_type == "full"
        state = get_optimizer_state_dict(self._model, optimizer, options=self._options(full))
        # torch keys the full state by parameter name; a plain optimizer's state is keyed by index.
        return _names_to_indices(state) if full and state else state

    def save_checkpoint(self, trainer: Any, path: str, ckpt: dict, sync: bool) -> None:
        import shutil

        if self._state_dict_type == "full" or self._model is None:
            if os.path.isdir(path) and self.is_global_zero:
                shutil.rmtree(path)  # a sharded checkpoint of the same name, from an earlier run
            super().save_checkpoint(trainer, path, ckpt, sync)
            return
        import torch.distributed.checkpoint as dcp

        from ferrotrain import checkpoint as io
        from ferrotrain.trainer import checkpointing

        self.barrier("sharded checkpoint")
        if self.is_global_zero:
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
            elif os.path.isdir(path):
                shutil.rmtree(path)  # overwritten (e.g. last.ckpt): no stale shards of a bigger world
            os.makedirs(path)
        self.barrier("sharded checkpoint folder")
        shards = {"model": ckpt.pop("state_dict")}
        states = ckpt.pop("optimizer_states", None)
        if states is not None:
            # The tensors go to the shards; the parameter groups (plain values, the same on every
            # rank) stay in the metadata, which also names the shards' entry for each optimizer.
            shards.update({f"optimizer_{i}": {"state": s["state"]} for i, s in enumerate(states)})
            ckpt["optimizer_states"] = [
                {"sharded_key": f"optimizer_{i}", "param_groups": s["param_groups"]} for i, s in enumerate(states)
            ]
        dcp.save(shards, checkpoint_id=path)
        if self.is_global_zero:
            # Written last: a folder with this file is a complete checkpoint.
            io.save(os.path.join(path, checkpointing.SHARDED_METADATA), ckpt)
        self.barrier("sharded checkpoint written")
        if self.is_global_zero:
            checkpointing.wait_for_writes(trainer)  # deletes what this checkpoint replaced

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True

    def checkpoint_exists(self, path: str) -> bool:
        return os.path.isfile(path) or _is_sharded_checkpoint(path)

    def load_checkpoint(self, path: str, map_location: Any, weights_only: Optional[bool] = None) -> dict:
        from ferrotrain.trainer import checkpointing

        if not os.path.isdir(path):
            # full: every rank reads the file
            return checkpointing.load(path, map_location=map_location, weights_only=weights_only)
        if self._model is None:
            raise CheckpointError(f"{path!r} is a sharded checkpoint; it can be loaded only into the sharded model")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        ckpt = checkpointing.load(os.path.join(path, checkpointing.SHARDED_METADATA), map_location=map_location)
        # Each rank reads its own shards into the layout of its sharded model.
        shards = {"model": get_model_state_dict(self._model, options=self._options(False))}
        dcp.load(shards, checkpoint_id=path)
        ckpt["state_dict"] = shards["model"]
        return ckpt

    def load_model_state_dict(self, module: torch.nn.Module, ckpt: dict, path: str, strict: bool) -> None:
        if self._model is None:
            return super().load_model_state_dict(module, ckpt, path, strict)
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        full = not os.path.isdir(path)
        try:
            keys = set_model_state_dict(self._model, ckpt["state_dict"], options=self._options(full, strict=strict))
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{e}\n\t(checkpoint: '{path}')") from None
        if not strict and (keys.missing_keys or keys.unexpected_keys):
            warnings.warn(
                f"Keys that did not match between the model and the checkpoint: missing {keys.missing_keys}, "
                f"unexpected {keys.unexpected_keys}", UserWarning, stacklevel=3,
            )

    def load_optimizer_states(self, optimizers: list, states: list, path: str) -> None:
        if self._model is None:
            return super().load_optimizer_states(optimizers, states, path)
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        optimizers = [getattr(o, "optimizer", o) for o in optimizers]
        if os.path.isdir(path):
            import torch.distributed.checkpoint as dcp

            shards = {
                s["sharded_key"]: {"state": get_optimizer_state_dict(self._model, opt, options=self._options(False))["state"]}
                for opt, s in zip(optimizers, states)
            }
            dcp.load(shards, checkpoint_id=path)
            for opt, s in zip(optimizers, states):
                state = {"state": shards[s["sharded_key"]]["state"], "param_groups": s["param_groups"]}
                set_optimizer_state_dict(self._model, opt, state, options=self._options(False))
            return
        for opt, state in zip(optimizers, states):
            state = _indices_to_names(state, opt, self._model)
            set_optimizer_state_dict(self._model, opt, state, options=self._options(True))


# ---------------------------------------------------------------------- option checks
def _check_sharding_strategy(value: Any) -> Any:
    from torch.distributed.fsdp import ShardingStrategy

    if isinstance(value, ShardingStrategy):
        if value.name not in SHARDING_STRATEGIES:
            raise NotSupportedYetError(
                f"`FSDPStrategy(sharding_strategy={value})` is not supported yet by ferrotrain; use one of "
                f"{', '.join(map(repr, SHARDING_STRATEGIES))}"
            )
        return value
    if not isinstance(value, str) or value.upper() not in SHARDING_STRATEGIES:
        raise MisconfigurationException(
            f"`FSDPStrategy(sharding_strategy={value!r})` must be one of {', '.join(map(repr, SHARDING_STRATEGIES))} "
            "or a `torch.distributed.fsdp.ShardingStrategy`"
        )
    return ShardingStrategy[value.upper()]


def _check_cpu_offload(value: Any) -> Any:
    from torch.distributed.fsdp import CPUOffload

    if isinstance(value, CPUOffload):
        return value
    if value is None or isinstance(value, bool):
        return CPUOffload(offload_params=bool(value))
    raise ConfigTypeError(
        f"`FSDPStrategy(cpu_offload={value!r})` must be None, True, False or a `torch.distributed.fsdp.CPUOffload`"
    )


def _check_policy(name: str, value: Any) -> Any:
    """A set (list, tuple) of module classes becomes a `ModuleWrapPolicy`; a callable is a policy."""
    if value is None:
        return None
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, _Policy

    if isinstance(value, (set, frozenset, list, tuple)):
        classes = list(value)
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, torch.nn.Module))]
        if not classes or bad:
            raise MisconfigurationException(
                f"`FSDPStrategy({name}={value!r})` must be a set of `torch.nn.Module` subclasses (e.g. "
                f"{{torch.nn.TransformerEncoderLayer}}) or a callable policy"
                + (f"; not module classes: {bad!r}" if bad else "; the set is empty")
            )
        return ModuleWrapPolicy(set(classes))
    if isinstance(value, _Policy) or callable(value):
        return value
    raise MisconfigurationException(
        f"`FSDPStrategy({name}={value!r})` must be None, a set of `torch.nn.Module` subclasses or a callable policy"
    )


def _check_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    import inspect

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    allowed = [p for p in inspect.signature(FSDP.__init__).parameters if p not in ("self",) + _OWN_KWARGS]
    allowed = [p for p in allowed if p != "device_mesh"]
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise MisconfigurationException(
            f"`FSDPStrategy` got unknown keyword argument(s) {', '.join(map(repr, unknown))}; besides its named "
            f"options it passes these to torch's FullyShardedDataParallel: {', '.join(allowed)}"
        )
    if kwargs.get("process_group") is not None:
        raise NotSupportedYetError("`FSDPStrategy(process_group=...)` is not supported yet by ferrotrain; use device_mesh")
    return dict(kwargs)


def _is_device_mesh(value: Any) -> bool:
    return type(value).__name__ == "DeviceMesh"


def _check_device_mesh(value: Any, sharding: Any) -> Any:
    if value is None:
        return None
    ok = _is_device_mesh(value) or (
        isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
    )
    if not ok:
        raise MisconfigurationException(
            f"`FSDPStrategy(device_mesh={value!r})` must be a tuple (replicas, shards) of two positive ints or a DeviceMesh"
        )
    if sharding.name != "HYBRID_SHARD":
        raise MisconfigurationException(
            f"`FSDPStrategy(device_mesh={value!r})` is used only with sharding_strategy='HYBRID_SHARD' "
            f"(got {sharding.name!r})"
        )
    return value


# ---------------------------------------------------------------------- helpers
def _is_sharded_checkpoint(path: str) -> bool:
    from ferrotrain.trainer.checkpointing import SHARDED_METADATA

    return os.path.isdir(path) and os.path.isfile(os.path.join(path, SHARDED_METADATA))


def _broadcast_module_states(module: torch.nn.Module) -> None:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def _apply_activation_checkpointing(model: torch.nn.Module, policy: Any) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    if any(isinstance(m, CheckpointWrapper) for m in model.modules()):
        rank_zero_warn("Activation checkpointing is set, but the model already has checkpointed layers; it is ignored.")
        return
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, auto_wrap_policy=policy)


def _clean_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _names_to_indices(state: dict) -> dict:
    """An optimizer state keyed by parameter name -> keyed by index, as `Optimizer.state_dict()`."""
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    groups = [dict(g, params=[index[n] for n in g["params"]]) for g in state["param_groups"]]
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def _indices_to_names(state: dict, optimizer: Any, model: torch.nn.Module) -> dict:
    """The reverse, with the names of this optimizer's parameters (a checkpoint from any strategy)."""
    groups = state.get("param_groups") or []
    if not groups or not groups[0]["params"] or isinstance(groups[0]["params"][0], str):
        return state  # keyed by name already
    names = {id(p): _clean_name(n) for n, p in model.named_parameters()}
    mine = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    order = [i for g in groups for i in g["params"]]
    if len(order) != len(mine):
        raise CheckpointError(
            f"The checkpoint's optimizer state has {len(order)} parameters, the optimizer has {len(mine)}"
        )
    name_of = dict(zip(order, mine))
    return {
        "state": {name_of[i]: v for i, v in state["state"].items()},
        "param_groups": [dict(g, params=[name_of[i] for i in g["params"]]) for g in groups],
    }
