"""Warning classes users filter by, at Lightning's import path."""

from __future__ import annotations


class PossibleUserWarning(UserWarning):
    """A warning about a setting that is allowed but often a mistake (Lightning's class of the
    same name): `warnings.filterwarnings("ignore", category=PossibleUserWarning)` silences them."""


class LightningDeprecationWarning(DeprecationWarning):
    """A feature that will go away (Lightning's class of the same name)."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Silence every `PossibleUserWarning`, or only those raised from `module` (a regex)."""
    import warnings

    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)
