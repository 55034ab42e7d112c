"""The interface a model implements to be served (Lightning's `ServableModule`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Tuple

import torch


class ServableModule(ABC, torch.nn.Module):
    @abstractmethod
    def configure_payload(self) -> Dict[str, Any]:
        """An example request body: `{"body": {name: serialized value}}`."""

    @abstractmethod
    def configure_serialization(self) -> Tuple[Dict[str, Callable], Dict[str, Callable]]:
        """(deserializers by input name, serializers by output name)."""

    @abstractmethod
    def serve_step(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The model's answer to one decoded request."""

    @abstractmethod
    def configure_response(self) -> Dict[str, Any]:
        """The response `serve_step`'s serialized outputs must equal for the example payload."""
