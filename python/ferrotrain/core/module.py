"""`LightningModule`: the user's model with its steps, optimizers and hooks (Lightning 2.x API).

It owns the user-facing surface (`self.log`, `self.optimizers()`, `save_hyperparameters`, the hook
defaults). It does not run anything: the Trainer's loops call its hooks, and only the ones the
user overrode (see `ferrotrain.trainer.hooks`).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.apply_func import move_data_to_device
from ferrotrain.utilities.rank_zero import rank_zero_warn
from ferrotrain.core.hparams import HyperparametersMixin

if TYPE_CHECKING:
    from ferrotrain.trainer.trainer import Trainer


class _DataHooks:
    """Data hooks shared by `LightningModule` and `LightningDataModule`."""

    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...

    def train_dataloader(self) -> Any:
        raise MisconfigurationException("`train_dataloader` must be implemented to be used with the Trainer")

    def val_dataloader(self) -> Any:
        raise MisconfigurationException("`val_dataloader` must be implemented to be used with the Trainer")

    def test_dataloader(self) -> Any:
        raise MisconfigurationException("`test_dataloader` must be implemented to be used with the Trainer")

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException("`predict_dataloader` must be implemented to be used with the Trainer")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch


class LightningModule(HyperparametersMixin, _DataHooks, nn.Module):
    # Where `save_hyperparameters` values live in a checkpoint (Lightning's names).
    # Properties TorchScript must not compile (they read the Trainer), as Lightning lists them.
    __jit_unused_properties__: List[str] = [
        "example_input_array", "on_gpu", "current_epoch", "global_step", "global_rank", "local_rank", "logger",
        "loggers", "automatic_optimization", "trainer", "fabric", "strict_loading", "device_mesh", "device", "dtype",
        "hparams", "hparams_initial",
    ]
    _jit_is_scripting = False  # set while `to_torchscript` scripts a module

    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer = None
        self._current_fx_name: Optional[str] = None
        self._results: Any = None
        # id(metric) -> attribute name of the torchmetrics Metrics this module holds (found once).
        self._metric_attributes: Optional[Dict[int, str]] = None
        self._automatic_optimization = True
        self._device = torch.device("cpu")
        self._example_input_array: Any = None
        self.prepare_data_per_node = True
        self.allow_zero_length_dataloader_with_multiple_devices = False
        self._strict_loading: Optional[bool] = None
        # Lightning's Fabric and device-mesh hooks: never set by ferrotrain's Trainer.
        self.device_mesh: Any = None

    def __getstate__(self) -> Dict[str, Any]:
        # Pickled for `ddp_spawn`: the running loop's metric store (native) stays behind; each run
        # makes its own.
        state = dict(super().__getstate__())
        state["_results"] = None
        return state

    # ------------------------------------------------------------------ trainer-linked state
    @property
    def trainer(self) -> "Trainer":
        # TorchScript reads every property while scripting; a detached module must not raise then.
        if self._trainer is None and not LightningModule._jit_is_scripting:
            raise RuntimeError(f"{self.__class__.__qualname__} is not attached to a `Trainer`.")
        return self._trainer  # type: ignore[return-value]

    @trainer.setter
    def trainer(self, trainer: Optional["Trainer"]) -> None:
        # Nested LightningModules see the same Trainer (their `self.log`, `self.trainer`), as in Lightning.
        for child in self.children():
            if isinstance(child, LightningModule):
                child.trainer = trainer
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def on_gpu(self) -> bool:
        return self._device.type == "cuda"

    @property
    def logger(self) -> Any:
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> List[Any]:
        return self._trainer.loggers if self._trainer is not None else []

    @property
    def automatic_optimization(self) -> bool:
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    @property
    def strict_loading(self) -> bool:
        """Whether checkpoints load with `load_state_dict(..., strict=True)` (the default)."""
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self._strict_loading = value

    @property
    def fabric(self) -> None:
        """Lightning Fabric's handle; a ferrotrain module never runs under Fabric."""
        return None

    @property
    def example_input_array(self) -> Any:
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, value: Any) -> None:
        self._example_input_array = value

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "LightningModule":
        # Track the device as `.to()`/`.cuda()`/`.cpu()` move the parameters.
        result = super()._apply(fn, *args, **kwargs)
        for p in self.parameters():
            self._device = p.device
            break
        else:
            for b in self.buffers():
                self._device = b.device
                break
        return result

    # ------------------------------------------------------------------ logging
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Optional[Any] = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        metric_attribute: Optional[str] = None,
        rank_zero_only: bool = False,
    ) -> None:
        results = self._results
        if results is None:
            if self._trainer is None:
                # Lightning warns and ignores a log call on a module with no Trainer.
                rank_zero_warn(
                    "You are trying to `self.log()` but the `self.trainer` reference is not registered on the model "
                    "yet. This is most likely because the model hasn't been passed to the `Trainer`"
                )
                return
            fx = self._current_fx_name
            where = f"inside `{fx}`" if fx else "here"
            raise MisconfigurationException(
                f"You can't `self.log({name!r}, ...)` {where}: logging is only possible inside the steps "
                "and the hooks that the Trainer calls during fit/validate/test"
            )
        if add_dataloader_idx and isinstance(name, str) and "/dataloader_idx_" in name:
            # The suffix is the Trainer's to add: a user key with it would collide.
            raise MisconfigurationException(
                f"You called `self.log` with the key `{name}`"
                " but it should not contain information about `dataloader_idx` when `add_dataloader_idx=True`"
            )
        if metric_attribute is None and isinstance(value, nn.Module) and _is_torchmetric(value):
            self._check_metric_attribute(name, value)
        if logger and self._trainer is not None and self._trainer.logger is None:
            rank_zero_warn(
                f"You called `self.log({name!r}, ..., logger=True)` but have no logger configured. You can enable one "
                "by doing `Trainer(logger=ALogger(...))`"
            )
        results.log(
            self._current_fx_name, name, value, prog_bar, logger, on_step, on_epoch, reduce_fx,
            add_dataloader_idx, batch_size, sync_dist,
        )

    def _check_metric_attribute(self, name: str, metric: Any) -> None:
        """A logged Metric must be an attribute of the module (its state is saved and restored
        through it), as Lightning requires."""
        if self._metric_attributes is None:
            self._metric_attributes = {id(m): n for n, m in self.named_modules() if _is_torchmetric(m)}
            if not self._metric_attributes:
                raise MisconfigurationException(
                    "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
                    " You can fix this by setting an attribute for the metric in your `LightningModule`."
                )
        if id(metric) not in self._metric_attributes:
            raise MisconfigurationException(
                "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
                f" You can fix this by calling `self.log({name}, ..., metric_attribute=name)` where `name` is one"
                f" of {list(self._metric_attributes.values())}"
            )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Optional[Any] = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        rank_zero_only: bool = False,
    ) -> None:
        items: Dict[str, Any] = {}
        tm = sys.modules.get("torchmetrics")
        if tm is not None and isinstance(dictionary, tm.MetricCollection):
            # Its metrics under their prefixed names; with compute groups the shared state is
            # read in place, not copied (Lightning).
            kwargs: Dict[str, Any] = {"keep_base": False}
            if getattr(dictionary, "_enable_compute_groups", False):
                kwargs["copy_state"] = False
            items = dict(dictionary.items(**kwargs))
        elif isinstance(dictionary, Mapping):
            items = dict(dictionary.items())
        else:
            raise TypeError(f"`log_dict` expects a mapping of names to values, got {type(dictionary).__name__}")
        for k, v in items.items():
            self.log(
                k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                reduce_fx=reduce_fx, sync_dist=sync_dist, add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size, rank_zero_only=rank_zero_only,
            )

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print from global rank zero only."""
        if self._trainer is None or self._trainer.is_global_zero:
            progress_bar = self._trainer.progress_bar_callback if self._trainer is not None else None
            if progress_bar is not None and hasattr(progress_bar, "print"):
                progress_bar.print(*args, **kwargs)
            else:
                print(*args, **kwargs)

    # ------------------------------------------------------------------ optimization API
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        opts = self.trainer.strategy_optimizers(use_pl_optimizer)
        if isinstance(opts, list) and len(opts) == 1:
            return opts[0]
        return opts

    def lr_schedulers(self) -> Any:
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        scheds = [c.scheduler for c in configs]
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self._automatic_optimization:
            raise MisconfigurationException("`manual_backward` requires `self.automatic_optimization = False`")
        self.trainer.strategy.backward(loss, None, *args, **kwargs)

    def clip_gradients(
        self,
        optimizer: Any,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        from ferrotrain.trainer.optimization import clip_gradients

        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def toggle_optimizer(self, optimizer: Any) -> None:
        opt = getattr(optimizer, "optimizer", optimizer)
        own = {id(p) for g in opt.param_groups for p in g["params"]}
        self._toggled = {}
        for o in self.trainer.optimizers:
            for g in o.param_groups:
                for p in g["params"]:
                    if id(p) not in own and p.requires_grad:
                        self._toggled[id(p)] = p
                        p.requires_grad_(False)

    def untoggle_optimizer(self, optimizer: Any) -> None:
        for p in getattr(self, "_toggled", {}).values():
            p.requires_grad_(True)
        self._toggled = {}

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """`toggle_optimizer` for the block, `untoggle_optimizer` on leaving it."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    # ------------------------------------------------------------------ export
    def _example_inputs(self, given: Any, what: str) -> Any:
        if given is not None:
            return given
        if self.example_input_array is None:
            raise ValueError(
                f"{what} needs example inputs: pass them, or set `model.example_input_array`"
            )
        return self.example_input_array

    @torch.no_grad()
    def to_torchscript(self, file_path: Optional[Union[str, Path]] = None, method: Optional[str] = "script",
                       example_inputs: Any = None, **kwargs: Any) -> Any:
        """This module as TorchScript (`method="script"` or `"trace"`), in eval mode, saved to
        `file_path` when given; the module's own train/eval mode is left as it was."""
        if method not in ("script", "trace"):
            raise ValueError(f"`method` must be 'script' or 'trace', got {method!r}")
        mode = self.training
        if method == "trace":
            inputs = self._example_inputs(example_inputs, "`to_torchscript(method='trace')`")
            # The batch-transfer hooks a training batch goes through, as Lightning applies them.
            inputs = self.on_after_batch_transfer(
                self.transfer_batch_to_device(self.on_before_batch_transfer(inputs, 0), self.device, 0), 0
            )
        # TorchScript reads every attribute of the module; the Trainer-linked ones must not raise.
        LightningModule._jit_is_scripting = True
        try:
            if method == "script":
                scripted = torch.jit.script(self.eval(), **kwargs)
            else:
                scripted = torch.jit.trace(func=self.eval(), example_inputs=inputs, **kwargs)
        finally:
            LightningModule._jit_is_scripting = False
        self.train(mode)
        if file_path is not None:
            torch.jit.save(scripted, str(file_path))
        return scripted

    @torch.no_grad()
    def to_onnx(self, file_path: Union[str, Path, Any] = None, input_sample: Any = None, **kwargs: Any) -> Any:
        """Export this module with `torch.onnx.export` (needs the `onnx` package), in eval mode."""
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise ModuleNotFoundError(f"`{type(self).__name__}.to_onnx()` requires `onnx` to be installed.")
        mode = self.training
        inputs = move_data_to_device(self._example_inputs(input_sample, "`to_onnx`"), self.device)
        try:
            return torch.onnx.export(self.eval(), inputs, file_path, **kwargs)
        finally:
            self.train(mode)

    def all_gather(self, data: Any, group: Optional[Any] = None, sync_grads: bool = False) -> Any:
        if self._trainer is None:
            return data
        return self._trainer._all_gather(data, group, sync_grads)

    def freeze(self) -> "LightningModule":
        """No gradients and eval mode; returns the module, so `model = Model().freeze()` works (Lightning's)."""
        for p in self.parameters():
            p.requires_grad = False
        self.eval()
        return self

    def unfreeze(self) -> "LightningModule":
        """Gradients and train mode back on; returns the module, as `freeze` does (Lightning's)."""
        for p in self.parameters():
            p.requires_grad = True
        self.train()
        return self

    # ------------------------------------------------------------------ steps
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException("`training_step` must be implemented to be used with the Trainer")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        batch = kwargs.get("batch", args[0] if args else None)
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise MisconfigurationException(
            "`configure_optimizers` must be implemented to be used with the Trainer: return an "
            "optimizer, a list of optimizers, or a dict with 'optimizer' and 'lr_scheduler'"
        )

    def configure_callbacks(self) -> Any:
        return []

    def configure_model(self) -> None: ...

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Optional[int]: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_before_zero_grad(self, optimizer: Any) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Any) -> None: ...
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None: ...

    def on_validation_model_zero_grad(self) -> None:
        self.zero_grad(set_to_none=True)

    def on_validation_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad()

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: Optional[bool] = None,
        weights_only: Optional[bool] = None,
        **kwargs: Any,
    ) -> "LightningModule":
        """Rebuild the module from a checkpoint's hyperparameters and load its weights. A
        ferrotrain checkpoint never runs code when read; a torch-pickled (Lightning) one is read
        with `torch.load(weights_only=True)` unless you pass `weights_only=False` for a file you trust."""
        from ferrotrain.trainer.checkpointing import load_module_from_checkpoint

        return load_module_from_checkpoint(cls, checkpoint_path, map_location, strict, kwargs, weights_only)


def _is_torchmetric(obj: Any) -> bool:
    """A torchmetrics Metric, without importing torchmetrics when the user has not."""
    tm = sys.modules.get("torchmetrics")
    return tm is not None and isinstance(obj, tm.Metric)
