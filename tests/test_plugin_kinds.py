"""Each kind of `Trainer(plugins=...)` observed from user code: a precision plugin (the dtypes a
step sees), a CheckpointIO subclass (which of its methods the trainer calls, with which files) and a
layer sync (the layers a step runs). Pinned to Lightning 2.6's observations; FERROTRAIN_CROSSCHECK=1
reruns each scenario under Lightning."""

import importlib
import os

import torch

from tests.lightning_ref import QUIET, callbacks_module, check, is_lightning, loader, model_class


def plugins(L):
    return importlib.import_module("lightning.pytorch.plugins" if is_lightning(L) else "ferrotrain.plugins")


def seen_in_step(L, plugin, module=None):
    class Seen(model_class(L)):
        def training_step(self, batch, batch_idx):
            self.dtypes = sorted(str(p.dtype) for p in self.parameters())
            self.autocast = torch.is_autocast_enabled("cpu") and str(torch.get_autocast_dtype("cpu"))
            self.layers = sorted({type(m).__name__ for m in self.modules()} - {type(self).__name__})
            return super().training_step(batch, batch_idx)

    model = Seen()
    if module is not None:
        model.layer = module
    trainer = L.Trainer(plugins=[plugin], max_steps=1, **QUIET)
    trainer.fit(model, loader(4))
    return [trainer.precision, model.dtypes, model.autocast, model.layers]


def test_precision_plugins():
    def scenario(L):
        p = plugins(L)
        return [seen_in_step(L, p.DoublePrecision()), seen_in_step(L, p.HalfPrecision("bf16-true")),
                seen_in_step(L, p.MixedPrecision("bf16-mixed", "cpu"))]
    check(scenario, [
        ["64-true", ["torch.float64", "torch.float64"], False, ["Linear"]],
        ["bf16-true", ["torch.bfloat16", "torch.bfloat16"], False, ["Linear"]],
        ["bf16-mixed", ["torch.float32", "torch.float32"], "torch.bfloat16", ["Linear"]],
    ])


def test_layer_sync_plugin_on_one_device_leaves_the_layers():
    # Lightning converts BatchNorm to SyncBatchNorm only for a parallel strategy; one CPU runs them as they are.
    def scenario(L):
        net = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.BatchNorm1d(1))
        return seen_in_step(L, plugins(L).TorchSyncBatchNorm(), module=net)
    check(scenario, ["32-true", ["torch.float32"] * 4, False, ["BatchNorm1d", "Linear", "Sequential"]])


def test_checkpoint_io_subclass_does_every_save_load_and_remove(tmp_path):
    def scenario(L):
        base = plugins(L).CheckpointIO
        root = tmp_path / L.__name__

        class Recording(base):
            def __init__(self):
                self.calls = []

            def save_checkpoint(self, checkpoint, path, storage_options=None):
                self.calls.append(("save", os.path.basename(path), checkpoint["global_step"]))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.save(checkpoint, path)

            def load_checkpoint(self, path, map_location=None, weights_only=None):
                self.calls.append(("load", os.path.basename(path)))
                return torch.load(path, map_location=map_location, weights_only=False)

            def remove_checkpoint(self, path):
                self.calls.append(("remove", os.path.basename(path)))
                os.remove(path)

        io = Recording()
        checkpoint = callbacks_module(L).ModelCheckpoint(dirpath=root, save_top_k=1)
        trainer = L.Trainer(plugins=[io], max_epochs=2, default_root_dir=root, callbacks=[checkpoint],
                            **{**QUIET, "enable_checkpointing": True})
        trainer.fit(model_class(L)(), loader(8))
        resumed = L.Trainer(plugins=[io], max_epochs=3, default_root_dir=root, **QUIET)
        resumed.fit(model_class(L)(), loader(8), ckpt_path=str(root / "epoch=1-step=8.ckpt"))
        return [io.calls, sorted(os.listdir(root)), resumed.global_step]
    check(scenario, [
        [("save", "epoch=0-step=4.ckpt", 4), ("save", "epoch=1-step=8.ckpt", 8), ("remove", "epoch=0-step=4.ckpt"),
         ("load", "epoch=1-step=8.ckpt")],
        ["epoch=1-step=8.ckpt"], 12,
    ])
