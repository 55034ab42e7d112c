"""Tests for `ferrotrain.data.Prefetcher`: order, completeness and `is_last` for every kind of
source, errors raised where they happened, and that no thread outlives `close()` (checked on the
OS thread list, not only through `is_alive()`)."""

from __future__ import annotations

import _thread
import gc
import itertools
import os
import sys
import threading
import time
import traceback
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ferrotrain.data import Prefetcher
from ferrotrain.errors import LoopStateError, MisconfigurationException

DEPTHS = [0, 1, 2, 5]
FORK = "fork"
# Python 3.12+ warns when forking a multi-threaded process; forking with our thread alive is
# exactly what the fork tests exercise.
fork_warning = pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning")
needs_fork = pytest.mark.skipif(sys.platform != "linux", reason="fork start method and /proc")


def prefetch_threads() -> int:
    """How many of the native core's prefetch threads exist in this process (from the OS)."""
    count = 0
    for comm in Path("/proc/self/task").glob("*/comm"):
        try:
            count += comm.read_text().strip() == "ft-prefetch"
        except OSError:  # the thread exited between listing and reading
            pass
    return count


def settled_threads(expected: int, timeout: float = 2.0) -> int:
    """The prefetch thread count once it equals `expected`, or after `timeout`: a joined thread
    can linger in /proc for a moment, and a new one names itself once it runs."""
    deadline = time.monotonic() + timeout
    while (count := prefetch_threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


@pytest.fixture(autouse=True)
def no_thread_left():
    if not Path("/proc/self/task").exists():
        yield
        return
    before = settled_threads(0)
    yield
    if settled_threads(before, timeout=0.5) != before:
        gc.collect()  # a prefetcher kept alive by a reference cycle
    assert settled_threads(before) == before, "a prefetch thread outlived its test"


def drain(p: Prefetcher) -> list:
    out = []
    while (got := p.fetch()) is not None:
        out.append(got)
    return out


def flags(n: int) -> list[bool]:
    return [i == n - 1 for i in range(n)]


def counting(n: int, reads: list):
    """An unsized source that records each read."""
    for i in range(n):
        reads.append(i)
        yield i


class SizedCounting:
    """A sized source that records each read."""

    def __init__(self, n: int, reads: list) -> None:
        self.n, self.reads = n, reads

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return counting(self.n, self.reads)


# ---- order, completeness, is_last ----


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("n", [0, 1, 2, 9])
def test_list_order_and_is_last(depth, n):
    src = [object() for _ in range(n)]
    p = Prefetcher(src, depth=depth)
    assert len(p) == n
    got = drain(p)
    assert [b for b, _ in got] == src
    assert [last for _, last in got] == flags(n)
    assert p.fetch() is None  # stays exhausted
    assert not p.is_alive()


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("n", [0, 1, 2, 9])
def test_generator_order_and_is_last(depth, n):
    p = Prefetcher((i * 10 for i in range(n)), depth=depth)
    with pytest.raises(TypeError, match="no len"):
        len(p)
    assert bool(p)
    got = list(p)  # the iteration protocol yields the same pairs as fetch()
    assert got == [(i * 10, last) for i, last in zip(range(n), flags(n))]
    assert not p.is_alive()


class Squares(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {"x": torch.tensor([float(i)]), "y": torch.tensor([float(i * i)])}


class Stream(IterableDataset):
    """Unsized; each worker yields its own share, so the loader's order interleaves them."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, self.n, step):
            yield torch.tensor([float(i)])


def same_batches(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def check_against_loader(loader: DataLoader, depth: int = 2) -> None:
    want = list(loader)
    p = Prefetcher(loader, depth=depth)
    got = drain(p)
    assert len(got) == len(want)
    assert all(same_batches(g, w) for (g, _), w in zip(got, want))
    assert [last for _, last in got] == flags(len(want))
    assert not p.is_alive()


@pytest.mark.parametrize("depth", [0, 2])
def test_dataloader_map_style(depth):
    loader = DataLoader(Squares(10), batch_size=3)
    assert len(Prefetcher(loader, depth=depth)) == 4
    check_against_loader(loader, depth)


@pytest.mark.parametrize("depth", [0, 2])
def test_dataloader_iterable(depth):
    check_against_loader(DataLoader(Stream(10), batch_size=4), depth)


@needs_fork
@fork_warning
@pytest.mark.parametrize("dataset", [Squares(13), Stream(13)], ids=["map", "iterable"])
def test_dataloader_with_workers(dataset):
    check_against_loader(DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context=FORK))


@needs_fork
@fork_warning
def test_fork_workers_two_epochs():
    loader = DataLoader(Squares(12), batch_size=3, num_workers=2, multiprocessing_context=FORK)
    want = [i * i for i in range(12)]
    for _ in range(2):
        with Prefetcher(loader) as p:
            got = drain(p)
        assert [last for _, last in got] == flags(4)
        assert [int(v) for b, _ in got for v in b["y"].flatten()] == want
        assert not p.is_alive()


@needs_fork
@fork_warning
def test_fork_from_the_producer_thread_while_another_prefetcher_runs():
    # The workers of the second loader are forked from a prefetch thread (the generator calls
    # iter(loader) on its first next()), while the first prefetcher's thread holds its queue.
    loader = DataLoader(Squares(8), batch_size=2, num_workers=2, multiprocessing_context=FORK)
    busy = Prefetcher(itertools.count(), depth=2)
    assert busy.fetch() == (0, False)
    p = Prefetcher((b for b in loader), depth=2)
    got = drain(p)
    assert [int(v) for b, _ in got for v in b["x"].flatten()] == list(range(8))
    assert busy.fetch() == (1, False)
    busy.close()
    assert not busy.is_alive()


@needs_fork
@fork_warning
def test_an_inherited_prefetcher_in_a_forked_child_neither_hangs_nor_reads():
    p = Prefetcher(itertools.count(), depth=2)
    assert p.fetch() == (0, False)
    pid = os.fork()
    if pid == 0:  # the child: the producer thread does not exist here
        code = 1
        try:
            try:
                p.fetch()
            except LoopStateError:
                p.close()  # must not wait for that thread
                code = 0 if p.fetch() is None else 2
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        assert os.waitstatus_to_exitcode(done[1]) == 0
        assert p.fetch() == (1, False)  # the parent's prefetcher is untouched
    finally:
        p.close()


Point = namedtuple("Point", ["x", "y"])


@dataclass
class Pair:
    a: torch.Tensor
    b: list


@pytest.mark.parametrize("depth", [0, 2])
def test_nested_batches_pass_through_as_the_same_objects(depth):
    src = [
        {"x": torch.zeros(2), "meta": {"ids": [1, 2]}},
        Point(torch.ones(1), (torch.zeros(1), "s")),
        Pair(torch.arange(3), [torch.ones(2)]),
    ]
    got = drain(Prefetcher(src, depth=depth))
    assert all(g is s for (g, _), s in zip(got, src)) and len(got) == 3


# ---- read-ahead ----


@pytest.mark.parametrize("sized", [True, False])
@pytest.mark.parametrize("depth", [1, 3])
def test_reads_ahead_by_depth_and_no_further(depth, sized):
    reads: list[int] = []
    src = SizedCounting(50, reads) if sized else counting(50, reads)
    ahead = depth + (0 if sized else 1)  # without len(), one more to know is_last
    with Prefetcher(src, depth=depth) as p:
        for delivered in range(1, 4):
            assert p.fetch() == (delivered - 1, False)
            deadline = time.monotonic() + 5
            while len(reads) < delivered + ahead and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.05)  # give an over-eager producer the chance to read more
            assert len(reads) == delivered + ahead


@pytest.mark.parametrize("sized", [True, False])
def test_depth_zero_reads_on_demand_without_a_thread(sized):
    reads: list[int] = []
    p = Prefetcher(SizedCounting(3, reads) if sized else counting(3, reads), depth=0)
    time.sleep(0.05)
    assert not p.is_alive() and prefetch_threads() == 0
    assert p.fetch() == (0, False)
    assert reads == ([0] if sized else [0, 1])  # look-ahead of one only without len()
    assert drain(p) == [(1, False), (2, True)]


def test_negative_depth_is_a_misconfiguration():
    with pytest.raises(MisconfigurationException, match="depth"):
        Prefetcher([1], depth=-1)


# ---- errors ----


class LoaderError(Exception):
    pass


def explode_in_loader(i):
    raise LoaderError(f"bad batch {i}")


def failing_source(n_ok: int):
    for i in itertools.count():
        if i == n_ok:
            explode_in_loader(i)
        yield i


class FailingDataset(Squares):
    def __getitem__(self, i):
        if i == 5:
            explode_in_loader(i)
        return super().__getitem__(i)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_loader_exception_is_raised_at_its_batch_with_its_traceback(depth):
    p = Prefetcher(failing_source(3), depth=depth)
    assert [p.fetch() for _ in range(3)] == [(0, False), (1, False), (2, False)]
    with pytest.raises(LoaderError, match="bad batch 3") as excinfo:
        p.fetch()
    text = "".join(traceback.format_exception(excinfo.type, excinfo.value, excinfo.tb))
    assert "explode_in_loader" in text and "failing_source" in text
    assert not p.is_alive()
    assert p.fetch() is None


@pytest.mark.parametrize("depth", [0, 2])
def test_dataloader_exception_arrives_after_the_good_batches(depth):
    p = Prefetcher(DataLoader(FailingDataset(10), batch_size=2), depth=depth)
    assert [last for _, last in (p.fetch(), p.fetch())] == [False, False]
    with pytest.raises(LoaderError) as excinfo:
        p.fetch()
    assert "explode_in_loader" in "".join(traceback.format_tb(excinfo.tb))
    assert not p.is_alive()


@pytest.mark.parametrize("depth", [0, 2])
def test_keyboard_interrupt_from_the_loader(depth):
    def interrupted():
        yield 0
        raise KeyboardInterrupt

    p = Prefetcher(interrupted(), depth=depth)
    assert p.fetch() == (0, False)
    with pytest.raises(KeyboardInterrupt):
        p.fetch()
    assert not p.is_alive()


def test_ctrl_c_while_waiting_stops_and_joins():
    release = threading.Event()

    def slow():
        release.wait(timeout=1.0)  # the item being read when Ctrl-C comes
        yield 0

    p = Prefetcher(slow(), depth=2)
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            p.fetch()
    finally:
        timer.join()
    assert not p.is_alive()
    assert p.fetch() is None


# ---- stopping ----


def test_close_mid_epoch_joins_the_thread():
    p = Prefetcher(itertools.count(), depth=2)
    assert p.is_alive() and settled_threads(1) == 1
    assert [p.fetch() for _ in range(3)] == [(0, False), (1, False), (2, False)]
    p.close()
    assert not p.is_alive()
    assert p.fetch() is None
    p.close()  # idempotent


def test_close_while_the_producer_is_inside_next_waits_for_that_item():
    inside = threading.Event()
    reads = []

    def blocking():
        for i in itertools.count():
            inside.set()
            time.sleep(0.3)
            reads.append(i)
            yield i

    p = Prefetcher(blocking(), depth=1)
    assert inside.wait(5)
    p.close()  # returns once the item being read is done; no deadlock
    assert not p.is_alive()
    assert len(reads) == 1


def test_consumer_exception_inside_with_closes():
    with pytest.raises(RuntimeError, match="step failed"):
        with Prefetcher(itertools.count(), depth=2) as p:
            for batch, _ in p:
                if batch == 2:
                    raise RuntimeError("step failed")
    assert not p.is_alive()


def test_dropping_the_prefetcher_joins_the_thread():
    p = Prefetcher(itertools.count(), depth=2)
    p.fetch()
    assert settled_threads(1) == 1
    del p  # the last reference: no gc.collect() needed
    assert settled_threads(0) == 0


def test_waiting_consumer_releases_the_gil():
    # The producer needs the GIL to run this pure-Python loader; if the consumer held it while
    # waiting, this would never finish.
    def busy():
        for i in range(3):
            total = 0
            for k in range(200_000):
                total += k
            yield total + i

    assert [b for b, _ in Prefetcher(busy(), depth=1)] == [19999900000, 19999900001, 19999900002]
