"""`SingleDeviceStrategy`: one process, one device; every collective is the identity."""

from __future__ import annotations

from typing import Union

import torch

from ferrotrain.strategies.strategy import Strategy


class SingleDeviceStrategy(Strategy):
    strategy_name = "single_device"

    def __init__(self, device: Union[str, torch.device, int] = "cpu") -> None:
        super().__init__()
        if isinstance(device, int):
            device = torch.device("cuda", device)
        self._given = torch.device(device)
        self._root_device = self._given

    def _configure(self, accelerator: str, devices: list, num_nodes: int) -> None:
        super()._configure(accelerator, devices, num_nodes)
