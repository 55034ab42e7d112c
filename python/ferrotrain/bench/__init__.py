"""`python -m ferrotrain.bench`: the reference workloads (W1..W5) side by side with the
hand-written loop and with Lightning when it is installed; one table of medians and ratios, and a
PNG chart when matplotlib is installed (`pip install ferrotrain[bench]`).

The workload code lives in `workloads`; `benches/` holds scripts with more detail per workload.
"""

from ferrotrain.bench.workloads import WORKLOADS, Row, Sizes

__all__ = ["Row", "Sizes", "WORKLOADS"]
