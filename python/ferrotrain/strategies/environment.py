"""Where the processes of a run come from: the cluster environment, as Lightning's
`plugins.environments`.

An environment answers, for this process, who started it and what rank it has: `torchrun`
(`TorchElasticEnvironment`), SLURM's `srun` (`SLURMEnvironment`), LSF's `jsrun`, MPI, a Kubeflow
PyTorchJob, or, for a plain `python train.py`, ferrotrain's own launcher (`LightningEnvironment`,
whose ranks the strategy sets). `detect()` picks one from the environment variables in Lightning's
order. A user may pass one (or a subclass) as `Trainer(plugins=[env])`. Nothing here starts
processes (see `launcher`) nor talks to torch.distributed (see `parallel`).
"""

import logging
import os
import re
import shutil
import signal
import socket
import sys
import warnings
from abc import ABC, abstractmethod
from typing import Dict, List, Optional

from ferrotrain.errors import MisconfigurationException

log = logging.getLogger(__name__)


def find_free_port() -> int:
    """A TCP port that is free on this machine right now (the OS picks it); `STANDALONE_PORT`
    fixes it instead, as in Lightning."""
    if "STANDALONE_PORT" in os.environ:
        return int(os.environ["STANDALONE_PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class ClusterEnvironment(ABC):
    """What the strategy asks the cluster: the ranks, the world size and where rank zero listens."""

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """True when something else started every process, so the Trainer starts none."""

    @property
    @abstractmethod
    def main_address(self) -> str:
        """The address of the process with global rank zero."""

    @property
    @abstractmethod
    def main_port(self) -> int:
        """The port on which the process with global rank zero listens."""

    @staticmethod
    @abstractmethod
    def detect() -> bool:
        """Whether the environment variables say this process runs under this environment."""

    @abstractmethod
    def world_size(self) -> int:
        """The number of processes over all devices and nodes."""

    @abstractmethod
    def set_world_size(self, size: int) -> None:
        """Called by the strategy with `num_nodes * devices`."""

    @abstractmethod
    def global_rank(self) -> int:
        """The rank of this process over all nodes and devices."""

    @abstractmethod
    def set_global_rank(self, rank: int) -> None:
        """Called by the strategy with `node_rank * devices + local_rank`."""

    @abstractmethod
    def local_rank(self) -> int:
        """The rank of this process on its node."""

    @abstractmethod
    def node_rank(self) -> int:
        """The rank of the node this process runs on."""

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise if the Trainer's `devices` and `num_nodes` disagree with the environment."""

    def teardown(self) -> None:
        """Undo what the environment set once the run is over."""


class _SchedulerOwnsRanks(ClusterEnvironment):
    """An environment whose scheduler or launcher (SLURM, torchelastic, MPI, XLA, ...) sets the ranks
    and world size: the strategy's setters are ignored, as in Lightning."""

    def set_world_size(self, size: int) -> None:
        log.debug(f"{type(self).__name__}.set_world_size was called, but the environment owns it. Ignored.")

    def set_global_rank(self, rank: int) -> None:
        log.debug(f"{type(self).__name__}.set_global_rank was called, but the environment owns it. Ignored.")


class LightningEnvironment(ClusterEnvironment):
    """A single node or an unmanaged cluster: the Trainer starts the other local processes itself
    (`python train.py`), unless `LOCAL_RANK` is set, which means the user started them. The ranks
    are those the strategy sets; the port is `MASTER_PORT` or a free one, chosen once."""

    def __init__(self) -> None:
        super().__init__()
        self._main_port: int = -1
        self._global_rank: int = 0
        self._world_size: int = 1

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self._main_port == -1:
            self._main_port = int(os.environ["MASTER_PORT"]) if "MASTER_PORT" in os.environ else find_free_port()
        return self._main_port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        from ferrotrain.utilities.rank_zero import rank_zero_only

        self._global_rank = rank
        rank_zero_only.rank = rank  # type: ignore[attr-defined]

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        return int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))

    def teardown(self) -> None:
        os.environ.pop("WORLD_SIZE", None)


class TorchElasticEnvironment(_SchedulerOwnsRanks):
    """Started by `torchrun` / `python -m torch.distributed.run` (`TORCHELASTIC_RUN_ID` set)."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" not in os.environ:
            warnings.warn("MASTER_ADDR environment variable is not defined. Set as localhost")
            os.environ["MASTER_ADDR"] = "127.0.0.1"
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" not in os.environ:
            warnings.warn("MASTER_PORT environment variable is not defined. Set as 12910")
            os.environ["MASTER_PORT"] = "12910"
        return int(os.environ["MASTER_PORT"])

    @staticmethod
    def detect() -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ

    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def global_rank(self) -> int:
        return int(os.environ["RANK"])

    def local_rank(self) -> int:
        return int(os.environ["LOCAL_RANK"])

    def node_rank(self) -> int:
        return int(os.environ.get("GROUP_RANK", 0))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if num_devices * num_nodes != self.world_size():
            raise ValueError(
                f"You set `devices={num_devices}` and `num_nodes={num_nodes}`, but the product "
                f"({num_devices} * {num_nodes}) does not match the world size ({self.world_size()})."
            )


def _slurm_interactive() -> bool:
    # A job named `bash` or `interactive` is an allocation the user starts processes in by hand.
    return os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")


def _srun_used() -> bool:
    return "SLURM_NTASKS" in os.environ and not _slurm_interactive()


class SLURMEnvironment(_SchedulerOwnsRanks):
    """One process per SLURM task (`srun`); an interactive allocation (job name `bash` or
    `interactive`) is not detected. `MASTER_ADDR` / `MASTER_PORT` override the address (first host
    of `SLURM_NODELIST`) and the port (15000 + the last four digits of the job id).

    `auto_requeue` and `requeue_signal` are Lightning's: on `requeue_signal` (SIGUSR1 when None,
    the signal `sbatch --signal` sends before the time limit) the fit writes its preemption
    checkpoint and, with `auto_requeue`, asks SLURM to requeue the job (`scontrol requeue`). Pass
    one as `Trainer(plugins=[SLURMEnvironment(auto_requeue=False)])` to change them."""

    def __init__(self, auto_requeue: bool = True, requeue_signal: Optional[int] = None) -> None:
        super().__init__()
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
        self._warn_if_srun_unused()
        self._check_srun_variables()

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        root = os.environ.get("MASTER_ADDR")
        if root is None:
            root = self.resolve_root_node_address(os.environ.get("SLURM_NODELIST", "127.0.0.1"))
            os.environ["MASTER_ADDR"] = root
        return root

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        job_id = os.environ.get("SLURM_JOB_ID")
        # Derived from the job id, so every task of the job computes the same port.
        port = int(job_id[-4:]) + 15000 if job_id is not None else 12910
        os.environ["MASTER_PORT"] = str(port)
        return port

    @staticmethod
    def detect() -> bool:
        SLURMEnvironment._warn_if_srun_unused()
        return _srun_used()

    @staticmethod
    def job_name() -> Optional[str]:
        return os.environ.get("SLURM_JOB_NAME")

    @staticmethod
    def job_id() -> Optional[int]:
        if _slurm_interactive():
            return None
        try:
            return int(os.environ["SLURM_JOB_ID"])
        except (KeyError, ValueError):
            return None

    def world_size(self) -> int:
        return int(os.environ["SLURM_NTASKS"])

    def global_rank(self) -> int:
        return int(os.environ["SLURM_PROCID"])

    def local_rank(self) -> int:
        return int(os.environ["SLURM_LOCALID"])

    def node_rank(self) -> int:
        return int(os.environ["SLURM_NODEID"])

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if _slurm_interactive():
            return
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
        if per_node is not None and int(per_node) != num_devices:
            raise ValueError(
                f"You set `devices={num_devices}`, but SLURM runs `--ntasks-per-node={per_node}` tasks per node. "
                f"HINT: Set `devices={per_node}`."
            )
        nodes = os.environ.get("SLURM_NNODES")
        if nodes is not None and int(nodes) != num_nodes:
            raise ValueError(
                f"You set `num_nodes={num_nodes}`, but SLURM runs the job on `--nodes={nodes}` nodes. "
                f"HINT: Set `num_nodes={nodes}`."
            )

    @staticmethod
    def resolve_root_node_address(nodes: str) -> str:
        """The first host of a SLURM node list: `host0 host1`, `host0,host1` and `host[5-9],other`
        give `host0`, `host0` and `host5`."""
        nodes = re.sub(r"\[(.*?)[,-].*\]", r"\1", nodes)  # the first node of each range
        nodes = re.sub(r"\[(.*?)\]", r"\1", nodes)  # a range of one number
        return nodes.split(" ")[0].split(",")[0]

    @staticmethod
    def _warn_if_srun_unused() -> None:
        # Several tasks started without `srun` hang waiting for each other: say so early.
        if sys.platform == "win32" or shutil.which("srun") is None or _srun_used():
            return
        hint = " ".join(["srun", os.path.basename(sys.executable), *sys.argv])[:64]
        warnings.warn(
            "The `srun` command is available on your system but is not used. HINT: If your intention is to run "
            f"on SLURM, prepend your python command with `srun` like so: {hint} ..."
        )

    @staticmethod
    def _check_srun_variables() -> None:
        ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
        if ntasks > 1 and "SLURM_NTASKS_PER_NODE" not in os.environ:
            raise RuntimeError(
                f"You set `--ntasks={ntasks}` in your SLURM bash script, but this variable is not supported. "
                f"HINT: Use `--ntasks-per-node={ntasks}` instead."
            )


class KubeflowEnvironment(_SchedulerOwnsRanks):
    """A Kubeflow PyTorchJob: one process per pod, so the node rank is the global rank. Never
    detected: pass it as `Trainer(plugins=[KubeflowEnvironment()])`."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        return int(os.environ["MASTER_PORT"])

    @staticmethod
    def detect() -> bool:
        raise NotImplementedError("The Kubeflow environment can't be detected automatically.")

    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def global_rank(self) -> int:
        return int(os.environ["RANK"])

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return self.global_rank()


def _jsm_int(name: str, what: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise ValueError(
            f"Cannot determine {what}. Environment variable `{name}` not found. Make sure you run your executable "
            "with `jsrun`."
        )
    return int(raw)


class LSFEnvironment(_SchedulerOwnsRanks):
    """LSF's `jsrun`: ranks from `JSM_NAMESPACE_RANK` / `_LOCAL_RANK` / `_SIZE`; the hosts from the
    rank file `LSB_DJOB_RANKFILE` (its first line is the launch node; rank zero runs on the next);
    the port from `MASTER_PORT` or the job id `LSB_JOBID`. Sets `MASTER_ADDR` and `MASTER_PORT`."""

    def __init__(self) -> None:
        super().__init__()
        hosts = self._read_hosts()
        self._main_address = hosts[0]
        self._main_port = self._port_from_env()
        first_seen: Dict[str, int] = {}
        for host in hosts:
            first_seen.setdefault(host, len(first_seen))
        self._node_rank = first_seen[socket.gethostname()]
        os.environ["MASTER_ADDR"] = str(self._main_address)
        os.environ["MASTER_PORT"] = str(self._main_port)

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self._main_address

    @property
    def main_port(self) -> int:
        return self._main_port

    @staticmethod
    def detect() -> bool:
        needed = {"LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE"}
        return needed.issubset(os.environ.keys())

    def world_size(self) -> int:
        return _jsm_int("JSM_NAMESPACE_SIZE", "world size")

    def global_rank(self) -> int:
        return _jsm_int("JSM_NAMESPACE_RANK", "global rank")

    def local_rank(self) -> int:
        return _jsm_int("JSM_NAMESPACE_LOCAL_RANK", "local rank")

    def node_rank(self) -> int:
        return self._node_rank

    @staticmethod
    def _read_hosts() -> List[str]:
        path = os.environ.get("LSB_DJOB_RANKFILE")
        if path is None:
            raise ValueError("Did not find the environment variable `LSB_DJOB_RANKFILE`")
        if not path:
            raise ValueError("The environment variable `LSB_DJOB_RANKFILE` is empty")
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f][1:]

    @staticmethod
    def _port_from_env() -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        if "LSB_JOBID" in os.environ:
            return int(os.environ["LSB_JOBID"]) % 1000 + 10000
        raise ValueError("Could not find job id in environment variable LSB_JOBID")


def _mpi4py_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


class MPIEnvironment(_SchedulerOwnsRanks):
    """Processes started by `mpirun` / `mpiexec`; needs the `mpi4py` package. Rank zero's host
    and a free port on it are broadcast to all ranks; the node rank is the host's index."""

    def __init__(self) -> None:
        if not _mpi4py_installed():
            raise ModuleNotFoundError(
                "`MPIEnvironment` needs the `mpi4py` package, which is not installed. HINT: `pip install mpi4py`"
            )
        from mpi4py import MPI

        self._comm_world = MPI.COMM_WORLD
        self._comm_local = None
        self._node_rank: Optional[int] = None
        self._main_address: Optional[str] = None
        self._main_port: Optional[int] = None

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if self._main_address is None:
            self._main_address = self._comm_world.bcast(socket.gethostname(), root=0)
        return self._main_address

    @property
    def main_port(self) -> int:
        if self._main_port is None:
            self._main_port = self._comm_world.bcast(find_free_port(), root=0)
        return self._main_port

    @staticmethod
    def detect() -> bool:
        if not _mpi4py_installed():
            return False
        try:
            from mpi4py import MPI
        except ImportError:
            return False
        return MPI.COMM_WORLD.Get_size() > 1

    def world_size(self) -> int:
        return self._comm_world.Get_size()

    def global_rank(self) -> int:
        return self._comm_world.Get_rank()

    def local_rank(self) -> int:
        if self._comm_local is None:
            self._init_comm_local()
        return self._comm_local.Get_rank()

    def node_rank(self) -> int:
        if self._node_rank is None:
            self._init_comm_local()
        assert self._node_rank is not None
        return self._node_rank

    def _init_comm_local(self) -> None:
        host = socket.gethostname()
        gathered = self._comm_world.gather(host, root=0)  # None on the other ranks
        hosts = self._comm_world.bcast(sorted(set(gathered)) if gathered is not None else [], root=0)
        self._node_rank = hosts.index(host)
        self._comm_local = self._comm_world.Split(color=self._node_rank)


class XLAEnvironment(_SchedulerOwnsRanks):
    """A TPU pod (PyTorch/XLA). Exists so Lightning code imports; building one says what is missing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        import importlib.util

        if importlib.util.find_spec("torch_xla") is None:
            raise ModuleNotFoundError(
                "`XLAEnvironment` needs the `torch_xla` package (PyTorch/XLA), which is not installed"
            )
        from ferrotrain.errors import NotSupportedYetError

        raise NotSupportedYetError("`XLAEnvironment` (TPU pods through torch_xla) is not supported yet by ferrotrain")

    @property
    def creates_processes_externally(self) -> bool:
        return False

    @property
    def main_address(self) -> str:
        raise NotImplementedError

    @property
    def main_port(self) -> int:
        raise NotImplementedError

    @staticmethod
    def detect() -> bool:
        return False  # no XLA device is usable by ferrotrain

    def world_size(self) -> int:
        raise NotImplementedError

    def global_rank(self) -> int:
        raise NotImplementedError

    def local_rank(self) -> int:
        raise NotImplementedError

    def node_rank(self) -> int:
        raise NotImplementedError


def detect() -> ClusterEnvironment:
    """Lightning's order: torchrun first (it may run inside SLURM), then SLURM, LSF, MPI, else
    the plain `LightningEnvironment`."""
    for cls in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if cls.detect():
            return cls()
    return LightningEnvironment()
