"""`PL_TRAINER_<ARGUMENT>` environment variables as Trainer defaults, as in Lightning.

A variable set for an argument the caller did not pass supplies its value (`PL_TRAINER_MAX_STEPS=7`,
`PL_TRAINER_LOGGER=False`); an argument passed explicitly always wins. Values are read as Python
literals where they parse as one ("7", "False", "[0, 1]"), else kept as strings ("gpu").
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
from typing import Any, Callable, Dict

PREFIX = "PL_TRAINER_"


def _parse(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def env_defaults(names: Any) -> Dict[str, Any]:
    """The environment's values for the given argument names."""
    found = {}
    for name in names:
        text = os.environ.get(PREFIX + name.upper())
        if text is not None:
            found[name] = _parse(text)
    return found


def defaults_from_env(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap `Trainer.__init__` so unpassed arguments take their `PL_TRAINER_*` values; the
    signature stays the original's (for `inspect` and argument parsers)."""
    names = [p for p in inspect.signature(init).parameters if p != "self"]

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        for name, value in env_defaults(n for n in names if n not in kwargs).items():
            kwargs[name] = value
        init(self, *args, **kwargs)

    return wrapped
