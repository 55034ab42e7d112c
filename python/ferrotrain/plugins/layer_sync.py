"""Layer synchronisation plugins: `Trainer(sync_batchnorm=True)` applies `TorchSyncBatchNorm`
to the model before a data-parallel run."""

from __future__ import annotations

import torch


class LayerSync:
    """Turns a model's layers into their synchronised kind (`apply`) and back (`revert`)."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError


class _BatchNormXd(torch.nn.modules.batchnorm._BatchNorm):
    """A BatchNorm for inputs of any rank: SyncBatchNorm does not remember which it replaced."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dimensions, got {input.dim()}")


class TorchSyncBatchNorm(LayerSync):
    """BatchNorm layers as torch's `SyncBatchNorm` (statistics over every process's batch)."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        """Each `SyncBatchNorm` back to a plain BatchNorm (any input rank), with its state."""
        converted = model
        if isinstance(model, torch.nn.SyncBatchNorm):
            converted = _BatchNormXd(model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats)
            if model.affine:
                with torch.no_grad():
                    converted.weight = model.weight
                    converted.bias = model.bias
            converted.running_mean = model.running_mean
            converted.running_var = model.running_var
            converted.num_batches_tracked = model.num_batches_tracked
            converted.train(model.training)
        for name, child in model.named_children():
            converted.add_module(name, self.revert(child))
        return converted
