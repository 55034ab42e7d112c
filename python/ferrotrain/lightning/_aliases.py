"""Lightning module paths whose names ferrotrain keeps in another module (Lightning splits
`callbacks.progress`, `plugins.precision`, `plugins.io`, ... into one file per class; ferrotrain keeps
each family in one module). Under the redirect such a path is a small module that forwards every
attribute to ferrotrain's module, so the classes are the same objects."""

import importlib
import types
from typing import Any

# Lightning's path below `lightning.pytorch` -> the ferrotrain module that holds its names.
ALIASES = {
    "accelerators.accelerator": "ferrotrain.accelerators",
    "accelerators.cpu": "ferrotrain.accelerators",
    "accelerators.cuda": "ferrotrain.accelerators",
    "accelerators.mps": "ferrotrain.accelerators",
    "accelerators.xla": "ferrotrain.accelerators",
    "callbacks.progress": "ferrotrain.callbacks.progress",
    "callbacks.progress.progress_bar": "ferrotrain.callbacks.progress",
    "callbacks.progress.tqdm_progress": "ferrotrain.callbacks.progress",
    "callbacks.progress.rich_progress": "ferrotrain.callbacks.progress",
    "core.optimizer": "ferrotrain.trainer.optimization",
    "plugins.io": "ferrotrain.plugins.io",
    "plugins.io.checkpoint_plugin": "ferrotrain.plugins.io",
    "plugins.io.torch_plugin": "ferrotrain.plugins.io",
    "plugins.io.async_plugin": "ferrotrain.plugins.io",
    "plugins.io.wrapper": "ferrotrain.plugins.io",
    "plugins.io.xla_plugin": "ferrotrain.plugins.io",
    "plugins.precision": "ferrotrain.plugins.precision",
    "plugins.precision.precision": "ferrotrain.plugins.precision",
    "plugins.precision.amp": "ferrotrain.plugins.precision",
    "plugins.precision.double": "ferrotrain.plugins.precision",
    "plugins.precision.half": "ferrotrain.plugins.precision",
    "plugins.precision.fsdp": "ferrotrain.plugins.precision",
    "plugins.precision.deepspeed": "ferrotrain.plugins.precision",
    "plugins.precision.bitsandbytes": "ferrotrain.plugins.precision",
    "plugins.precision.transformer_engine": "ferrotrain.plugins.precision",
    "plugins.precision.xla": "ferrotrain.plugins.precision",
    "profilers.base": "ferrotrain.profilers",
    "serve.servable_module_validator": "ferrotrain.serve",
    "utilities.exceptions": "ferrotrain.errors",
    "utilities.grads": "ferrotrain.utilities",
    "utilities.model_summary": "ferrotrain.callbacks.model_summary",
    "utilities.model_summary.model_summary": "ferrotrain.callbacks.model_summary",
}


def forwarding_module(name: str, target: str) -> types.ModuleType:
    """A package-shaped module `name` whose attributes are those of ferrotrain's `target`."""
    module = types.ModuleType(name, f"Lightning's {name}: ferrotrain keeps these names in {target}.")
    module.__path__ = []  # type: ignore[attr-defined]  # so Lightning's deeper paths can load below it

    def __getattr__(attr: str) -> Any:
        source = importlib.import_module(target)
        if attr == "__all__":
            return list(getattr(source, "__all__", [n for n in vars(source) if not n.startswith("_")]))
        try:
            return getattr(source, attr)
        except AttributeError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r} (ferrotrain's {target} lacks it)") from None

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return module
