"""`ServableModuleValidator`: at the start of a fit, run the module's example request through
its own deserializers, `serve_step` and serializers, and compare with its expected response.

It runs the contract in this process; Lightning's starts a FastAPI server and sends the request
over HTTP. The server arguments are checked and kept for that reason, but no server starts.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

import torch

from ferrotrain.callbacks.callback import Callback
from ferrotrain.errors import MisconfigurationException


class ServableModuleValidator(Callback):
    def __init__(self, optimization: Optional[Literal["trace", "script", "onnx", "tensorrt"]] = None,
                 server: Literal["fastapi", "ml_server", "torchserve", "sagemaker"] = "fastapi",
                 host: str = "127.0.0.1", port: int = 8080, timeout: int = 20, exit_on_failure: bool = True) -> None:
        if optimization is not None:
            raise MisconfigurationException(f"`ServableModuleValidator(optimization={optimization!r})` is not "
                                            "supported yet; allowed: None")
        if server != "fastapi":
            raise MisconfigurationException(f"`ServableModuleValidator(server={server!r})`: allowed: 'fastapi'")
        self.optimization, self.server, self.host, self.port = optimization, server, host, port
        self.timeout, self.exit_on_failure = timeout, exit_on_failure
        self.resp: Optional[Dict[str, Any]] = None

    @property
    def successful(self) -> Optional[bool]:
        """Whether the last check matched the expected response (None before any)."""
        return None if self.resp is None else self.resp.get("status_code") == 200

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from ferrotrain.serve.servable_module import ServableModule

        if not isinstance(pl_module, ServableModule):
            raise TypeError(f"The model should be a subclass of {ServableModule.__qualname__}")
        self.resp = self._check(pl_module)
        if not self.successful and self.exit_on_failure:
            raise RuntimeError(f"The model isn't servable: {self.resp['detail']}")

    @staticmethod
    def _check(module: Any) -> Dict[str, Any]:
        payload = module.configure_payload()
        if "body" not in payload:
            return {"status_code": 400, "detail": "configure_payload() must return a dict with a 'body' key"}
        deserializers, serializers = module.configure_serialization()
        inputs = {k: deserializers[k](v) if k in deserializers else v for k, v in payload["body"].items()}
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                outputs = module.serve_step(**inputs)
        finally:
            module.train(was_training)
        if not isinstance(outputs, dict):
            return {"status_code": 500, "detail": f"serve_step must return a dict, got {type(outputs).__name__}"}
        response = {k: serializers[k](v) if k in serializers else v for k, v in outputs.items()}
        expected = module.configure_response()
        if response != expected:
            return {"status_code": 500, "detail": f"response {response!r} != configure_response() {expected!r}"}
        return {"status_code": 200, "detail": "ok", "body": response}
