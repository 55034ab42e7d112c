"""Lightning's `plugins.environments` path: the cluster environments the launcher reads ranks from
(ferrotrain keeps them in `ferrotrain.strategies.environment`)."""

from ferrotrain.strategies.environment import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment

__all__ = ["ClusterEnvironment", "SLURMEnvironment", "TorchElasticEnvironment"]
