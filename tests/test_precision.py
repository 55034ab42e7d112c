"""Precision settings: the final weights of a fit equal a hand-written loop doing what Lightning's
precision plugin does ("64-true", "16-true", "bf16-true": model and float inputs cast;
"bf16-mixed" and "16-mixed": autocast, and a GradScaler for "16-mixed"), a step with non-finite
gradients is skipped under the scaler, the scaler state goes into checkpoints under
"MixedPrecision", and legacy spellings resolve as in Lightning.

`Trainer(precision="16-mixed")` on the CPU runs as "bf16-mixed" with Lightning's warning; float16
autocast with a CPU GradScaler is what the plugin `MixedPrecision("16-mixed", "cpu")` asks for, as in
Lightning, and the GradScaler tests use it.

With `FERROTRAIN_CROSSCHECK=1` the scenarios Lightning runs the same way also run under Lightning."""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import ferrotrain
from ferrotrain.checkpoint import load
from ferrotrain.errors import MisconfigurationException
from ferrotrain.trainer.precision import cpu_float16_amp_available
from tests.lightning_ref import is_lightning, libraries, loader, trainer, state_of, tiny_net

EPOCHS = 2
CPU_FP16_WARNING = r"precision='16-mixed'\)` but AMP with fp16 is not supported on CPU. Using `precision='bf16-mixed'`"
CPU_FP16_AMP = cpu_float16_amp_available()


# The shared parity helpers, under the short names these tests use.
_net, _state = tiny_net, state_of


def fp16_cpu(L: Any) -> Dict[str, Any]:
    """The Trainer argument for float16 autocast with a GradScaler on the CPU: Lightning's plugin."""
    module = "lightning.pytorch.plugins.precision" if is_lightning(L) else "ferrotrain.plugins.precision"
    return dict(plugins=importlib.import_module(module).MixedPrecision("16-mixed", "cpu"))


def fit(L: Any, precision: Any, batches: int = 8, **kwargs: Any) -> Dict[str, Any]:
    """`precision=None` leaves the argument out (for a precision plugin in `kwargs`)."""
    seen: List[Any] = []

    class M(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x)
            # What the step sees: the input dtype, the default dtype, autocast's output dtype.
            seen.append((x.dtype, torch.zeros(1).dtype, out.dtype))
            loss = F.mse_loss(out.float(), y.float())
            self.log("loss", loss, on_step=True, on_epoch=False)
            losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    losses: List[float] = []
    m = M()
    if precision is not None:
        kwargs["precision"] = precision
    t = trainer(L, max_epochs=EPOCHS, **kwargs)
    with warnings.catch_warnings():
        if is_lightning(L):
            warnings.simplefilter("ignore")
        t.fit(m, loader(batches, batch_size=4))
    return dict(state=_state(m.net), seen=seen, losses=losses, trainer=t, model=m)


def hand(dtype: torch.dtype = torch.float32, autocast: Any = None, scaler: Any = None,
         batches: int = 8) -> Dict[str, Any]:
    net = _net().to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(EPOCHS):
        for x, y in loader(batches, batch_size=4):
            x, y = x.to(dtype), y.to(dtype)
            opt.zero_grad()
            if autocast is not None:
                with torch.autocast("cpu", dtype=autocast, cache_enabled=False):
                    out = net(x)
                    loss = F.mse_loss(out.float(), y.float())
            else:
                loss = F.mse_loss(net(x).float(), y.float())
            losses.append(loss.item())
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
    return dict(state=_state(net), losses=losses)


@pytest.mark.parametrize("precision, dtype", [("64-true", torch.float64), (64, torch.float64),
                                              ("16-true", torch.float16), ("bf16-true", torch.bfloat16)])
def test_true_precision_casts_model_and_inputs_and_matches_hand_loop(precision, dtype):
    want = hand(dtype=dtype)
    for L in libraries():
        got = fit(L, precision)
        # Inputs arrive cast, tensors made in the step get the dtype, the model runs in it.
        assert set(got["seen"]) == {(dtype, dtype, dtype)}, L.__name__
        assert all(v.dtype == dtype for v in got["state"].values())
        assert_close(got["state"], want["state"], rtol=0, atol=0)
        assert got["losses"][-1] < got["losses"][0]
    # The default dtype is back to float32 after the fit.
    assert torch.get_default_dtype() == torch.float32


def test_bf16_mixed_on_cpu_matches_hand_autocast_loop():
    want = hand(autocast=torch.bfloat16)
    for L in libraries():
        got = fit(L, "bf16-mixed")
        assert set(got["seen"]) == {(torch.float32, torch.float32, torch.bfloat16)}
        # Mixed precision keeps the weights in float32.
        assert all(v.dtype == torch.float32 for v in got["state"].values())
        assert_close(got["state"], want["state"], rtol=0, atol=0)
        assert got["losses"] == want["losses"]
        assert got["losses"][-1] < got["losses"][0]


def test_legacy_spellings_resolve_as_lightning():
    for L in libraries():
        with pytest.warns(UserWarning, match="historical reasons"):
            assert trainer(L, precision="bf16").precision == "bf16-mixed"
        assert trainer(L, precision=64).precision == "64-true"
        assert trainer(L, precision="64").precision == "64-true"
        assert trainer(L, precision=32).precision == "32-true"
        # 16 is "16-mixed", which the CPU runs as "bf16-mixed".
        with pytest.warns(UserWarning, match="historical reasons"), pytest.warns(UserWarning, match=CPU_FP16_WARNING):
            assert trainer(L, precision=16).precision == "bf16-mixed"


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_16_mixed_on_cpu_runs_as_bf16_mixed_with_lightnings_warning(accelerator):
    if accelerator == "auto" and torch.cuda.is_available():
        pytest.skip("'auto' picks the GPU here")
    want = hand(autocast=torch.bfloat16)
    for L in libraries():
        with pytest.warns(UserWarning, match=CPU_FP16_WARNING):
            got = fit(L, "16-mixed", accelerator=accelerator)
        t = got["trainer"]
        assert t.precision == "bf16-mixed"
        assert getattr(t.precision_plugin, "scaler", None) is None  # no GradScaler under bfloat16
        assert set(got["seen"]) == {(torch.float32, torch.float32, torch.bfloat16)}
        assert_close(got["state"], want["state"], rtol=0, atol=0)


def test_mixed_precision_is_announced(caplog):
    for L in libraries():
        caplog.clear()
        with caplog.at_level(logging.INFO), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer(L, precision="16-mixed")
        assert "Using bfloat16 Automatic Mixed Precision (AMP)" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO):
            trainer(L, precision="32-true")
        assert "Automatic Mixed Precision" not in caplog.text


@pytest.mark.skipif(CPU_FP16_AMP, reason="this torch runs float16 autocast on the CPU")
def test_16_mixed_plugin_on_cpu_without_torch_support_is_a_clear_error():
    with pytest.raises(MisconfigurationException, match="bf16-mixed"):
        trainer(ferrotrain, **fp16_cpu(ferrotrain))


needs_fp16_amp = pytest.mark.skipif(not CPU_FP16_AMP, reason="this torch has no float16 CPU autocast")


@needs_fp16_amp
def test_16_mixed_plugin_on_cpu_uses_a_grad_scaler_and_matches_hand_loop():
    want = hand(autocast=torch.float16, scaler=torch.amp.GradScaler("cpu"))
    for L in libraries():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a plugin is kept as given: no bf16 fallback warning
            got = fit(L, None, **fp16_cpu(L))
        assert got["trainer"].precision == "16-mixed"
        scaler = got["trainer"].precision_plugin.scaler
        assert isinstance(scaler, torch.amp.GradScaler)
        assert set(got["seen"]) == {(torch.float32, torch.float32, torch.float16)}
        assert_close(got["state"], want["state"], rtol=0, atol=0)
        assert got["losses"] == want["losses"]


class _NonFiniteOnce(ferrotrain.LightningModule):
    """Batch 2's loss is multiplied by inf, so its gradients are non-finite. The others are
    small enough not to overflow float16 at the scaler's initial scale (2**16)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.weights: List[torch.Tensor] = []
        self.scales: List[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x).float(), y) * 1e-3
        return loss * float("inf") if batch_idx == 2 else loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights.append(self.net[0].weight.detach().clone())
        self.scales.append(self.trainer.precision_plugin.scaler.get_scale())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@needs_fp16_amp
def test_16_mixed_skips_the_step_with_non_finite_gradients(tmp_path):
    m = _NonFiniteOnce()
    t = trainer(ferrotrain, max_epochs=1, **fp16_cpu(ferrotrain))
    t.fit(m, loader(16, batch_size=4))
    w = m.weights
    assert not torch.equal(w[0], w[1])  # finite steps move the weights
    assert torch.equal(w[1], w[2])  # the non-finite step is skipped
    assert not torch.equal(w[2], w[3])
    assert torch.isfinite(w[3]).all()
    # The scale halves after the skipped step; the step still counts (Lightning).
    assert m.scales[2] == m.scales[1] / 2
    assert t.global_step == 4


@needs_fp16_amp
def test_16_mixed_scaler_state_is_saved_and_restored(tmp_path):
    m = _NonFiniteOnce()
    t = trainer(ferrotrain, max_epochs=1, **fp16_cpu(ferrotrain))
    t.fit(m, loader(16, batch_size=4))
    path = tmp_path / "amp.ckpt"
    t.save_checkpoint(path)
    saved = load(path)["MixedPrecision"]
    assert saved == t.precision_plugin.scaler.state_dict()
    assert saved["scale"] == 65536.0 / 2

    class Probe(_NonFiniteOnce):
        def on_train_start(self) -> None:
            self.scale_at_start = self.trainer.precision_plugin.scaler.get_scale()

    probe = Probe()
    t2 = trainer(ferrotrain, max_epochs=2, **fp16_cpu(ferrotrain))
    t2.fit(probe, loader(16, batch_size=4), ckpt_path=path)
    assert probe.scale_at_start == 65536.0 / 2


def test_full_precision_checkpoint_has_no_scaler_state(tmp_path):
    got = fit(ferrotrain, "bf16-mixed")
    path = tmp_path / "bf16.ckpt"
    got["trainer"].save_checkpoint(path)
    assert "MixedPrecision" not in load(path)


def test_32_true_hands_the_loader_batch_through_uncast():
    """No input conversion pass at "32-true": the step gets the loader's very batch object."""
    class Batches:
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __iter__(self):
            return iter(self.items)

    batches = [(torch.randn(4, 4), torch.randn(4, 1)) for _ in range(3)]
    got: List[Any] = []

    class M(ferrotrain.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            got.append(batch)
            return F.mse_loss(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            got.append(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    trainer(ferrotrain, max_epochs=1, num_sanity_val_steps=0).fit(M(), Batches(batches), Batches(batches))
    assert len(got) == 6 and all(g is b for g, b in zip(got, batches + batches))


def test_64_true_casts_evaluation_and_predict_inputs():
    for L in libraries():
        dtypes: List[torch.dtype] = []

        class M(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = _net()

            def validation_step(self, batch, batch_idx):
                dtypes.append(batch[0].dtype)

            def predict_step(self, batch, batch_idx):
                dtypes.append(batch[0].dtype)
                return self.net(batch[0])

        t = trainer(L, precision="64-true")
        with warnings.catch_warnings():
            if is_lightning(L):
                warnings.simplefilter("ignore")
            t.validate(M(), loader(4, batch_size=2), verbose=False)
            preds = t.predict(M(), loader(4, batch_size=2))
        assert dtypes == [torch.float64] * 4
        assert all(p.dtype == torch.float64 for p in preds)


def test_lbfgs_with_16_mixed_is_a_clear_error():
    if not CPU_FP16_AMP:
        pytest.skip("this torch has no float16 CPU autocast")

    class M(ferrotrain.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            return F.mse_loss(self.net(batch[0]).float(), batch[1])

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters())

    with pytest.raises(MisconfigurationException, match="LBFGS"):
        trainer(ferrotrain, max_epochs=1, **fp16_cpu(ferrotrain)).fit(M(), loader(4))


def _scaled_hand(clip: float = 0.0, batches: int = 8) -> Dict[str, torch.Tensor]:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(EPOCHS):
        for x, y in loader(batches, batch_size=4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16, cache_enabled=False):
                loss = F.mse_loss(net(x).float(), y) * 1e-3
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            scaler.step(opt)
            scaler.update()
    return _state(net)


@needs_fp16_amp
def test_16_mixed_clips_the_unscaled_gradients():
    class M(ferrotrain.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x).float(), y) * 1e-3

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    m = M()
    trainer(ferrotrain, max_epochs=EPOCHS, **fp16_cpu(ferrotrain), gradient_clip_val=1e-3).fit(m, loader(8, batch_size=4))
    want = _scaled_hand(clip=1e-3)
    assert not torch.allclose(want["0.weight"], _scaled_hand()["0.weight"])  # the clip mattered
    assert_close(_state(m.net), want, rtol=1e-5, atol=1e-7)


@needs_fp16_amp
def test_16_mixed_manual_optimization_steps_through_the_scaler():
    class M(ferrotrain.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = _net()

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch
            loss = F.mse_loss(self.net(x).float(), y) * 1e-3
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    m = M()
    t = trainer(ferrotrain, max_epochs=EPOCHS, **fp16_cpu(ferrotrain))
    t.fit(m, loader(8, batch_size=4))
    assert_close(_state(m.net), _scaled_hand(), rtol=0, atol=0)
    assert t.global_step == 2 * EPOCHS
