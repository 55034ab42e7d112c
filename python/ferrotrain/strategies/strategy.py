"""`Strategy`: how the model, its data and its collectives are laid out over processes.

The Trainer asks its strategy, once per run, for everything that depends on the layout: the
process group (`setup_environment`), the model it trains (`wrap_model`), the callable each step
calls (`step_fn`), the context that skips gradient all-reduce on accumulating batches
(`no_sync`), the loaders (`process_dataloader`), and the collectives (`barrier`, `broadcast`,
`reduce`, `all_gather`). The per-step path never asks which strategy runs: the answers are plain
callables bound at setup. It also decides how the model's and optimizers' states are read,
written and restored for checkpoints (`model_state_dict`, `optimizer_state`, `save_checkpoint`,
`load_checkpoint`, `load_model_state_dict`, `load_optimizer_states`) and how gradients are
clipped by norm (`clip_grad_norm`), since sharded strategies do these differently. This base
class is the one-process layout; `parallel` (with `ddp` and `fsdp`) overrides it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, ContextManager, Optional

import torch


class Strategy:
    strategy_name = "base"
    launcher: Any = None
    # Strategies that run the precision setting themselves (Lightning gives them their own
    # precision plugin): the general rules, such as "16-mixed" on the CPU running as
    # "bf16-mixed", do not apply; `check_precision` says what they accept.
    runs_own_precision = False

    def __init__(self) -> None:
        self._root_device = torch.device("cpu")
        self._trainer: Any = None
        self._model: Optional[torch.nn.Module] = None
        self.accelerator: Optional[str] = None
        self.parallel_devices: list = []
        self.num_nodes = 1

    # ---------------------------------------------------------------- set by the Trainer
    def _configure(self, accelerator: str, devices: list, num_nodes: int) -> None:
        """Called once by the Trainer's constructor with the resolved devices of this node."""
        self.accelerator = accelerator
        self.parallel_devices = devices
        self.num_nodes = num_nodes
        self._root_device = devices[0] if devices else torch.device("cpu")

    def _attach(self, trainer: Any) -> None:
        self._trainer = trainer

    # ---------------------------------------------------------------- layout
    @property
    def root_device(self) -> torch.device:
        return self._root_device

    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def num_processes(self) -> int:
        return max(1, len(self.parallel_devices))

    @property
    def lightning_module(self) -> Any:
        return self._trainer.lightning_module if self._trainer is not None else None

    @property
    def model(self) -> Any:
        """The module the steps run through: the wrapped one while fitting with DDP."""
        return self._model if self._model is not None else self.lightning_module

    @property
    def optimizers(self) -> list:
        return self._trainer.optimizers if self._trainer is not None else []

    # ---------------------------------------------------------------- run life cycle
    def launch(self) -> None:
        """Start the other processes of the run, if this strategy starts any (once)."""

    def setup_environment(self) -> None:
        """Join the process group (once per process)."""

    def wrap_model(self, module: torch.nn.Module) -> torch.nn.Module:
        """The model to fit (the module itself; DDP wraps it)."""
        self._model = None
        return module

    def unwrap_model(self) -> None:
        self._model = None

    def step_fn(self, module: Any, name: str) -> Callable[..., Any]:
        """What `training_step` / `validation_step` / ... calls: the module's bound method here."""
        return getattr(module, name)

    def setup_optimizers(self, trainer: Any, module: Any) -> None:
        """Called right after `configure_optimizers` in `fit` (DeepSpeed builds its engine here)."""

    def automatic_step(self, trainer: Any) -> Any:
        """The object that runs one automatically optimized training batch, or None for the
        Trainer's own (DeepSpeed's engine does backward and step itself)."""
        return None

    def no_sync(self) -> Optional[Callable[[], ContextManager[Any]]]:
        """A context factory that skips the gradient all-reduce, or None when there is none."""
        return None

    def process_dataloader(self, loader: Any, stage: str) -> Any:
        return loader

    def on_exception(self, exc: BaseException) -> BaseException:
        """Called when a run raises: returns the exception the user should see."""
        return exc

    def teardown(self) -> None:
        self._model = None

    def prepare_for_evaluation(self, module: torch.nn.Module) -> None:
        """Called before validate/test/predict runs outside `fit` (FSDP wraps the model then)."""

    def backward(self, closure_loss: torch.Tensor, optimizer: Optional[Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Lightning's `Strategy.backward`: the before-backward hooks, the backward itself (scaled
        under "16-mixed", through `LightningModule.backward` when overridden, `*args`/`**kwargs`
        passed on to it), then the after-backward hooks. `manual_backward` comes here; automatic
        optimization does too when a strategy overrides this method."""
        self._trainer._run_backward(closure_loss, *args, **kwargs)
        return closure_loss

    def check_precision(self, precision: str) -> None:
        """Raise if this strategy cannot run with the Trainer's `precision` (called at construction)."""

    def clip_grad_norm(self, parameters: list, max_norm: float) -> Any:
        """Clip the gradients of `parameters` to a total norm of `max_norm`; returns the norm."""
        from ferrotrain.utilities import clip

        return clip.clip_grad_norm_(parameters, max_norm)

    # ---------------------------------------------------------------- collectives
    def barrier(self, name: Optional[str] = None) -> None:
        pass

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce(self, tensor: Any, group: Any = None, reduce_op: Optional[str] = "mean") -> Any:
        return tensor

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return data

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        return decision

    @contextlib.contextmanager
    def block_backward_sync(self) -> Any:
        yield

    # ---------------------------------------------------------------- checkpoints
    def should_write_checkpoint(self) -> bool:
        """Whether this process writes checkpoint files (rank zero only when there are several)."""
        return self.is_global_zero

    def model_state_dict(self, module: torch.nn.Module) -> dict:
        """The weights that go into a checkpoint's "state_dict"."""
        return module.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict:
        """One optimizer's state, as it goes into a checkpoint's "optimizer_states"."""
        return optimizer.state_dict()

    def save_checkpoint(self, trainer: Any, path: str, ckpt: dict, sync: bool) -> None:
        """Write `ckpt` (the dict `checkpointing.dump` built) to `path`; asynchronous unless `sync`."""
        from ferrotrain.trainer import checkpointing

        checkpointing.write(trainer, path, ckpt, sync)

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        """Whether a resumed fit restores the module and callbacks only once the model is wrapped
        and its optimizers built (sharded strategies, whose shards load into the wrapped model)."""
        return False

    def checkpoint_exists(self, path: str) -> bool:
        """Whether `path` names a checkpoint this strategy can read (a file here)."""
        from ferrotrain.utilities.cloud_io import get_filesystem, is_remote

        if is_remote(path):
            return get_filesystem(path).isfile(path)
        return os.path.isfile(path)

    def load_checkpoint(self, path: str, map_location: Any, weights_only: Optional[bool] = None) -> dict:
        """The checkpoint dict at `path` (sharded strategies restore their shards here already);
        `weights_only=False` lets a trusted torch-pickled file unpickle anything."""
        from ferrotrain.trainer import checkpointing

        plugin = getattr(self, "checkpoint_io", None)
        if plugin is not None:  # a CheckpointIO passed in `Trainer(plugins=...)` reads it
            return plugin.load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return checkpointing.load(path, map_location=map_location, weights_only=weights_only)

    def load_model_state_dict(self, module: torch.nn.Module, ckpt: dict, path: str, strict: bool) -> None:
        from ferrotrain.trainer import checkpointing

        checkpointing.load_weights(module, ckpt["state_dict"], path, strict)

    def load_optimizer_states(self, optimizers: list, states: list, path: str) -> None:
        for opt, state in zip(optimizers, states):
            opt.load_state_dict(state)


_BACKWARD = Strategy.backward


def overrides_backward(strategy: Strategy) -> bool:
    """Whether `strategy.backward` is not the one above (a subclass's, or a wrapped one): then
    automatic optimization calls it too, instead of its inlined copy."""
    return getattr(type(strategy).backward, "__func__", type(strategy).backward) is not _BACKWARD
