"""The import hook behind the redirect: a meta path finder that answers for `lightning.pytorch`,
`pytorch_lightning` and their submodules with ferrotrain's modules (the same objects, so classes
compare and `isinstance` holds across both names), and for `lightning` with a small root module."""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any, List, Optional, Sequence

from ferrotrain.lightning._aliases import ALIASES, forwarding_module

# Lightning's prefixes for the Trainer side, each mapped onto ferrotrain.
PREFIXES = ("lightning.pytorch", "pytorch_lightning")
ROOT = "lightning"


def target_of(fullname: str) -> Optional[str]:
    """The ferrotrain module that answers for `fullname`, or None when the redirect leaves it alone."""
    for prefix in PREFIXES:
        if fullname == prefix:
            return "ferrotrain"
        if fullname.startswith(prefix + "."):
            return "ferrotrain" + fullname[len(prefix):]
    return None


def _real_root_path() -> List[str]:
    """Where a real `lightning` distribution lives, if one is installed: its `lightning.fabric`
    (and other non-Trainer packages) load from there; `lightning.pytorch` never does."""
    spec = importlib.machinery.PathFinder.find_spec(ROOT)
    if spec is None or spec.submodule_search_locations is None:
        return []
    return list(spec.submodule_search_locations)


class _AliasLoader(importlib.abc.Loader):
    """Hands out an already imported ferrotrain module under Lightning's name."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own_spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system stamped Lightning's spec on the module; it stays ferrotrain's own
        # (reload, `importlib.util.find_spec("ferrotrain...")` and pickling read it).
        module.__spec__ = self._own_spec


class _ForwardLoader(importlib.abc.Loader):
    """Builds a module at a Lightning path whose names ferrotrain keeps in another module."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return forwarding_module(spec.name, self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        importlib.import_module(self.target)  # a missing dependency fails here, at import


class _RootLoader(importlib.abc.Loader):
    """Builds the `lightning` root: Lightning's top-level names, taken from ferrotrain."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        from ferrotrain.lightning import _root

        _root.fill(module)


class RedirectFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[types.ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname == ROOT:
            spec = importlib.machinery.ModuleSpec(ROOT, _RootLoader(), is_package=True)
            spec.submodule_search_locations = _real_root_path()
            return spec
        ours = target_of(fullname)
        if ours is None:
            return None
        forwarded = ALIASES.get(ours[len("ferrotrain."):])
        if forwarded is not None:
            return importlib.machinery.ModuleSpec(fullname, _ForwardLoader(forwarded), is_package=True)
        try:
            found = importlib.util.find_spec(ours)
        except ImportError:
            found = None
        if found is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: the ferrotrain redirect maps it to {ours!r}, which "
                "ferrotrain does not provide (it never falls back to Lightning's own module)",
                name=fullname,
            )
        module = importlib.import_module(ours)
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(ours), is_package=hasattr(module, "__path__"))
        if hasattr(module, "__path__"):
            spec.submodule_search_locations = list(module.__path__)
        return spec


def installed_finder() -> Optional[RedirectFinder]:
    for finder in sys.meta_path:
        if isinstance(finder, RedirectFinder):
            return finder
    return None
