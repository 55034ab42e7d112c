"""`BaseFinetuning` and `BackboneFinetuning`: freezing part of a model before training and
unfreezing it later into a new optimizer param group, with the param groups kept in checkpoints.

`BaseFinetuning` owns the freeze/unfreeze helpers and the bookkeeping of the param groups a
`finetune_function` adds (saved by parameter name, so a resumed run rebuilds them);
`BackboneFinetuning` is Lightning's ready-made schedule for a module with a `backbone`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Generator, Iterable, List, Optional, Union

import torch
from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.optimizer import Optimizer

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException
from ferrotrain.utilities.rank_zero import rank_zero_warn

log = logging.getLogger(__name__)

Modules = Union[Module, Iterable[Union[Module, Iterable]]]


def multiplicative(epoch: int) -> float:
    return 2.0


class BaseFinetuning(Callback):
    """Subclass and implement `freeze_before_training(pl_module)` and
    `finetune_function(pl_module, epoch, optimizer)`; the latter runs at each epoch's start."""

    def __init__(self) -> None:
        self._internal_optimizer_metadata: Dict[int, List[Dict[str, Any]]] = {}
        self._restarting = False
        self._trainer: Any = None

    def state_dict(self) -> Dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._restarting = True
        if "internal_optimizer_metadata" in state_dict:
            self._internal_optimizer_metadata = state_dict["internal_optimizer_metadata"]
        else:  # checkpoints from before the key existed hold the metadata itself
            self._internal_optimizer_metadata = state_dict  # type: ignore[assignment]
        # A resumed fit rebuilds the param groups in `on_fit_start`, before the optimizer states
        # load; a restore onto optimizers that exist already (the tuners') needs them now.
        if self._trainer is not None and self._trainer.optimizers:
            self._restore_param_groups(self._trainer, self._trainer.lightning_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._restarting:
            self._restore_param_groups(trainer, pl_module)

    def _restore_param_groups(self, trainer: Any, pl_module: Any) -> None:
        if self._internal_optimizer_metadata:
            named_parameters = dict(pl_module.named_parameters())
            for opt_idx, optimizer in enumerate(trainer.optimizers):
                if opt_idx in self._internal_optimizer_metadata:
                    optimizer.param_groups = self._apply_mapping_to_param_groups(
                        self._internal_optimizer_metadata[opt_idx], named_parameters
                    )
        self._restarting = False

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def flatten_modules(modules: Modules) -> List[Module]:
        """The leaf modules (and modules with their own parameters) of `modules`."""
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):
            flat: List[Module] = []
            for m in modules:
                flat.extend(BaseFinetuning.flatten_modules(m))
            found: Iterable[Module] = flat
        else:
            found = modules.modules()
        return [m for m in found if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True) -> Generator:
        """The parameters of `modules` whose `requires_grad` equals `requires_grad` (BatchNorm
        layers left out unless `train_bn`)."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and not train_bn:
                continue
            for param in mod.parameters(recurse=False):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        # A frozen BatchNorm also stops updating its running statistics.
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(mod)
            else:
                BaseFinetuning.freeze_module(mod)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable) -> List:
        """`params` less those already in one of `optimizer`'s groups (with a warning)."""
        out_params, removed = [], []
        for param in params:
            # Compared by value, as Lightning does (`torch.equal`).
            if not any(torch.equal(p, param) for group in optimizer.param_groups for p in group["params"]):
                out_params.append(param)
            else:
                removed.append(param)
        if removed:
            rank_zero_warn(
                "The provided params to be frozen already exist within another group of this optimizer."
                " Those parameters will be skipped.\n"
                "HINT: Did you init your optimizer in `configure_optimizer` as such:\n"
                f" {type(optimizer)}(filter(lambda p: p.requires_grad, self.parameters()), ...) ",
            )
        return out_params

    @staticmethod
    def unfreeze_and_add_param_group(modules: Modules, optimizer: Optimizer, lr: Optional[float] = None,
                                     initial_denom_lr: float = 10.0, train_bn: bool = True) -> None:
        """Unfreeze `modules` and add their parameters to `optimizer` as a new group, at `lr` or
        else the first group's lr divided by `initial_denom_lr`."""
        BaseFinetuning.make_trainable(modules)
        params_lr = optimizer.param_groups[0]["lr"] if lr is None else float(lr)
        denom_lr = initial_denom_lr if lr is None else 1.0
        params = BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        params = BaseFinetuning.filter_on_optimizer(optimizer, params)
        if params:
            optimizer.add_param_group({"params": params, "lr": params_lr / denom_lr})

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        self.freeze_before_training(pl_module)
        from ferrotrain.strategies.deepspeed import DeepSpeedStrategy

        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise NotImplementedError(
                "The Finetuning callback does not support running with the DeepSpeed strategy."
                " Choose a different strategy or disable the callback."
            )

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = None

    @staticmethod
    def _apply_mapping_to_param_groups(param_groups: List[Dict[str, Any]], mapping: Dict) -> List[Dict[str, Any]]:
        output = []
        for g in param_groups:
            group_state = {k: v for k, v in g.items() if k != "params"}
            group_state["params"] = [mapping[p] for p in g["params"]]
            output.append(group_state)
        return output

    def _store(self, pl_module: Any, opt_idx: int, num_param_groups: int,
               current_param_groups: List[Dict[str, Any]]) -> None:
        mapping = {p: n for n, p in pl_module.named_parameters()}
        if opt_idx not in self._internal_optimizer_metadata:
            self._internal_optimizer_metadata[opt_idx] = self._apply_mapping_to_param_groups(current_param_groups, mapping)
        elif num_param_groups != len(current_param_groups):
            # Only the groups added this epoch are new.
            self._internal_optimizer_metadata[opt_idx].extend(
                self._apply_mapping_to_param_groups(current_param_groups[num_param_groups:], mapping)
            )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            num_param_groups = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            self._store(pl_module, opt_idx, num_param_groups, optimizer.param_groups)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        """Override to unfreeze modules (and add param groups) at chosen epochs."""
        raise NotImplementedError

    def freeze_before_training(self, pl_module: Any) -> None:
        """Override to freeze modules before training starts."""
        raise NotImplementedError


class BackboneFinetuning(BaseFinetuning):
    """Freeze `pl_module.backbone` until `unfreeze_backbone_at_epoch`, then train it in its own
    param group whose lr grows by `lambda_func` each epoch (capped at the main lr when
    `should_align`)."""

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable = multiplicative,
                 backbone_initial_ratio_lr: float = 10e-2, backbone_initial_lr: Optional[float] = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        super().__init__()
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: Optional[float] = None

    def state_dict(self) -> Dict[str, Any]:
        return {
            "internal_optimizer_metadata": self._internal_optimizer_metadata,
            "previous_backbone_lr": self.previous_backbone_lr,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if hasattr(pl_module, "backbone") and isinstance(pl_module.backbone, Module):
            return super().on_fit_start(trainer, pl_module)
        raise MisconfigurationException("The LightningModule should have a nn.Module `backbone` attribute")

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        if epoch == self.unfreeze_backbone_at_epoch:
            current_lr = optimizer.param_groups[0]["lr"]
            initial_backbone_lr = (self.backbone_initial_lr if self.backbone_initial_lr is not None
                                   else current_lr * self.backbone_initial_ratio_lr)
            self.previous_backbone_lr = initial_backbone_lr
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, initial_backbone_lr,
                                              train_bn=self.train_bn, initial_denom_lr=self.initial_denom_lr)
            if self.verbose:
                log.info(f"Current lr: {round(current_lr, self.rounding)}, "
                         f"Backbone lr: {round(initial_backbone_lr, self.rounding)}")
        elif epoch > self.unfreeze_backbone_at_epoch:
            current_lr = optimizer.param_groups[0]["lr"]
            next_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            next_lr = current_lr if (self.should_align and next_lr > current_lr) else next_lr
            optimizer.param_groups[-1]["lr"] = next_lr
            self.previous_backbone_lr = next_lr
            if self.verbose:
                log.info(f"Current lr: {round(current_lr, self.rounding)}, Backbone lr: {round(next_lr, self.rounding)}")
