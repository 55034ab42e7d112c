"""Lightning's plugins at Lightning's paths (`ferrotrain.plugins`, `.precision`, `.io`).

A plugin passed as `Trainer(plugins=[...])` takes effect: a precision plugin sets the run's
precision, a `CheckpointIO` writes and reads the trainer's checkpoints, a `ClusterEnvironment`
(`.environments`) gives the multi-process strategy its ranks. Kinds this build cannot
run (XLA, bitsandbytes, Transformer Engine) exist so Lightning code imports, and say so when built.
"""

from __future__ import annotations

from ferrotrain.plugins.environments import ClusterEnvironment
from ferrotrain.plugins.io import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO, XLACheckpointIO
from ferrotrain.plugins.layer_sync import LayerSync, TorchSyncBatchNorm
from ferrotrain.plugins.precision import (BitsandbytesPrecision, DeepSpeedPrecision, DoublePrecision,
                                          FSDPPrecision, HalfPrecision, MixedPrecision, Precision,
                                          TransformerEnginePrecision, XLAPrecision)

__all__ = [
    "AsyncCheckpointIO", "CheckpointIO", "ClusterEnvironment", "TorchCheckpointIO", "XLACheckpointIO", "BitsandbytesPrecision",
    "DeepSpeedPrecision", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision",
    "TransformerEnginePrecision", "XLAPrecision", "FSDPPrecision", "LayerSync", "TorchSyncBatchNorm",
]
