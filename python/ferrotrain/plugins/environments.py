"""Lightning's `plugins.environments` path: the cluster environments the strategy reads ranks from
(ferrotrain keeps them in `ferrotrain.strategies.environment`). Pass one, or a subclass, as
`Trainer(plugins=[env])`; without one the Trainer detects it from the environment variables."""

from ferrotrain.strategies.environment import (ClusterEnvironment, KubeflowEnvironment, LightningEnvironment,
                                               LSFEnvironment, MPIEnvironment, SLURMEnvironment,
                                               TorchElasticEnvironment, XLAEnvironment)

__all__ = [
    "ClusterEnvironment", "KubeflowEnvironment", "LightningEnvironment", "LSFEnvironment", "MPIEnvironment",
    "SLURMEnvironment", "TorchElasticEnvironment", "XLAEnvironment",
]
