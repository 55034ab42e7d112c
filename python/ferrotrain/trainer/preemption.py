"""What a fit does when the scheduler stops it: SIGTERM (Kubernetes, spot machines, SLURM's
kill) or SLURM's requeue signal (`SLURMEnvironment(requeue_signal=...)`, SIGUSR1 by default).

The fit finishes the optimizer step under way, writes a checkpoint at that batch boundary (the
exact mid-epoch state: `fit(ckpt_path="last")` or, under SLURM, a restarted `fit()` continues
as if never stopped), asks SLURM to requeue the job when the requeue signal came with
`auto_requeue`, and raises `SIGTERMException` (a SystemExit, as in Lightning), which runs the
`on_exception` teardown: callbacks, loggers finalized, the prefetch thread stopped.

Cost per step: none in Python. The signal handler sets the schedule's `stop_at_step`, which the
native loop checks at each batch boundary with its other limits.

With several processes every rank must stop after the same step, or one would wait forever in
the next gradient all-reduce. A signal may reach one rank only, so the ranks agree through the
process group's key-value store, off the step path (`_StopAgreement`): the rank that saw the
signal proposes the step after its current one and waits until every rank has taken it up (each
rank's watcher thread does that); no rank can pass that step meanwhile, since the proposer has
not joined its all-reduce yet. The boundaries where the loop already waits for every rank (the
end of an epoch) agree with one all-reduce instead.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import threading
from typing import Any, Optional

from ferrotrain.errors import SIGTERMException
from ferrotrain.trainer.signals import SignalFlags, requeue_job
from ferrotrain.utilities.rank_zero import rank_zero_info, rank_zero_warn

HPC_PREFIX = "hpc_ckpt_"
_HPC_NAME = re.compile(rf"^{HPC_PREFIX}(\d+)\.ckpt$")


# ---------------------------------------------------------------------- checkpoint paths
def _hpc_versions(folder: str) -> list:
    if not folder or not os.path.isdir(folder):
        return []
    found = (_HPC_NAME.match(name) for name in os.listdir(folder))
    return sorted(int(m.group(1)) for m in found if m)


def hpc_save_path(folder: str) -> str:
    """Lightning's `hpc_ckpt_<n>.ckpt` in `folder`, n one more than the newest there."""
    versions = _hpc_versions(folder)
    return os.path.join(folder, f"{HPC_PREFIX}{(versions[-1] if versions else 0) + 1}.ckpt")


def hpc_resume_path(folder: str) -> Optional[str]:
    """The newest `hpc_ckpt_<n>.ckpt` in `folder` (Lightning's `_hpc_resume_path`), or None."""
    versions = _hpc_versions(folder)
    return os.path.join(folder, f"{HPC_PREFIX}{versions[-1]}.ckpt") if versions else None


def slurm_settings(trainer: Any) -> Any:
    """The SLURMEnvironment whose `auto_requeue`/`requeue_signal` apply: the one passed in
    `plugins`, the strategy's, or a default one when running under SLURM; else None."""
    from ferrotrain.strategies.environment import SLURMEnvironment

    given = getattr(trainer, "_slurm_environment", None)
    if given is not None:
        return given
    env = getattr(trainer.strategy, "cluster_environment", None)
    if isinstance(env, SLURMEnvironment):
        return env
    return SLURMEnvironment() if SLURMEnvironment.detect() else None


# ---------------------------------------------------------------------- the fit's stop
class Preemption:
    """Installed for the training loop of one fit (`install` ... `close`)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        slurm = slurm_settings(trainer)
        self.auto_requeue = bool(slurm is not None and slurm.auto_requeue)
        requeue_signal = slurm.requeue_signal if slurm is not None else None
        self.flags = SignalFlags(requeue_signal=requeue_signal, on_signal=self._on_signal)
        self._agreement: Optional[_StopAgreement] = None
        if trainer.world_size > 1:
            self._agreement = _StopAgreement(trainer, self._on_agreed)
        # With several processes the handler may set a stop only inside the native loop, which
        # comes back for the agreement; elsewhere the next epoch boundary agrees.
        self._in_loop = False

    def install(self) -> "Preemption":
        self.flags.install()
        if self._agreement is not None:
            self._agreement.start()
        return self

    def close(self) -> None:
        self.flags.restore()
        if self._agreement is not None:
            self._agreement.close()

    # -------------------------------------------------------------- requests
    def _on_signal(self, signum: int) -> None:
        """In the signal handler: ask the native loop to stop at the next boundary."""
        schedule = self.trainer._schedule
        if self._agreement is not None and (self._agreement.stop_step is not None or not self._in_loop):
            return
        try:
            if schedule.stop_at_step is None:
                schedule.stop_at_step = schedule.global_step
        except RuntimeError:
            pass  # the schedule was busy (an error being built): the epoch boundary stops then

    def _on_agreed(self, step: int) -> None:
        """Another rank asked for the stop (the watcher thread)."""
        self.trainer._schedule.stop_at_step = step

    @property
    def requested(self) -> bool:
        return self.flags.stop_requested or (self._agreement is not None and self._agreement.stop_step is not None)

    # -------------------------------------------------------------- the loop's questions
    def enter_loop(self) -> None:
        """Before the native batch loop (re)starts: agree on a stop a signal asked for meanwhile."""
        self._in_loop = True
        if self._agreement is not None and self.flags.stop_requested:
            self._agree_on_step()

    def continue_epoch(self) -> bool:
        """The native loop returned. True when it stopped only for the ranks to agree on the
        stop step, and the epoch goes on up to that step."""
        self._in_loop = False
        if self._agreement is None or not self.requested:
            return False
        self._agree_on_step()
        if self.trainer._schedule.epoch_done():
            return False
        self._in_loop = True
        return True

    def _agree_on_step(self) -> None:
        agreement = self._agreement
        assert agreement is not None
        schedule = self.trainer._schedule
        step = agreement.stop_step
        if step is None:
            step = agreement.propose(schedule.global_step + 1)
        schedule.stop_at_step = step

    def stops_mid_epoch(self) -> bool:
        """After the epoch's batches: whether the fit stops here, before the epoch's end."""
        schedule = self.trainer._schedule
        return (self.requested and schedule.stop_step_reached() and not schedule.is_last_batch
                and not schedule.max_steps_reached())

    def agreed(self) -> bool:
        """At a boundary every rank reaches together (an epoch's end): whether the fit stops
        here. One all-reduce with several processes."""
        if self._agreement is None:
            return self.requested
        return self._agreement.any_rank(self.requested)

    # -------------------------------------------------------------- the stop
    def stop(self) -> None:
        """Write the checkpoint (durable before this returns), requeue under SLURM, raise
        SIGTERMException."""
        from ferrotrain.trainer import checkpointing

        trainer = self.trainer
        signum = self.flags.received
        name = signal.Signals(signum).name if signum is not None else "a stop signal on another rank"
        # Every rank asks the same folder before rank zero writes (the save starts with a barrier).
        path = hpc_save_path(os.fspath(trainer.default_root_dir))
        checkpointing.wait_for_writes(trainer)  # the checkpoints in flight first, complete
        trainer.save_checkpoint(path)
        requeue = self.auto_requeue and self.flags.requeue_requested
        rank_zero_info(
            f"Received {name}: stopped after global step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"checkpoint saved to {path}. Resume with `fit(ckpt_path=\"last\")`"
            + (" (a SLURM requeue resumes it by itself)." if requeue else ".")
        )
        if requeue and trainer.is_global_zero:
            _requeue()
        raise SIGTERMException()


def _store_client() -> Any:
    """A new connection to the run's TCPStore (`MASTER_ADDR:MASTER_PORT`, which every launcher
    sets: ours, torchrun, SLURM's through the environment)."""
    import torch.distributed as dist

    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=datetime.timedelta(minutes=5), wait_for_workers=False)


def _requeue() -> None:
    job = os.environ.get("SLURM_JOB_ID", "")
    try:
        code = requeue_job()
    except (OSError, RuntimeError) as exc:
        rank_zero_warn(f"Requeuing SLURM job {job} failed: {exc}")
        return
    if code == 0:
        rank_zero_info(f"Requeued SLURM job: {job}")
    else:
        rank_zero_warn(f"Requeuing SLURM job {job} failed with error code {code}")


# ---------------------------------------------------------------------- several processes
class _StopAgreement:
    """The ranks' agreement on the step after which the fit stops (see the module doc).

    Keys, under a prefix per fit: `claim` (the proposed step; the first proposal wins),
    `stop/<rank>` (the agreed step, or `quit` once that rank's fit is over), `ack/<rank>`
    (that rank knows the step). Each rank's watcher thread waits on its `stop/<rank>` key."""

    _fits = 0  # fits run in this process: every rank runs the same ones, so prefixes match

    def __init__(self, trainer: Any, on_agreed: Any) -> None:
        import torch.distributed as dist

        type(self)._fits += 1
        # Two connections of our own to the run's store: one client's `wait` blocks every other
        # call on that client, and the watcher waits while the training thread proposes.
        self._store = _store_client()
        self._watch_store = _store_client()
        self._rank = dist.get_rank()
        self._world = dist.get_world_size()
        self._prefix = f"ferrotrain/preempt/{type(self)._fits}/"
        self._timeout = getattr(trainer.strategy, "timeout", None) or datetime.timedelta(minutes=30)
        self._on_agreed = on_agreed
        self.stop_step: Optional[int] = None
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _key(self, kind: str, rank: Optional[int] = None) -> str:
        return self._prefix + (kind if rank is None else f"{kind}/{rank}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="ft-preempt-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        key = self._key("stop", self._rank)
        try:
            while not self._closed.is_set():
                try:
                    # Waiting releases the GIL: the training thread runs on meanwhile.
                    self._watch_store.wait([key], datetime.timedelta(days=1))
                except Exception:  # noqa: BLE001 - the wait timed out: wait again
                    if self._closed.is_set():
                        return
                    continue
                value = self._watch_store.get(key).decode()
                if value == "quit":
                    return
                self._take(int(value))
                self._watch_store.set(self._key("ack", self._rank), "1")
                return
        except Exception:  # noqa: BLE001 - the store went away with the process group: the run is over
            return

    def _take(self, step: int) -> None:
        if self.stop_step is None:
            self.stop_step = step
            self._on_agreed(step)

    def propose(self, step: int) -> int:
        """Agree on `step` (or on an earlier proposal of another rank); returns once every rank
        still training knows the agreed step."""
        agreed = int(self._store.compare_set(self._key("claim"), "", str(step)).decode())
        self._take(agreed)
        waiting = []
        for rank in range(self._world):
            if self._settle(self._key("stop", rank), str(agreed)) != "quit":
                waiting.append(self._key("ack", rank))
        self._store.wait(waiting, self._timeout)
        return agreed

    def _settle(self, key: str, value: str) -> str:
        """Set `key` to `value` unless it holds a value already; returns what it holds. The
        plain `set` after the atomic one wakes the key's waiters (`compare_set` does not)."""
        held = self._store.compare_set(key, "", value).decode()
        if held == value:
            self._store.set(key, value)
        return held

    def any_rank(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        from ferrotrain.trainer.stop_sync import _cpu_group

        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, dist.ReduceOp.SUM, group=_cpu_group())
        return bool(t.item() > 0)

    def close(self) -> None:
        self._closed.set()
        try:
            self._settle(self._key("stop", self._rank), "quit")
        except Exception:  # noqa: BLE001 - no store any more: the daemon watcher ends with it
            return
        if self._thread is not None:
            self._thread.join(timeout=5.0)
