"""A DDP run with a user's `LightningEnvironment` subclass, run as real processes by
tests/test_plugin_kinds.py: `python tests/cluster_env_worker.py LIB OUT`, LIB being `ferrotrain` or
`lightning` (to cross-check). The subclass fixes rank zero's port from `USER_PORT` and records what
the strategy tells it; each rank writes what it saw to OUT/rank<r>.json."""

import importlib
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


def main(lib: str, out: str) -> None:
    L = importlib.import_module(lib)
    envs = importlib.import_module("lightning.pytorch.plugins.environments" if lib == "lightning"
                                   else "ferrotrain.plugins.environments")

    class UserEnvironment(envs.LightningEnvironment):
        def __init__(self):
            super().__init__()
            self.told = []

        @property
        def main_port(self):
            return int(os.environ["USER_PORT"])

        def set_global_rank(self, rank):
            self.told.append(("rank", rank))
            super().set_global_rank(rank)

        def set_world_size(self, size):
            self.told.append(("world", size))
            super().set_world_size(size)

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)
            self.seen = {}

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.seen = {"dist_world": dist.get_world_size(), "dist_rank": dist.get_rank(),
                             "master_port": os.environ.get("MASTER_PORT")}
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g))
    env = UserEnvironment()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", plugins=[env], max_epochs=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    model = Model()
    trainer.fit(model, DataLoader(data, batch_size=4))
    strategy = trainer.strategy
    seen = {
        "environment_is_the_plugin": strategy.cluster_environment is env,
        "environment_type": type(strategy.cluster_environment).__name__,
        "ranks": [trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size],
        "told": env.told,
        "weights": [round(float(v), 6) for v in torch.cat([p.detach().flatten() for p in model.parameters()])],
        **model.seen,
    }
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
