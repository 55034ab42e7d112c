"""The opt-out defaults (`enable_*`, `logger`, `log_every_n_steps`, `num_sanity_val_steps`).

They default to None, as in Lightning, so that `Trainer(barebones=True)` alone can switch them
off, while an explicit True next to `barebones=True` is still refused."""

from __future__ import annotations

from typing import Any, Dict

from ferrotrain.errors import MisconfigurationException

# name -> (value in barebones mode, value otherwise, why barebones turns it off)
_OPT_OUTS = {
    "enable_checkpointing": (False, True, "Checkpointing can impact raw speed"),
    "logger": (False, None, "Logging can impact raw speed"),
    "enable_progress_bar": (False, True, "The progress bar can impact raw speed"),
    "log_every_n_steps": (0, 50, "Logging can impact raw speed"),
    "enable_model_summary": (False, True, "Model summary can impact raw speed"),
    "num_sanity_val_steps": (0, 2, "Sanity checking can impact raw speed"),
}


def _switched_on(name: str, value: Any) -> bool:
    if name == "logger":
        return value is not None and value is not False
    if name in ("log_every_n_steps", "num_sanity_val_steps"):
        return value is not None and value != 0
    return bool(value)


def resolve_opt_outs(kwargs: Dict[str, Any]) -> None:
    """Fill the None opt-outs in `kwargs` (the Trainer's arguments) in place."""
    barebones = kwargs.get("barebones") is True
    for name, (off, default, why) in _OPT_OUTS.items():
        value = kwargs[name]
        if barebones:
            if _switched_on(name, value):
                raise MisconfigurationException(
                    f"`Trainer(barebones=True, {name}={value!r})` was passed. {why} so it is disabled in"
                    " barebones mode."
                )
            kwargs[name] = off
        elif value is None:
            kwargs[name] = default
    if not barebones:
        return
    for name, allowed in (("fast_dev_run", lambda v: v is False or v == 0),
                          ("detect_anomaly", lambda v: not v), ("profiler", lambda v: v is None)):
        if not allowed(kwargs[name]):
            raise MisconfigurationException(
                f"`Trainer(barebones=True, {name}={kwargs[name]!r})` was passed; barebones mode measures the"
                f" Trainer's overhead, so `{name}` is disabled in it."
            )
