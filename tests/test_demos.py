"""`demos.boring_classes`, which users' own test suites import: the same runs as Lightning's
(losses after a seeded fit, what each datamodule split holds), cross-checked with FERROTRAIN_CROSSCHECK=1."""

import importlib

import torch

from tests.lightning_ref import QUIET, check, is_lightning


def demos(L):
    return importlib.import_module("lightning.pytorch.demos.boring_classes" if is_lightning(L) else
                                   "ferrotrain.demos.boring_classes")


def test_boring_model_fits_as_lightnings():
    def scenario(L):
        d = demos(L)
        runs = []
        for cls in (d.BoringModel, d.ManualOptimBoringModel, d.DemoModel):
            torch.manual_seed(0)
            model = cls()
            trainer = L.Trainer(max_steps=3, limit_val_batches=2, **QUIET)
            torch.manual_seed(1)
            trainer.fit(model, torch.utils.data.DataLoader(d.RandomDataset(32, 64)))
            runs.append([trainer.global_step, round(float(sum(p.detach().sum() for p in model.parameters())), 4)])
        return runs
    check(scenario, [[3, -2.0264], [3, -2.0264], [3, 0.351]], rel=1e-3)


def test_boring_datamodule_splits():
    def scenario(L):
        d = demos(L)
        dm = d.BoringDataModule()
        sizes = []
        for stage, attr in (("fit", "random_train"), ("validate", "random_val"), ("test", "random_test"),
                            ("predict", "random_predict")):
            dm.setup(stage)
            sizes.append(len(getattr(dm, attr)))
        item = d.RandomDictDataset(3, 2)[0]
        return [sizes, sorted(item), torch.equal(item["b"], item["a"] + 2),
                len(list(d.RandomIterableDataset(4, 5))), len(d.RandomIterableDatasetWithLen(4, 5))]
    check(scenario, [[64, 64, 64, 64], ["a", "b"], True, 5, 5])
