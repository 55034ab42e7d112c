"""The direct read of TensorDataset batches gives what the DataLoader itself gives: the same
tensors (values, dtype, shape, strides) in the same list, the same order and random draws, the
same errors; and it is only taken where that holds."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import (BatchSampler, DataLoader, RandomSampler, Sampler, Subset, SubsetRandomSampler,
                              TensorDataset, WeightedRandomSampler, default_collate, random_split)

import ferrotrain as L
from tests import lightning_ref as ref
from ferrotrain.data.tensor_batches import TensorBatches, loader_batches


def _dataset(n: int = 50) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(
        torch.randn(n, 4, generator=g),
        torch.randint(0, 9, (n,), generator=g),
        torch.randn(n, 3, 2, 2, generator=g).to(torch.float16),
        torch.rand(n, 1, generator=g) > 0.5,
        torch.randn(n, 2, generator=g, dtype=torch.complex64),
        torch.randn(n, 1, 1, 1, generator=g).to(torch.bfloat16),
    )


def _assert_same_batches(loader: DataLoader, seed: int = 7) -> None:
    """One pass through the DataLoader and one through `loader_batches`, from the same random
    state: equal batches, and equal random states afterwards."""
    own = loader.generator.get_state() if loader.generator is not None else None
    torch.manual_seed(seed)
    expected = list(iter(loader))
    after_expected = torch.rand(3)
    torch.manual_seed(seed)
    if own is not None:
        loader.generator.set_state(own)
    got = list(loader_batches(loader))
    after_got = torch.rand(3)
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        assert type(have) is type(want) is list
        assert len(have) == len(want)
        for a, b in zip(want, have):
            assert b.dtype == a.dtype and b.shape == a.shape and b.stride() == a.stride()
            assert torch.equal(a, b)
    assert torch.equal(after_expected, after_got)


@pytest.mark.parametrize("kwargs", [
    dict(batch_size=8),
    dict(batch_size=8, drop_last=True),
    dict(batch_size=1),
    dict(batch_size=64),
    dict(batch_size=8, shuffle=True),
    dict(batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(11)),
    dict(batch_size=5, sampler=SubsetRandomSampler(list(range(0, 50, 3)))),
    dict(batch_size=6, sampler=WeightedRandomSampler(torch.rand(50).tolist(), num_samples=40, replacement=True)),
    dict(batch_sampler=BatchSampler(RandomSampler(range(50)), batch_size=9, drop_last=False)),
], ids=["sequential", "drop_last", "batch1", "one-batch", "shuffle", "shuffle-generator", "subset", "weighted",
        "batch-sampler"])
def test_batches_equal_the_dataloaders(kwargs):
    loader = DataLoader(_dataset(), **kwargs)
    assert isinstance(loader_batches(loader), TensorBatches)
    _assert_same_batches(loader)


def _splits():
    return random_split(_dataset(), [0.7, 0.3], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("make", [
    lambda: DataLoader(_splits()[0], batch_size=8),
    lambda: DataLoader(_splits()[1], batch_size=4, shuffle=True),
    lambda: DataLoader(Subset(_splits()[0], torch.tensor([5, 0, 3, 3, 20], dtype=torch.int32)), batch_size=2),
    lambda: DataLoader(Subset(_dataset(), range(10, 40, 2)), batch_size=3, shuffle=True),
], ids=["random-split", "random-split-shuffled", "nested-subset", "range-subset"])
def test_subsets_of_a_tensor_dataset_give_the_dataloaders_batches(make):
    loader = make()
    assert isinstance(loader_batches(loader), TensorBatches)
    _assert_same_batches(loader)


def test_subsets_with_indices_the_gather_refuses_give_the_dataloaders_batches_and_errors():
    ds = _dataset(10)
    _assert_same_batches(DataLoader(Subset(ds, [-1, 4, -10, 2]), batch_size=3))
    _assert_same_batches(DataLoader(Subset(Subset(ds, [9, 8, 7]), [-1, 0]), batch_size=2))
    loader = DataLoader(Subset(ds, [1, 2, 3, 10]), batch_size=2)
    with pytest.raises(IndexError) as expected:
        list(iter(loader))
    with pytest.raises(IndexError) as got:
        list(loader_batches(loader))
    assert str(got.value) == str(expected.value)


def test_a_batch_is_a_copy_so_changing_it_leaves_the_dataset_alone():
    ds = TensorDataset(torch.arange(12.0).reshape(6, 2))
    before = ds.tensors[0].clone()
    for batch in loader_batches(DataLoader(ds, batch_size=4)):
        batch[0].mul_(-1)
    assert torch.equal(ds.tensors[0], before)


class _Indices(Sampler):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_indices_the_gather_refuses_are_read_as_the_dataloader_reads_them():
    ds = _dataset(10)
    # Negative indices count from the end for the DataLoader's per-sample read.
    _assert_same_batches(DataLoader(ds, batch_sampler=_Indices([[-1, 0, -3], [2, 2]])))
    # 0-d tensors as indices.
    _assert_same_batches(DataLoader(ds, batch_sampler=_Indices([[torch.tensor(4), torch.tensor(1)]])))
    # Out of range: the DataLoader's own error.
    loader = DataLoader(ds, batch_sampler=_Indices([[1, 2], [3, 10]]))
    with pytest.raises(IndexError) as expected:
        list(iter(loader))
    with pytest.raises(IndexError) as got:
        list(loader_batches(loader))
    assert str(got.value) == str(expected.value)


class _OwnDataset(TensorDataset):
    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x * 2, y


class _OwnLoader(DataLoader):
    pass


@pytest.mark.parametrize("make", [
    lambda ds: DataLoader(_OwnDataset(*ds.tensors), batch_size=4),
    lambda ds: _OwnLoader(ds, batch_size=4),
    lambda ds: DataLoader(ds, batch_size=4, collate_fn=lambda items: default_collate(items)),
    lambda ds: DataLoader(ds, batch_size=None),
    lambda ds: DataLoader(TensorDataset(ds.tensors[0].t().contiguous().t(), ds.tensors[1]), batch_size=4),
    lambda ds: DataLoader(TensorDataset(ds.tensors[0].requires_grad_(), ds.tensors[1]), batch_size=4),
    lambda ds: DataLoader(Subset(_OwnDataset(*ds.tensors), [3, 1, 2]), batch_size=2),
], ids=["dataset-subclass", "loader-subclass", "own-collate", "no-batching", "non-contiguous", "requires-grad",
        "subset-of-subclass"])
def test_other_loaders_are_read_by_the_dataloader(make):
    ds = TensorDataset(torch.randn(10, 3), torch.arange(10))
    loader = make(ds)
    assert not isinstance(loader_batches(loader), TensorBatches)
    _assert_same_batches(loader)


def test_the_read_is_recorded_under_the_dataloaders_name_in_torchs_profiler():
    loader = DataLoader(_dataset(), batch_size=8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        n = sum(1 for _ in loader_batches(loader))
    names = [e.name for e in prof.events()]
    assert names.count("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__") == n


def _order_scenario(L):  # noqa: N803
    """What a user sees of the data order: per training batch the sum of x (which rows, in which
    order), for shuffled loaders over a TensorDataset and over a random_split Subset of one (and
    validation over the other split), the next random number after fit (every draw alike), and
    the dataset's sum after steps that zeroed their batches in place."""

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen.append(round(float(x.sum()), 4))
            loss = torch.nn.functional.mse_loss(self.layer(x.clone()), y)
            x.mul_(0)  # a step that changes its batch in place must not reach the dataset
            return loss

        def validation_step(self, batch, batch_idx):
            self.seen.append(-round(float(batch[0].sum()), 4))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g))
    L.seed_everything(3)
    train, val = random_split(ds, [16, 8])
    module = Module()
    trainer = ref.trainer(L, max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(train, batch_size=5, shuffle=True), DataLoader(val, batch_size=3))
    whole = Module()
    ref.trainer(L, max_epochs=1).fit(whole, DataLoader(ds, batch_size=7, shuffle=True))
    return module.seen, whole.seen, round(float(torch.rand(1)), 6), round(float(ds.tensors[0].sum()), 4)


def test_batch_order_random_draws_and_the_untouched_dataset_are_lightnings():
    ref.check(_order_scenario, (
        [7.354, 2.2579, 4.3602, -1.6884, -4.0965, 7.6184, 1.1092, 0.8115, 4.6739, 4.5714, 2.227, -4.0965, 7.6184,
         1.1092],
        [6.8666, -0.9856, -1.47, 3.2418],
        0.962303,
        7.6527,
    ))
