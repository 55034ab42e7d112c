"""Run code written for Lightning on ferrotrain, unchanged.

    python -m ferrotrain.lightning train.py --epochs 3     # a script
    python -m ferrotrain.lightning -m pytest tests/         # a module

or, in a notebook or a test suite, before anything imports Lightning:

    import ferrotrain.lightning
    ferrotrain.lightning.install()

After `install()`, `import lightning.pytorch`, `import pytorch_lightning` and their submodules return
ferrotrain's modules (`lightning.pytorch.callbacks` *is* `ferrotrain.callbacks`), and `lightning`'s
top-level Trainer-side names (`lightning.Trainer`, `lightning.LightningModule`, ...) are ferrotrain's.
A submodule ferrotrain lacks is a ModuleNotFoundError naming it: the redirect never loads Lightning's
own Trainer-side modules. `lightning.fabric` is left to a real Lightning install when there is one.
"""

import sys

from ferrotrain.lightning._finder import PREFIXES, ROOT, RedirectFinder, installed_finder, target_of

__all__ = ["install", "uninstall", "is_installed"]


def _already_imported() -> list:
    names = [ROOT] + list(PREFIXES)
    return sorted(
        n for n in sys.modules if any(n == p or n.startswith(p + ".") for p in names) and not _is_ours(n)
    )


def _is_ours(name: str) -> bool:
    module = sys.modules.get(name)
    if name == ROOT:
        return getattr(module, "__ferrotrain_redirect__", False)
    target = target_of(name)
    return target is not None and module is sys.modules.get(target)


def install() -> None:
    """Put the redirect first on `sys.meta_path` (a second call does nothing). Raises RuntimeError
    when real Lightning modules were imported already: mixing them into a ferrotrain run would
    give two `LightningModule` classes."""
    if installed_finder() is not None:
        return
    stale = _already_imported()
    if stale:
        raise RuntimeError(
            f"install() must run before Lightning is imported, but {', '.join(stale[:5])} "
            f"{'is' if len(stale) == 1 else 'are'} imported already; call it first (or run the "
            "program with `python -m ferrotrain.lightning`)"
        )
    sys.meta_path.insert(0, RedirectFinder())


def uninstall() -> None:
    """Take the redirect off `sys.meta_path` and forget the modules it handed out under Lightning's
    names (ferrotrain's own modules stay imported)."""
    finder = installed_finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    names = [ROOT] + list(PREFIXES)
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in names) and _is_ours(name):
            del sys.modules[name]


def is_installed() -> bool:
    return installed_finder() is not None
