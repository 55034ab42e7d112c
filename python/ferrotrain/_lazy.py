"""Package attributes imported on first use (PEP 562), so `import ferrotrain` stays cheap and
packages whose modules import each other do not cycle."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict


def lazy_getattr(package: str, table: Dict[str, str], namespace: Dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `table` maps a name to the submodule holding it
    (relative to the package, or absolute when it starts with "ferrotrain."); the value is
    cached in `namespace` (the package's globals) after the first lookup."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        path = module if module.startswith("ferrotrain.") else f"{package}.{module}"
        value = getattr(importlib.import_module(path), name)
        namespace[name] = value
        return value

    return __getattr__
