"""`WeightAveraging` and `EMAWeightAveraging`: keep a `torch.optim.swa_utils.AveragedModel` of
the module during `fit`, validate with the averaged weights, save them as the checkpoint's
`state_dict` (the current weights under `current_model_state`), and load them into the module
when training ends.

`should_update` decides when the average takes the current weights in; the EMA subclass
updates every N optimizer steps from a given step and/or every epoch from a given epoch. The
per-batch hook does only that check and, when due, the update.
"""

from __future__ import annotations

import itertools
from copy import deepcopy
from typing import Any, Dict, Optional, Union

import torch

from ferrotrain.callbacks.callback import Callback, is_overridden
from ferrotrain.utilities.rank_zero import rank_zero_info, rank_zero_warn


class WeightAveraging(Callback):
    def __init__(self, device: Optional[Union[torch.device, str, int]] = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        self._device: Optional[Union[torch.device, int]] = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs  # passed on to AveragedModel (avg_fn, multi_avg_fn)
        self._average_model: Any = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        """Whether to update after optimizer step `step_idx` / at the end of epoch `epoch_idx`
        (one of the two is given). The default: after every optimizer step."""
        return step_idx is not None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            from torch.optim.swa_utils import AveragedModel

            from ferrotrain.core.module import LightningModule

            device = self._device or pl_module.device
            if is_overridden(pl_module, LightningModule, "configure_model"):
                rank_zero_warn(
                    "You're using the WeightAveraging callback with a model that overrides the configure_model "
                    "callback. WeightAveraging doesn't support sharding model layers, so you may run out of memory."
                )
                pl_module.configure_model()
            # AveragedModel deep-copies the module: the Trainer link must not be copied along.
            trainer_ref = pl_module._trainer
            pl_module._trainer = None
            try:
                self._average_model = AveragedModel(model=pl_module, device=device, use_buffers=self._use_buffers,
                                                    **self._kwargs)
            finally:
                pl_module._trainer = trainer_ref

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step_idx = trainer.global_step - 1
        if (trainer.global_step > self._latest_update_step) and self.should_update(step_idx=step_idx):
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if (trainer.current_epoch > self._latest_update_epoch) and self.should_update(epoch_idx=trainer.current_epoch):
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    # The weights are overwritten in place below: a checkpoint still copying them finishes first.
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        from ferrotrain.trainer import checkpointing

        checkpointing.finish_snapshot(trainer)
        self._copy_average_to_current(pl_module)

    # Validation sees the averaged weights: swapped in and back out around it.
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            from ferrotrain.trainer import checkpointing

            checkpointing.finish_snapshot(trainer)
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            from ferrotrain.trainer import checkpointing

            checkpointing.finish_snapshot(trainer)
            self._swap_models(pl_module)

    def state_dict(self) -> Dict[str, Any]:
        return {"latest_update_step": self._latest_update_step}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Dict[str, Any]) -> None:
        if self._average_model is None:
            rank_zero_info(
                "You're using the WeightAveraging callback, but saving a checkpoint outside the 'fit' stage. The state "
                "of the WeightAveraging callback won't be saved in the checkpoint. If training has finished, the "
                "average model parameters will be saved to the state_dict in the checkpoint."
            )
        else:
            average_model_state = self._average_model.state_dict()
            checkpoint["current_model_state"] = checkpoint["state_dict"]
            checkpoint["state_dict"] = {
                name[7:]: value for name, value in average_model_state.items() if name.startswith("module.")
            }
            checkpoint["averaging_state"] = {
                name: value for name, value in average_model_state.items() if not name.startswith("module.")
            }

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Dict[str, Any]) -> None:
        if self._average_model is None:
            rank_zero_warn(
                "You're using the WeightAveraging callback, but loading a checkpoint outside the 'fit' stage. The "
                "WeightAveraging state cannot be restored. If you're using the checkpoint for prediction or testing, "
                "you can ignore this warning. To disable the warning, remove the WeightAveraging callback."
            )
        elif ("current_model_state" in checkpoint) and ("averaging_state" in checkpoint):
            rank_zero_info("Found current_model_state in the checkpoint. This will be used to initialize the model.")
            average_model_state = {"module." + name: value for name, value in checkpoint["state_dict"].items()}
            average_model_state |= checkpoint["averaging_state"]
            self._average_model.load_state_dict(average_model_state)
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            rank_zero_warn(
                "The checkpoint was not created with WeightAveraging. Both the current and the average model will be "
                "initialized with state_dict."
            )
            self._average_model.module.load_state_dict(deepcopy(checkpoint["state_dict"]), strict=False)

    def _swap_models(self, pl_module: Any) -> None:
        average_params = itertools.chain(self._average_model.module.parameters(), self._average_model.module.buffers())
        current_params = itertools.chain(pl_module.parameters(), pl_module.buffers())
        for average_param, current_param in zip(average_params, current_params):
            tmp = average_param.data.clone()
            average_param.data.copy_(current_param.data)
            current_param.data.copy_(tmp)

    def _copy_average_to_current(self, pl_module: Any) -> None:
        average_params = itertools.chain(self._average_model.module.parameters(), self._average_model.module.buffers())
        current_params = itertools.chain(pl_module.parameters(), pl_module.buffers())
        for average_param, current_param in zip(average_params, current_params):
            current_param.data.copy_(average_param.data)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights (`decay`), updated every
    `update_every_n_steps` optimizer steps from `update_starting_at_step`, and/or at each epoch's
    end from `update_starting_at_epoch`."""

    def __init__(self, device: Optional[Union[torch.device, str, int]] = None, use_buffers: bool = True,
                 decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: Optional[int] = None,
                 update_starting_at_epoch: Optional[int] = None, **kwargs: Any) -> None:
        from torch.optim.swa_utils import get_ema_avg_fn

        super().__init__(device=device, use_buffers=use_buffers, **kwargs, avg_fn=get_ema_avg_fn(decay=decay))
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        if step_idx is not None:
            meets_step_requirement = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            meets_step_frequency = self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0
            if meets_step_requirement and meets_step_frequency:
                return True
        if epoch_idx is not None:
            meets_epoch_requirement = (
                self.update_starting_at_epoch is not None and epoch_idx >= self.update_starting_at_epoch
            )
            if meets_epoch_requirement:
                return True
        return False
