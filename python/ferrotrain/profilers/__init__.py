"""Profilers with Lightning 2.x's API: `Trainer(profiler="simple")` or `Trainer(profiler=SimpleProfiler(...))`.

`SimpleProfiler` times each phase of each training step with the native core's `PhaseTimer` and
prints where the time goes, the loop's own overhead included; `PyTorchProfiler` adds
`torch.profiler`'s operator table and trace. `PassThroughProfiler` is `trainer.profiler` when
profiling is off.
"""

from ferrotrain.profilers.advanced import AdvancedProfiler
from ferrotrain.profilers.profiler import PassThroughProfiler, Profiler
from ferrotrain.profilers.pytorch import PyTorchProfiler
from ferrotrain.profilers.simple import SimpleProfiler
from ferrotrain.profilers.xla import XLAProfiler

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler", "XLAProfiler"]
