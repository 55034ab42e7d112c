"""`Trainer(plugins=...)`: what each plugin sets before the run is resolved."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ferrotrain.errors import MisconfigurationException

ALLOWED = ("a precision plugin (ferrotrain.plugins.precision), a CheckpointIO (ferrotrain.plugins.io), "
           "a ClusterEnvironment (ferrotrain.plugins.environments), TorchSyncBatchNorm, or a list of them")


def apply_plugins(args: Dict[str, Any]) -> Optional[Any]:
    """Set `args["precision"]` from a precision plugin and `args["_slurm_environment"]` from a
    SLURMEnvironment (its signal settings); return the CheckpointIO given, if any. A
    ClusterEnvironment reaches the strategy through `cluster_environment_plugin`.
    One plugin of each kind at most, and a precision plugin with a different explicit
    `precision=` is refused (Lightning's rule)."""
    from ferrotrain.plugins.io import CheckpointIO
    from ferrotrain.plugins.layer_sync import TorchSyncBatchNorm
    from ferrotrain.plugins.precision import Precision
    from ferrotrain.strategies.environment import ClusterEnvironment, SLURMEnvironment

    given = args.get("plugins")
    if given is None:
        return None
    plugins: List[Any] = list(given) if isinstance(given, (list, tuple)) else [given]
    precision = [p for p in plugins if isinstance(p, Precision)]
    io = [p for p in plugins if isinstance(p, CheckpointIO)]
    sync = [p for p in plugins if isinstance(p, TorchSyncBatchNorm)]
    envs = [p for p in plugins if isinstance(p, ClusterEnvironment)]
    slurm = [p for p in envs if isinstance(p, SLURMEnvironment)]
    others = [p for p in plugins if not isinstance(p, (Precision, CheckpointIO, TorchSyncBatchNorm, ClusterEnvironment))]
    if others:
        raise MisconfigurationException(f"`Trainer(plugins=...)` got {others[0]!r}: expected {ALLOWED}")
    for kind, found in (("precision plugin", precision), ("CheckpointIO", io), ("ClusterEnvironment", envs)):
        if len(found) > 1:
            raise MisconfigurationException(
                f"`Trainer(plugins=...)` got {len(found)} of kind {kind}: {found}. Expected one value for each kind")
    if slurm:
        args["_slurm_environment"] = slurm[0]
    if sync:
        args["sync_batchnorm"] = True  # the Trainer converts BatchNorm layers with torch's SyncBatchNorm
    if precision:
        flag = args.get("precision")
        if flag not in (32, "32", "32-true") and str(flag) != precision[0].precision:
            raise MisconfigurationException(
                f"Received both `precision={flag!r}` and `plugins={precision[0]!r}`. Choose one.")
        args["precision"] = precision[0].precision
    return io[0] if io else None


def precision_plugin_given(plugins: Any) -> bool:
    """Whether `Trainer(plugins=...)` holds a precision plugin (which then sets the precision as is)."""
    from ferrotrain.plugins.precision import Precision

    given = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    return any(isinstance(p, Precision) for p in given)


def cluster_environment_plugin(plugins: Any) -> Optional[Any]:
    """The `ClusterEnvironment` in `Trainer(plugins=...)`, if any (the strategy reads ranks from it)."""
    from ferrotrain.strategies.environment import ClusterEnvironment

    if plugins is None:
        return None
    given = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    return next((p for p in given if isinstance(p, ClusterEnvironment)), None)
