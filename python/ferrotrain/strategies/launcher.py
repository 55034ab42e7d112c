"""Starting the other processes of a run from a plain `python train.py`, and stopping them.

`SubprocessLauncher` does what Lightning's subprocess-script launcher does: the process the user
started becomes local rank 0, and the launcher re-runs the same command line (`sys.argv`, or
`-m module`) once per other local rank, with the rank variables in its environment. Those processes
run the user's script from the top, build the same Trainer, see the variables and start nothing.

Failure is bounded: a watchdog thread polls the children. When one exits with an error, the others
are stopped and rank 0 raises `RankFailedError` carrying that rank's traceback (each child writes
its traceback to a file the launcher names, as torchrun's error files). When rank 0 itself raises,
the children are stopped. Under torchrun or SLURM nothing here runs: they own the processes.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

from ferrotrain.errors import FerrotrainError
from ferrotrain.strategies.environment import ClusterEnvironment

# Set by the launcher in each child: where the child writes its traceback if it fails.
ERROR_FILE_VAR = "FERROTRAIN_ERROR_FILE"


class RankFailedError(FerrotrainError, RuntimeError):
    """Another process of the run failed; the message holds its traceback."""


def record_failure(text: str) -> None:
    """In a launched child: leave the traceback where rank 0's launcher reads it."""
    path = os.environ.get(ERROR_FILE_VAR)
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass  # the child's stderr still shows it


def _command() -> List[str]:
    """The command line that started this process, to run it again (under the Lightning redirect
    when this process runs under it, so the other ranks import the same classes)."""
    cmd = _started_as()
    redirect = sys.modules.get("ferrotrain.lightning")
    if redirect is not None and redirect.is_installed():
        cmd = [cmd[0], "-m", "ferrotrain.lightning"] + cmd[1:]
    return cmd


def _started_as() -> List[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        # `python -m pkg.module args`: run the module again, not its file.
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name] + sys.argv[1:]
    script = os.path.abspath(sys.argv[0])
    return [sys.executable, script] + sys.argv[1:]


class SubprocessLauncher:
    """Starts local ranks 1..N-1 of this node by re-running the script (see the module doc)."""

    def __init__(self, environment: ClusterEnvironment, num_processes: int, num_nodes: int,
                 grace_s: float = 10.0) -> None:
        self.environment = environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        # How long the watchdog lets rank 0 notice a failed child on its own before ending it.
        self.grace_s = grace_s
        self.procs: Dict[int, subprocess.Popen] = {}
        self._error_dir: Optional[str] = None
        self._failed: Optional[RankFailedError] = None
        self._handled = threading.Event()
        self._stop = threading.Event()
        self._watchdog: Optional[threading.Thread] = None

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    def launch(self) -> None:
        if self.environment.creates_processes_externally or self.procs:
            return
        if sys.argv and sys.argv[0] in ("", "-c"):
            from ferrotrain.errors import MisconfigurationException

            raise MisconfigurationException(
                "`strategy='ddp'` with several devices re-runs your script in new processes, which needs a "
                "script file (`python train.py`); from a notebook or `python -c`, use torchrun"
            )
        # Where rank zero listens and which node this is, from the environment (Lightning's launcher).
        addr = os.environ["MASTER_ADDR"] = self.environment.main_address
        port = os.environ["MASTER_PORT"] = str(self.environment.main_port)
        node_rank = str(self.environment.node_rank())
        world = self.num_processes * self.num_nodes
        self._error_dir = tempfile.mkdtemp(prefix="ferrotrain-ranks-")
        cmd = _command()
        for local_rank in range(1, self.num_processes):
            env = dict(os.environ)
            env.update(
                MASTER_ADDR=addr, MASTER_PORT=port, NODE_RANK=node_rank, LOCAL_RANK=str(local_rank),
                WORLD_SIZE=str(world), RANK=str(int(node_rank) * self.num_processes + local_rank),
            )
            env[ERROR_FILE_VAR] = self._error_file(local_rank)
            self.procs[local_rank] = subprocess.Popen(cmd, env=env)
        # This process is now local rank 0 of a launched run: later Trainers start nothing.
        os.environ.update(NODE_RANK=node_rank, LOCAL_RANK="0", WORLD_SIZE=str(world),
                          RANK=str(int(node_rank) * self.num_processes))
        self._watchdog = threading.Thread(target=self._watch, name="ferrotrain-ddp-watchdog", daemon=True)
        self._watchdog.start()
        atexit.register(self._at_exit)

    def _error_file(self, local_rank: int) -> str:
        return os.path.join(self._error_dir or "", f"rank-{local_rank}.txt")

    def _failure(self, local_rank: int, code: int) -> RankFailedError:
        text = ""
        try:
            with open(self._error_file(local_rank), encoding="utf-8") as f:
                text = f.read()
        except OSError:
            pass
        rank = int(os.environ.get("NODE_RANK", "0")) * self.num_processes + local_rank
        detail = f"\n\nThe traceback of rank {rank}:\n{text}" if text else " (see its output above)"
        return RankFailedError(f"Rank {rank} (local rank {local_rank}) failed with exit code {code}{detail}")

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for local_rank, p in self.procs.items():
                code = p.poll()
                if code is not None and code != 0:
                    self._failed = self._failure(local_rank, code)
                    self.kill()
                    # Rank 0 usually sees the broken connection at once and raises; if it is
                    # stuck (a rendezvous waiting for the dead rank), end it after a grace period.
                    if not self._handled.wait(self.grace_s):
                        sys.stderr.write(f"\n[ferrotrain] {self._failed}\n[ferrotrain] stopping rank 0\n")
                        sys.stderr.flush()
                        os._exit(1)
                    return
            if all(p.poll() == 0 for p in self.procs.values()):
                return

    def failure(self, wait_s: float = 3.0) -> Optional[RankFailedError]:
        """The failed child's error, if one failed. Rank 0 may see the broken connection before
        the child's exit is seen, so this waits up to `wait_s` for the watchdog."""
        deadline = time.monotonic() + wait_s
        while self._failed is None and time.monotonic() < deadline:
            if self._watchdog is None or not self._watchdog.is_alive():
                break
            time.sleep(0.05)
        if self._failed is not None:
            self._handled.set()
        return self._failed

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Stop every child still running: `sig`, then SIGKILL after a second."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for p in alive:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 1.0
        for p in alive:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def on_exception(self) -> None:
        self._handled.set()
        self.kill()

    def _at_exit(self) -> None:
        """Rank 0 is done: let the children finish their own run, then clean up."""
        self._handled.set()
        for p in self.procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                pass
        self._stop.set()
        self.kill()
        if self._error_dir:
            import shutil

            shutil.rmtree(self._error_dir, ignore_errors=True)
