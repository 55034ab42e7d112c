"""Warning classes users filter by, at Lightning's import path."""

from __future__ import annotations


class PossibleUserWarning(UserWarning):
    """A warning about a setting that is allowed but often a mistake (Lightning's class of the
    same name): `warnings.filterwarnings("ignore", category=PossibleUserWarning)` silences them."""
