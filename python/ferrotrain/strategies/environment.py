"""Where the processes of a run come from: the cluster environment.

It reads, once, who started this process and what rank it has: `torchrun` (torchelastic's
`TORCHELASTIC_RUN_ID`, `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `GROUP_RANK`), SLURM (`SLURM_PROCID`,
`SLURM_LOCALID`, `SLURM_NODEID`, `SLURM_NTASKS`) or, for a plain `python train.py`, the variables
ferrotrain's own launcher sets for the processes it starts (`LOCAL_RANK`, `NODE_RANK`). It does not
start processes (see `launcher`) nor talk to torch.distributed (see `ddp`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
from typing import Optional

from ferrotrain.errors import MisconfigurationException


def find_free_port() -> int:
    """A TCP port that is free on this machine right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_int(name: str, default: Optional[int] = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise MisconfigurationException(f"The environment variable `{name}` must be set for this launcher")
        return default
    try:
        return int(raw)
    except ValueError:
        raise MisconfigurationException(f"The environment variable `{name}` must be an int, got {raw!r}") from None


class ClusterEnvironment:
    """The plain environment: ranks come from ferrotrain's own launcher (or are all zero before it
    runs). `creates_processes_externally` is True when something else already started this
    process with its rank, so the Trainer must start nothing."""

    name = "plain"

    def __init__(self, num_devices: int, num_nodes: int) -> None:
        self.num_devices = num_devices
        self.num_nodes = num_nodes

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        return _env_int("MASTER_PORT", 0)

    def world_size(self) -> int:
        return _env_int("WORLD_SIZE", self.num_devices * self.num_nodes)

    def node_rank(self) -> int:
        return _env_int("NODE_RANK", _env_int("GROUP_RANK", 0))

    def local_rank(self) -> int:
        return _env_int("LOCAL_RANK", 0)

    def global_rank(self) -> int:
        if "RANK" in os.environ:
            return _env_int("RANK")
        return self.node_rank() * self.num_devices + self.local_rank()

    def validate(self) -> None:
        """The Trainer's `devices * num_nodes` must match the world the launcher made."""
        if not self.creates_processes_externally:
            return
        expected = self.num_devices * self.num_nodes
        if self.world_size() != expected:
            raise MisconfigurationException(
                f"`Trainer(devices={self.num_devices}, num_nodes={self.num_nodes})` makes {expected} processes, "
                f"but the {self.name} environment says WORLD_SIZE={self.world_size()}; make them agree"
            )


class TorchElasticEnvironment(ClusterEnvironment):
    """Started by `torchrun` / `python -m torch.distributed.run`."""

    name = "torchrun"

    @staticmethod
    def detect() -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ and all(
            k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        )

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def world_size(self) -> int:
        return _env_int("WORLD_SIZE")

    def global_rank(self) -> int:
        return _env_int("RANK")

    def node_rank(self) -> int:
        return _env_int("GROUP_RANK", 0)


class SLURMEnvironment(ClusterEnvironment):
    """One process per SLURM task (`srun`); an interactive allocation (job name `bash`) is not.

    `auto_requeue` and `requeue_signal` are Lightning's: on `requeue_signal` (SIGUSR1 when None,
    the signal `sbatch --signal` sends before the time limit) the fit writes its preemption
    checkpoint and, with `auto_requeue`, asks SLURM to requeue the job (`scontrol requeue`). Pass
    one as `Trainer(plugins=[SLURMEnvironment(auto_requeue=False)])` to change them."""

    name = "SLURM"

    def __init__(self, auto_requeue: bool = True, requeue_signal: Optional[int] = None, *,
                 num_devices: int = 1, num_nodes: int = 1) -> None:
        super().__init__(num_devices, num_nodes)
        if not isinstance(auto_requeue, bool):
            raise MisconfigurationException(
                f"`SLURMEnvironment(auto_requeue={auto_requeue!r})` must be True or False")
        if requeue_signal is None:
            requeue_signal = getattr(signal, "SIGUSR1", None)
        elif not isinstance(requeue_signal, int) or requeue_signal not in signal.valid_signals():
            raise MisconfigurationException(
                f"`SLURMEnvironment(requeue_signal={requeue_signal!r})` must be a signal number such as "
                "signal.SIGUSR1 or signal.SIGUSR2, or None (SIGUSR1)")
        self.auto_requeue = auto_requeue
        self.requeue_signal = requeue_signal

    @staticmethod
    def detect() -> bool:
        return "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and (
            os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")
        )

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in os.environ:
            return os.environ["MASTER_ADDR"]
        nodes = os.environ.get("SLURM_NODELIST", "127.0.0.1")
        return _first_slurm_host(nodes)

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return _env_int("MASTER_PORT")
        # A port derived from the job id: the same on every task of the job.
        return 15000 + _env_int("SLURM_JOB_ID", 0) % 5000

    def world_size(self) -> int:
        return _env_int("SLURM_NTASKS")

    def global_rank(self) -> int:
        return _env_int("SLURM_PROCID")

    def local_rank(self) -> int:
        return _env_int("SLURM_LOCALID", 0)

    def node_rank(self) -> int:
        return _env_int("SLURM_NODEID", 0)


def _first_slurm_host(nodelist: str) -> str:
    """`node[3-5,7],other` -> `node3`."""
    first = re.split(r",(?![^\[]*\])", nodelist)[0]
    m = re.match(r"^(.*?)\[(\d+)", first)
    return f"{m.group(1)}{m.group(2)}" if m else first


def detect(num_devices: int, num_nodes: int) -> ClusterEnvironment:
    """torchrun first, then SLURM, else the plain environment."""
    for cls in (TorchElasticEnvironment, SLURMEnvironment):
        if cls.detect():
            return cls(num_devices=num_devices, num_nodes=num_nodes)
    return ClusterEnvironment(num_devices, num_nodes)
