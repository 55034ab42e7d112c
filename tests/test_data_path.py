"""The data path through the real Trainer: the three batch transfer hooks (module and datamodule),
prefetching during `fit` (same results on and off, errors, stopping, DataLoader workers),
`trainer.prefetch_batches`, and `accelerator`/`devices` against the hardware present. The CUDA
path (pinned memory, copies one batch ahead on a side stream) runs only where a GPU is present."""

from __future__ import annotations

import sys
import time
import traceback
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import ferrotrain as L
from ferrotrain.errors import ConfigTypeError, MisconfigurationException, NotSupportedYetError
from ferrotrain.trainer import accelerators, device_feed
from ferrotrain.loops.fetch import PROBE_BATCHES, TrainFetcher

from .conftest import BoringModel, make_dataset

needs_proc = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads through /proc")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def prefetch_threads() -> int:
    """The native prefetch threads alive in this process, from the OS thread list."""
    count = 0
    for comm in Path("/proc/self/task").glob("*/comm"):
        try:
            count += comm.read_text().strip() == "ft-prefetch"
        except OSError:
            pass
    return count


def no_prefetch_thread_left(timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return prefetch_threads() == 0


class SlowDataset(Dataset):
    """Items whose reading waits without the GIL (like disk reads), so `fit` prefetches them.
    `fail_at`: the index whose read raises."""

    def __init__(self, n: int = 24, fail_at: int = -1, sleep: float = 0.002) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randn(n, 1, generator=g)
        self.fail_at = fail_at
        self.sleep = sleep

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        time.sleep(self.sleep)
        if i == self.fail_at:
            raise LookupError(f"item {i} is unreadable")
        return self.x[i], self.y[i]


class ThreadWatch(BoringModel):
    """Records, per training batch, whether a prefetch thread was running."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: List[int] = []
        self.seen: List[int] = []

    def training_step(self, batch, batch_idx):
        self.threads.append(prefetch_threads())
        self.seen.append(batch_idx)
        return super().training_step(batch, batch_idx)


def params(model: torch.nn.Module) -> List[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------------- transfer hooks
class TransferRecorder(BoringModel):
    """Overrides the three transfer hooks; each tags the batch so the next can check what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Any] = []

    def _stage(self) -> str:
        t = self.trainer
        return "train" if t.training else "val" if t.validating else "test" if t.testing else "predict"

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls.append(("before", self._stage(), dataloader_idx))
        return {"x": batch[0], "y": batch[1], "tags": ["before"]}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        assert batch["tags"] == ["before"] and device == self.trainer.strategy.root_device
        self.calls.append(("transfer", self._stage(), dataloader_idx))
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        batch["tags"].append("transfer")
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        assert batch["tags"] == ["before", "transfer"]
        self.calls.append(("after", self._stage(), dataloader_idx))
        return (batch["x"], batch["y"])

    def training_step(self, batch, batch_idx):
        self.calls.append(("step", "train", 0))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("step", "val", dataloader_idx))
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("step", "test", dataloader_idx))
        return super().test_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("step", "predict", dataloader_idx))
        return self(batch[0])


def per_batch(stage: str, idx: int) -> List[Any]:
    return [("before", stage, idx), ("transfer", stage, idx), ("after", stage, idx), ("step", stage, idx)]


def test_transfer_hooks_run_in_order_with_the_dataloader_index(quiet) -> None:
    ds = make_dataset(16)
    train, val_a, val_b = DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=8)
    model = TransferRecorder()
    trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=0, **quiet)
    trainer.fit(model, train, [val_a, val_b])
    expected = per_batch("train", 0) * 2 + per_batch("val", 0) + per_batch("val", 1) * 2
    assert model.calls == expected

    model.calls.clear()
    trainer.test(model, [val_b, val_a], verbose=False)
    assert model.calls == per_batch("test", 0) * 2 + per_batch("test", 1)

    model.calls.clear()
    out = trainer.predict(model, [val_a, val_b])
    assert model.calls == per_batch("predict", 0) + per_batch("predict", 1) * 2
    assert [len(o) for o in out] == [1, 2]


class DataWithBefore(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.calls: List[str] = []

    def train_dataloader(self):
        return DataLoader(make_dataset(16), batch_size=8)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls.append(f"dm.before:{dataloader_idx}")
        return [batch[0] * 0, batch[1] * 0]  # visible in the step: all zeros


class ModuleWithBeforeAndAfter(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.calls: List[str] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls.append("module.before")
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.calls.append(f"module.after:{type(batch).__name__}")
        return batch

    def training_step(self, batch, batch_idx):
        assert not batch[0].any(), "the datamodule's on_before_batch_transfer did not run"
        return super().training_step(batch, batch_idx)


def test_datamodule_transfer_hooks_win_over_the_module_s_with_lightning_s_warnings(quiet) -> None:
    model, dm = ModuleWithBeforeAndAfter(), DataWithBefore()
    trainer = L.Trainer(max_epochs=1, **quiet)
    with pytest.warns(UserWarning) as record:
        trainer.fit(model, datamodule=dm)
    messages = [str(w.message) for w in record]
    assert any("`on_before_batch_transfer` in both `LightningModule` and `LightningDataModule`" in m for m in messages)
    assert any("`on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`" in m
               for m in messages)
    assert dm.calls == ["dm.before:0"] * 2
    # The module's on_before never ran; its on_after got the datamodule's list.
    assert model.calls == ["module.after:list"] * 2


Pair = namedtuple("Pair", ["x", "y"])


@dataclass
class Sample:
    pair: Pair
    extra: dict
    name: str
    count: int = 3


class NestedBatches(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        x, y = torch.full((4,), float(i)), torch.full((1,), float(i))
        return x, y


def nested_collate(items):
    x = torch.stack([a for a, _ in items])
    y = torch.stack([b for _, b in items])
    return Sample(Pair(x, y), {"w": [y * 2, (x, "tag")], "n": 7}, "sample")


class MetaMover(BoringModel):
    """Moves each batch to the meta device with the default transfer (the recursive move),
    records what came out, and trains on the original batch."""

    def __init__(self) -> None:
        super().__init__()
        self.moved: List[Any] = []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.moved.append(super().transfer_batch_to_device(batch, torch.device("meta"), dataloader_idx))
        return batch

    def training_step(self, batch, batch_idx):
        return super().training_step((batch.pair.x, batch.pair.y), batch_idx)


def test_nested_batches_are_moved_recursively_keeping_their_types(quiet) -> None:
    model = MetaMover()
    L.Trainer(max_epochs=1, **quiet).fit(model, DataLoader(NestedBatches(), batch_size=2, collate_fn=nested_collate))
    assert len(model.moved) == 2
    for b in model.moved:
        assert type(b) is Sample and type(b.pair) is Pair
        assert b.pair.x.device.type == "meta" and b.pair.y.device.type == "meta" and b.pair.x.shape == (2, 4)
        assert type(b.extra["w"]) is list and b.extra["w"][0].device.type == "meta"
        assert type(b.extra["w"][1]) is tuple and b.extra["w"][1][0].device.type == "meta"
        assert b.extra["w"][1][1] == "tag" and b.extra["n"] == 7 and b.name == "sample" and b.count == 3


def test_map_tensors_keeps_every_container_type() -> None:
    batch = Sample(Pair(torch.ones(2), torch.zeros(1)), {"k": [torch.ones(1), ("s", torch.ones(3))]}, "n")
    out = device_feed.map_tensors(batch, lambda t: t + 1)
    assert type(out) is Sample and type(out.pair) is Pair and out.name == "n"
    assert out.pair.x.tolist() == [2.0, 2.0] and out.extra["k"][1][0] == "s"
    assert out.extra["k"][1][1].tolist() == [2.0, 2.0, 2.0]
    assert batch.pair.x.tolist() == [1.0, 1.0], "the input batch must not change"
    assert [t.tolist() for t in device_feed.iter_tensors(batch)] == [[1.0, 1.0], [0.0], [1.0], [1.0, 1.0, 1.0]]


# ---------------------------------------------------------------------- prefetching through fit
@needs_proc
def test_prefetching_on_and_off_gives_the_same_parameters(quiet) -> None:
    results = {}
    for depth in (2, 0):
        torch.manual_seed(0)
        model = ThreadWatch()
        trainer = L.Trainer(max_epochs=2, **quiet)
        trainer.prefetch_batches = depth
        trainer.fit(model, DataLoader(SlowDataset(), batch_size=None))
        results[depth] = (params(model), model.threads)
        assert no_prefetch_thread_left()
    (p_on, threads_on), (p_off, threads_off) = results[2], results[0]
    assert all(torch.equal(a, b) for a, b in zip(p_on, p_off))
    # The first batches of each epoch are read in the main thread; the rest came from the thread.
    # (The thread ends once it read the last item, so the last steps may run without it.)
    per_epoch = len(threads_on) // 2
    for epoch in threads_on[:per_epoch], threads_on[per_epoch:]:
        # Two waiting reads of three decide: the thread starts once batch 1 was read.
        assert epoch[0] == 0
        assert epoch[2:12] == [1] * 10
    assert threads_off == [0] * len(threads_off)


class Unsized(IterableDataset):
    """`SlowDataset`'s items without a length (the loop learns the last batch by reading ahead)."""

    def __init__(self, ds: SlowDataset) -> None:
        self.ds = ds

    def __iter__(self):
        for i in range(len(self.ds)):
            yield self.ds[i]


@needs_proc
@pytest.mark.parametrize("sized", [True, False])
@pytest.mark.parametrize("depth", [2, 0])
def test_a_loader_exception_surfaces_from_fit_with_its_type_and_traceback(quiet, depth, sized) -> None:
    model = ThreadWatch()
    fail_at = PROBE_BATCHES + 6  # read by the prefetch thread when there is one
    ds = SlowDataset(fail_at=fail_at)
    trainer = L.Trainer(max_epochs=1, **quiet)
    trainer.prefetch_batches = depth
    with pytest.raises(LookupError, match=f"item {fail_at} is unreadable") as info:
        trainer.fit(model, DataLoader(ds if sized else Unsized(ds), batch_size=None))
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "__getitem__" in frames
    assert model.seen == list(range(fail_at)), "raised at the batch where it happened"
    assert max(model.threads) == (1 if depth else 0)
    assert no_prefetch_thread_left()


class StopAt(ThreadWatch):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def training_step(self, batch, batch_idx):
        if batch_idx == 8 and self.how == "raise":
            raise RuntimeError("step failed")
        if batch_idx == 8 and self.how == "interrupt":
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if batch_idx == 8 and self.how == "should_stop":
            self.trainer.should_stop = True


@needs_proc
@pytest.mark.parametrize("how", ["max_steps", "should_stop", "raise", "interrupt"])
def test_stopping_mid_epoch_leaves_no_prefetch_thread(quiet, how) -> None:
    model = StopAt(how)
    trainer = L.Trainer(max_epochs=3, max_steps=9 if how == "max_steps" else -1, **quiet)
    loader = DataLoader(SlowDataset(n=40), batch_size=None)
    if how == "raise":
        with pytest.raises(RuntimeError, match="step failed"):
            trainer.fit(model, loader)
    elif how == "interrupt":
        with pytest.raises(SystemExit):  # KeyboardInterrupt: Lightning's graceful shutdown, then exit
            trainer.fit(model, loader)
    else:
        trainer.fit(model, loader)
    assert max(model.threads) == 1, "the prefetcher was running when the loop stopped"
    # Batch 8 is the last: trained on (max_steps, should_stop), or its step raised.
    assert model.seen == list(range(9 if how in ("max_steps", "should_stop") else 8))
    assert trainer.interrupted == (how in ("raise", "interrupt"))
    assert no_prefetch_thread_left()


@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning")
def test_dataloader_workers_fork_through_fit(quiet) -> None:
    results = []
    for workers in (2, 0):
        torch.manual_seed(0)
        model = ThreadWatch()
        kw = dict(num_workers=workers, multiprocessing_context="fork") if workers else {}
        loader = DataLoader(SlowDataset(n=16, sleep=0.001), batch_size=2, **kw)
        L.Trainer(max_epochs=2, **quiet).fit(model, loader)
        results.append((params(model), model.seen))
    (p_workers, seen_workers), (p_main, seen_main) = results
    assert seen_workers == seen_main == list(range(8)) * 2
    assert all(torch.equal(a, b) for a, b in zip(p_workers, p_main))
    if Path("/proc/self/task").exists():
        assert no_prefetch_thread_left()


# ---------------------------------------------------------------------- prefetch_batches
def test_prefetch_batches_is_an_attribute_with_a_checked_value(tmp_path) -> None:
    trainer = L.Trainer(default_root_dir=str(tmp_path), logger=False)
    assert trainer.prefetch_batches == 2
    trainer.prefetch_batches = 5
    assert trainer.prefetch_batches == 5
    with pytest.raises(MisconfigurationException, match="prefetch_batches.*>= 0.*-1"):
        trainer.prefetch_batches = -1
    for bad in (1.5, True, "2", None):
        with pytest.raises(ConfigTypeError, match="prefetch_batches"):
            trainer.prefetch_batches = bad
    assert trainer.prefetch_batches == 5
    # Not a constructor argument: the constructor keeps Lightning's signature.
    with pytest.raises(TypeError, match="prefetch_batches"):
        L.Trainer(prefetch_batches=2)


@needs_proc
@pytest.mark.parametrize("setting,threads", [(1, 1), (0, 0), ("deterministic", 0)])
def test_prefetch_batches_sets_whether_fit_prefetches(quiet, setting, threads) -> None:
    model = ThreadWatch()
    trainer = L.Trainer(max_epochs=1, deterministic=setting == "deterministic", **quiet)
    if setting != "deterministic":
        trainer.prefetch_batches = setting
    trainer.fit(model, DataLoader(SlowDataset(n=12), batch_size=None))
    assert max(model.threads) == threads
    assert no_prefetch_thread_left()


class Reads(Dataset):
    """Items whose read either waits (sleeps, GIL free) or computes (a Python busy loop)."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        if self.how == "wait":
            time.sleep(0.002)
        else:
            end = time.thread_time() + 0.0005
            while time.thread_time() < end:
                pass
        return i


@pytest.mark.parametrize("how,prefetches", [("wait", True), ("compute", False)])
def test_the_probe_prefetches_reads_that_wait_and_not_reads_that_compute(how, prefetches) -> None:
    fetcher = TrainFetcher(DataLoader(Reads(how), batch_size=None), 8, depth=2)
    got = [fetcher.fetch() for _ in range(PROBE_BATCHES)]
    assert fetcher.prefetching == prefetches
    while (item := fetcher.fetch()) is not None:
        got.append(item)
    fetcher.close()
    assert got == [(i, i == 7) for i in range(8)]


def test_forced_prefetch_starts_with_the_first_batch_and_keeps_order() -> None:
    for loader in (list(range(7)), (i for i in range(7))):
        fetcher = TrainFetcher(loader, 7 if isinstance(loader, list) else float("inf"), depth=2, probe=0)
        assert fetcher.prefetching
        got = []
        while (item := fetcher.fetch()) is not None:
            got.append(item)
        fetcher.close()
        assert got == [(i, i == 6) for i in range(7)]


# ---------------------------------------------------------------------- accelerators and devices
def test_auto_accelerator_picks_the_cpu_here(quiet) -> None:
    if torch.cuda.is_available() or accelerators._mps_available() or accelerators._tpu_available():
        pytest.skip("an accelerator is present")
    trainer = L.Trainer(max_epochs=1, **quiet)
    assert trainer.accelerator == "cpu" and trainer.strategy.root_device == torch.device("cpu")
    assert trainer.device_ids == [0] and trainer.num_devices == 1
    model = BoringModel()
    trainer.fit(model, DataLoader(make_dataset(16), batch_size=8))
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize(
    "accelerator,words",
    [
        ("gpu", ["accelerator='gpu'", "CUDA", "MPS", "found neither"]),
        ("cuda", ["accelerator='cuda'", "torch.cuda.is_available()"]),
        ("mps", ["accelerator='mps'", "torch.backends.mps.is_available()"]),
        ("tpu", ["accelerator='tpu'", "`torch_xla` package", "not installed"]),
    ],
)
def test_an_unavailable_accelerator_says_what_is_missing(accelerator, words) -> None:
    present = {
        "gpu": torch.cuda.is_available() or accelerators._mps_available(),
        "cuda": torch.cuda.is_available(),
        "mps": accelerators._mps_available(),
        "tpu": __import__("importlib").util.find_spec("torch_xla") is not None,
    }
    if present[accelerator]:
        pytest.skip(f"{accelerator} is present")
    with pytest.raises(MisconfigurationException) as info:
        L.Trainer(accelerator=accelerator)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
    assert not isinstance(info.value, NotSupportedYetError)


@pytest.mark.parametrize("devices", [1, "1", "auto", -1, [0], "0,"])
def test_cpu_devices_that_select_the_one_cpu(devices) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=devices, logger=False)
    assert trainer.strategy.root_device == torch.device("cpu")


@pytest.mark.parametrize(
    "devices,error,words",
    [
        ([1], MisconfigurationException, ["devices=[1]", "the CPU is one device"]),
        ([0, 1], MisconfigurationException, ["devices=[0, 1]"]),
    ],
)
def test_cpu_devices_beyond_the_one_cpu(devices, error, words) -> None:
    with pytest.raises(error) as info:
        L.Trainer(accelerator="cpu", devices=devices)
    for word in words:
        assert word in str(info.value)
    if error is MisconfigurationException:
        assert not isinstance(info.value, NotSupportedYetError)


@pytest.mark.parametrize(
    "devices,available,ids",
    [(1, 1, [0]), ("auto", 4, [0]), (-1, 3, [0, 1, 2]), (2, 2, [0, 1]), ([1, 3], 4, [1, 3])],
)
def test_device_indices_against_the_devices_present(devices, available, ids) -> None:
    assert accelerators.device_ids(devices, available, "CUDA") == ids


@pytest.mark.parametrize("devices,available", [(2, 1), ([0, 2], 2), ([5], 4), (-1, 0)])
def test_device_indices_beyond_the_devices_present(devices, available) -> None:
    with pytest.raises(MisconfigurationException, match=rf"asks for CUDA device\(s\).*this machine has {available}"):
        accelerators.device_ids(devices, available, "CUDA")


@needs_cuda
def test_cuda_devices_are_checked_against_the_gpus_present() -> None:
    count = torch.cuda.device_count()
    with pytest.raises(MisconfigurationException, match=f"this machine has {count}"):
        L.Trainer(accelerator="gpu", devices=[count])
    trainer = L.Trainer(accelerator="gpu", devices=[count - 1], logger=False)
    assert trainer.strategy.root_device == torch.device("cuda", count - 1)


# ---------------------------------------------------------------------- copy-ahead order (any device)
class RecordingCopy:
    """Stands in for the CUDA streams (absent here): records when each batch's copy is issued
    and handed over, relative to the steps, so the one-batch-ahead order can be checked."""

    def __init__(self, log: List[str]) -> None:
        self.log = log

    def issue(self, batch: Any) -> Any:
        self.log.append(f"issue {batch}")
        return batch

    def hand_over(self, batch: Any) -> Any:
        self.log.append(f"hand {batch}")
        return batch


def failing_source(n: int, fail_at: int):
    for i in range(n):
        if i == fail_at:
            raise LookupError(f"batch {i}")
        yield i


@pytest.mark.parametrize("sized", [True, False])
def test_copies_are_issued_one_batch_ahead_of_the_step(sized) -> None:
    log: List[str] = []
    source = TrainFetcher(list(range(4)) if sized else iter(range(4)), 4 if sized else float("inf"), depth=0)
    feeder = device_feed.AheadFeeder(source, RecordingCopy(log))
    got = []
    while (item := feeder.fetch()) is not None:
        log.append(f"step {item[0]}")
        got.append(item)
    assert got == [(0, False), (1, False), (2, False), (3, True)]
    assert log == ["issue 0", "hand 0", "issue 1", "step 0", "hand 1", "issue 2", "step 1",
                   "hand 2", "issue 3", "step 2", "hand 3", "step 3"]
    assert feeder.fetch() is None


def test_a_read_error_while_copying_ahead_is_raised_at_its_own_batch() -> None:
    log: List[str] = []
    feeder = device_feed.AheadFeeder(TrainFetcher(failing_source(5, 2), float("inf"), depth=0), RecordingCopy(log))
    assert feeder.fetch() == (0, False)
    assert feeder.fetch() == (1, False)  # batch 2's read failed meanwhile; batch 1 still arrives
    with pytest.raises(LookupError, match="batch 2"):
        feeder.fetch()
    assert feeder.fetch() is None
    feeder.close()


# ---------------------------------------------------------------------- CUDA (skipped without a GPU)
class SlowStep(BoringModel):
    """Delays the compute stream before reading each batch, so a missing stream sync or a batch
    whose memory is reused too early shows up as wrong sums."""

    def __init__(self) -> None:
        super().__init__()
        self.sums: List[float] = []

    def training_step(self, batch, batch_idx):
        torch.cuda._sleep(2_000_000)  # ~1 ms of GPU time queued before the batch is read
        self.sums.append(batch[0].double().sum())
        return super().training_step(batch, batch_idx)


class InlineSlowStep(SlowStep):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        # An overridden transfer hook keeps Lightning's order: no copy-ahead, batches moved inline.
        assert batch[0].is_cuda
        return batch


@needs_cuda
def test_cuda_fit_copies_ahead_with_the_same_result_as_inline_transfers(quiet) -> None:
    ds = make_dataset(256, seed=1)
    expected_sums = [float(ds.tensors[0][i:i + 8].double().sum()) for i in range(0, 256, 8)]
    runs = {}
    for name in ("ahead", "ahead-no-prefetch", "pinned-loader", "inline"):
        torch.manual_seed(0)
        model = InlineSlowStep() if name == "inline" else SlowStep()
        trainer = L.Trainer(accelerator="cuda", devices=1, max_epochs=2, **quiet)
        if name == "ahead-no-prefetch":
            trainer.prefetch_batches = 0
        loader = DataLoader(SlowDataset(n=256, sleep=0.0002) if name != "inline" else ds, batch_size=8,
                            pin_memory=name == "pinned-loader")
        if name != "inline":
            loader.dataset.x, loader.dataset.y = ds.tensors
        trainer.fit(model, loader)
        torch.cuda.synchronize()
        assert trainer._train_feeds_ahead() == (name != "inline")
        assert [float(s) for s in model.sums] == pytest.approx(expected_sums * 2, rel=1e-12), name
        runs[name] = [p.detach().cpu() for p in model.parameters()]
    for name, ps in runs.items():
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(ps, runs["inline"])), name


@needs_cuda
def test_cuda_feeder_hands_over_correct_batches_under_a_busy_compute_stream() -> None:
    n = 64
    batches = [torch.full((1 << 16,), float(i)) for i in range(n)]
    feeder = device_feed.AheadFeeder(TrainFetcher(device_feed.PinnedLoader(batches), n, depth=2),
                                     device_feed.CudaCopy(torch.device("cuda", 0)))
    sums = []
    while (item := feeder.fetch()) is not None:
        batch, _ = item
        assert batch.is_cuda
        torch.cuda._sleep(1_000_000)  # the step is still busy when the next copy is issued
        sums.append(batch.sum())
        del batch, item  # freed while the compute stream may still read it: record_stream guards it
    feeder.close()
    assert [float(s) for s in sums] == [float(i) * (1 << 16) for i in range(n)]
