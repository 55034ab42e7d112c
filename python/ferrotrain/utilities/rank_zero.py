"""Rank-zero helpers: functions decorated with `rank_zero_only` run on global rank 0 only.
The rank is read once from the launcher's environment and updated by the strategy."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def _rank_from_env() -> int:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    return 0


def rank_zero_only(fn: Callable[..., T], default: Optional[T] = None) -> Callable[..., Optional[T]]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Optional[T]:
        if rank_zero_only.rank == 0:
            return fn(*args, **kwargs)
        return default

    return wrapped


rank_zero_only.rank = _rank_from_env()  # type: ignore[attr-defined]


@rank_zero_only
def rank_zero_info(msg: str) -> None:
    """An INFO message on the "ferrotrain" logger (stderr by default), from rank zero only."""
    log.info(msg)


@rank_zero_only
def rank_zero_warn(msg: str, category: type = UserWarning, stacklevel: int = 3) -> None:
    warnings.warn(msg, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_deprecation(msg: str, stacklevel: int = 4) -> None:
    """A deprecation warning (`LightningDeprecationWarning`), from rank zero only."""
    from ferrotrain.utilities.warnings import LightningDeprecationWarning

    warnings.warn(msg, LightningDeprecationWarning, stacklevel=stacklevel)
