"""DeepSpeed with real processes over gloo on the CPU: ZeRO-2 and ZeRO-3 training equal to one
process over the same global batches, checkpoints written by the engine and resumed, and the
options checked before anything runs. Skipped when the `deepspeed` package is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

if importlib.util.find_spec("deepspeed") is None:
    pytest.skip("the `deepspeed` package is not installed (`pip install deepspeed`)", allow_module_level=True)

import ferrotrain as L  # noqa: E402
from ferrotrain.errors import ConfigTypeError, MisconfigurationException, NotSupportedYetError  # noqa: E402
from ferrotrain.strategies import DeepSpeedStrategy  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "deepspeed_worker.py")
sys.path.insert(0, HERE)
from test_ddp import _env, _load  # noqa: E402
from test_fsdp import _single_process_reference  # noqa: E402


def _run(out, mode: str, stage: object) -> None:
    env = _env()
    # DeepSpeed builds its CPU communication op with ninja (installed next to this Python) and a C++ compiler.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run([sys.executable, WORKER, mode, str(out), str(stage)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _close(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k, v in b.items():
        torch.testing.assert_close(a[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_matches_single_process(tmp_path, stage: int) -> None:
    # Accumulation over 2 batches and clipping by the total norm (DeepSpeed's `gradient_clipping`),
    # SGD with momentum (a non-DeepSpeed optimizer: `zero_allow_untested_optimizer`).
    _run(tmp_path, "fit", stage)
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    ref = _single_process_reference()
    _close(r0["state_dict"], ref)
    for k in ref:
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), k
    for r, info in ((0, r0), (1, r1)):
        assert (info["world_size"], info["global_rank"], info["global_step"]) == (2, r, 4)
        assert info["model_type"] == "DeepSpeedEngine"
        assert info["optimizer_type"] == ("DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer")
    assert r0["val_loss"] == pytest.approx(r1["val_loss"])


@pytest.mark.timeout(420)
def test_checkpoint_resume_matches_straight_run(tmp_path) -> None:
    _run(tmp_path, "resume", 2)
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    path = r0["path"]
    assert path == r1["path"] and os.path.isdir(path)
    assert os.path.isfile(os.path.join(path, "latest"))
    # Every rank wrote its optimizer partition.
    files = os.listdir(os.path.join(path, "checkpoint"))
    assert sum(f.endswith("optim_states.pt") for f in files) == 2, files
    for info in (r0, r1):
        _close(info["resumed"], info["straight"])
        assert info["resumed_step"] == 4
        # A fresh Trainer validating from the folder: the consolidated weights of the first fit.
        _close(info["eval_weights"], info["first"])
        assert info["val"][0]["val_loss"] == pytest.approx(r0["val"][0]["val_loss"])


# ---------------------------------------------------------------- options, checked before anything runs
@pytest.mark.parametrize("kwargs, match", [
    ({"stage": 4}, r"stage=4.*0, 1, 2, 3"),
    ({"stage": True}, r"stage=True"),
    ({"offload_optimizer_device": "gpu", "offload_optimizer": True}, r"offload_optimizer_device='gpu'.*'cpu', 'nvme'"),
    ({"offload_params_device": "disk"}, r"offload_params_device='disk'"),
    ({"offload_parameters": True, "stage": 2}, r"offload_parameters=True.*stage 3"),
    ({"logging_batch_size_per_gpu": 0}, r"logging_batch_size_per_gpu=0"),
    ({"process_group_backend": "mpx"}, r"process_group_backend='mpx'"),
    ({"config": "/nonexistent/ds.json"}, r"config='/nonexistent/ds.json'.*no such file"),
    ({"config": {"gradient_accumulation_steps": 4}}, r"gradient_accumulation_steps"),
])
def test_bad_options_name_the_parameter(kwargs, match) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        DeepSpeedStrategy(**kwargs)


def test_bad_option_types_and_unsupported() -> None:
    with pytest.raises(ConfigTypeError, match="logging_level"):
        DeepSpeedStrategy(logging_level="debug")
    with pytest.raises(ConfigTypeError, match="config"):
        DeepSpeedStrategy(config=[1])
    with pytest.raises(NotSupportedYetError, match="load_full_weights"):
        DeepSpeedStrategy(load_full_weights=True)
    with pytest.raises(NotSupportedYetError, match="'optimizer' section"):
        DeepSpeedStrategy(config={"optimizer": {"type": "Adam"}})


def test_config_from_dict_and_json_overrides_the_options(tmp_path) -> None:
    cfg = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 7}
    s = DeepSpeedStrategy(stage=1, config=cfg)
    assert s.config == cfg and s.zero_stage_3
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    assert DeepSpeedStrategy(config=str(path)).config == cfg
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MisconfigurationException, match="not valid JSON"):
        DeepSpeedStrategy(config=str(bad))


def test_stage_names_map_to_zero_config() -> None:
    t = L.Trainer(accelerator="cpu", devices=1, strategy="deepspeed_stage_3_offload", logger=False)
    zero = t.strategy.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    t = L.Trainer(accelerator="cpu", devices=1, strategy="deepspeed_stage_1", logger=False)
    assert t.strategy.config["zero_optimization"]["stage"] == 1 and "offload_optimizer" not in t.strategy.config["zero_optimization"]
    assert t.strategy.config["zero_allow_untested_optimizer"] is True


def test_mixed_precision_on_cpu_is_a_clear_error() -> None:
    for precision in ("16-mixed", "bf16-mixed"):
        with pytest.raises(NotSupportedYetError, match=rf"precision='{precision}'.*DeepSpeed.*'32-true'"):
            L.Trainer(accelerator="cpu", devices=1, strategy="deepspeed", precision=precision, logger=False)


def test_nvme_offload_on_cpu_is_a_clear_error() -> None:
    s = DeepSpeedStrategy(stage=3, offload_parameters=True, offload_params_device="nvme")
    with pytest.raises(NotSupportedYetError, match="NVMe"):
        L.Trainer(accelerator="cpu", devices=1, strategy=s, logger=False)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_clipping_by_value_is_refused(tmp_path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    t = L.Trainer(accelerator="cpu", devices=1, strategy="deepspeed", gradient_clip_val=1.0,
                  gradient_clip_algorithm="value", logger=False, enable_checkpointing=False,
                  default_root_dir=str(tmp_path), max_epochs=1, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match="clipping gradients by value"):
        t.fit(_Tiny(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
