"""The `lightning` root module under the redirect: Lightning's top-level names (`lightning.Trainer`,
`lightning.LightningModule`, ...) as ferrotrain's objects. `lightning.Fabric` and `lightning.fabric`
are Lightning's own when a real `lightning` is installed (Fabric is not a Trainer; libraries import
its helpers), and an ImportError naming `lightning.fabric` when it is not."""

import importlib
import types
from typing import Any

# Lightning 2.x's top-level `__all__`, each name from where ferrotrain keeps it.
_FROM_FERROTRAIN = {
    "Trainer": "ferrotrain",
    "LightningModule": "ferrotrain",
    "LightningDataModule": "ferrotrain",
    "Callback": "ferrotrain",
    "seed_everything": "ferrotrain",
}


def _fabric(name: str) -> Any:
    try:
        fabric = importlib.import_module("lightning.fabric")
    except ImportError as exc:
        raise ImportError(
            f"lightning.{name} is Lightning Fabric, which ferrotrain does not provide: install `lightning` "
            "beside ferrotrain to use it (the redirect still maps lightning.pytorch to ferrotrain)",
            name="lightning.fabric",
        ) from exc
    return getattr(fabric, name)


def fill(module: types.ModuleType) -> None:
    import ferrotrain

    module.__ferrotrain_redirect__ = True
    module.__version__ = ferrotrain.__version__
    module.__all__ = [*_FROM_FERROTRAIN, "Fabric", "__version__"]
    module.__doc__ = __doc__

    def __getattr__(name: str) -> Any:
        if name in _FROM_FERROTRAIN:
            value = getattr(importlib.import_module(_FROM_FERROTRAIN[name]), name)
        elif name == "Fabric":
            value = _fabric(name)
        elif name == "pytorch":
            # `import lightning` alone makes `lightning.pytorch` reachable in Lightning too.
            value = importlib.import_module("lightning.pytorch")
        else:
            raise AttributeError(f"module 'lightning' has no attribute {name!r}")
        setattr(module, name, value)
        return value

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
