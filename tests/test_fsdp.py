"""FSDP with real processes over gloo on the CPU: training equal to one process over the same
global batches, full and sharded checkpoints saved and resumed, and the options checked before
anything runs."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.errors import CheckpointError, ConfigTypeError, MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies import FSDPStrategy

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "fsdp_worker.py")
sys.path.insert(0, HERE)
import fsdp_worker  # noqa: E402
from test_ddp import _env, _load  # noqa: E402


def _run(out, *args: str) -> None:
    proc = subprocess.run([sys.executable, WORKER, *args[:1], str(out), *args[1:]], env=_env(), capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _single_process_reference(epochs: int = 2, accumulate: int = 2) -> dict:
    """A hand-written loop over the same global batches (2 ranks x 32 = 64), clipping the total norm."""
    net = fsdp_worker.make_net()
    opt = fsdp_worker.make_optimizer(net.parameters())
    loader = DataLoader(fsdp_worker.dataset(0), batch_size=64)
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader):
            loss = torch.nn.functional.mse_loss(net(x), y) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), fsdp_worker.CLIP)
                opt.step()
                opt.zero_grad()
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def _check_matches_reference(out) -> dict:
    r0, r1 = _load(out, 0), _load(out, 1)
    ref = _single_process_reference()
    assert sorted(r0["state_dict"]) == sorted(ref)
    for k, v in ref.items():
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), k
        torch.testing.assert_close(r0["state_dict"][k], v, rtol=1e-5, atol=1e-6)
    for r, info in ((0, r0), (1, r1)):
        assert (info["world_size"], info["global_rank"], info["global_step"]) == (2, r, 4)
        assert info["model_type"] == "FullyShardedDataParallel"
    assert r0["val_loss"] == pytest.approx(r1["val_loss"])
    return r0


@pytest.mark.timeout(180)
def test_full_shard_matches_single_process(tmp_path) -> None:
    # Wrap and activation-checkpointing policies, accumulation (no_sync) and clipping by the total
    # norm: a per-rank norm of the shards would clip differently and miss the reference.
    r0 = _check_matches_reference_after(tmp_path, "FULL_SHARD")
    assert r0["local_numel"] < 16 * fsdp_worker.DIM  # the first layer's weight is sharded on each rank


def _check_matches_reference_after(out, sharding: str) -> dict:
    _run(out, "fit", sharding)
    return _check_matches_reference(out)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("sharding", ["SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"])
def test_other_sharding_strategies_match_single_process(tmp_path, sharding: str) -> None:
    _check_matches_reference_after(tmp_path, sharding)


def _check_resume(out) -> dict:
    r0, r1 = _load(out, 0), _load(out, 1)
    for k, v in r0["straight"].items():
        # Resumed from the 1-epoch checkpoint: the same weights as 2 epochs straight, on both ranks.
        assert torch.equal(r0["resumed"][k], r1["resumed"][k]), k
        torch.testing.assert_close(r0["resumed"][k], v, rtol=1e-6, atol=1e-7)
        # validate(ckpt_path=...) with a fresh model evaluates the checkpoint's weights.
        assert torch.equal(r0["eval_weights"][k], r0["first"][k]), k
    assert not all(torch.equal(r0["first"][k], v) for k, v in r0["straight"].items())
    assert r0["val"] == r1["val"]
    return r0


@pytest.mark.timeout(180)
def test_full_checkpoint_is_one_ordinary_file_and_resumes(tmp_path) -> None:
    from ferrotrain.checkpoint import load

    _run(tmp_path, "resume", "full")
    r0 = _check_resume(tmp_path)
    path = r0["path"]
    assert os.path.isfile(path) and os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    ckpt = load(path)
    # The gathered weights (whole tensors) and a plain optimizer state keyed by parameter index:
    # a model and optimizer without FSDP load them as they are.
    net = fsdp_worker.make_net()
    net.load_state_dict({k[len("net."):]: v for k, v in ckpt["state_dict"].items()})
    opt = fsdp_worker.make_optimizer(net.parameters())
    opt.load_state_dict(ckpt["optimizer_states"][0])
    assert sorted(ckpt["optimizer_states"][0]["state"]) == list(range(6))
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0
    for k, v in r0["first"].items():
        assert torch.equal(ckpt["state_dict"][k], v), k


@pytest.mark.timeout(180)
def test_sharded_checkpoint_is_a_folder_every_rank_writes_and_resumes(tmp_path) -> None:
    _run(tmp_path, "resume", "sharded")
    r0 = _check_resume(tmp_path)
    path = r0["path"]
    assert os.path.isdir(path)
    files = sorted(os.listdir(path))
    assert "meta.pt" in files and ".metadata" in files
    assert len([f for f in files if f.endswith(".distcp")]) == 2  # one file of shards per rank
    # Without FSDP, the folder is refused with a clear error, not a confusing read failure.
    from tests.conftest import BoringModel, make_dataset

    t = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(CheckpointError, match="sharded checkpoint"):
        t.fit(BoringModel(), DataLoader(make_dataset(), batch_size=8), ckpt_path=path)


@pytest.mark.timeout(120)
def test_one_device_runs_a_one_process_group(tmp_path) -> None:
    # devices=1 with strategy="fsdp" or "ddp": no launcher, no MASTER_PORT to set by hand.
    _run(tmp_path, "single")
    steps = _load(tmp_path, 0)
    assert steps["fsdp"] == (8, 1, "FullyShardedDataParallel")
    assert steps["ddp"] == (8, 1, "Model")  # DDP's wrapper is gone after fit


# ---------------------------------------------------------------------- options, one process
def test_fsdp_resolves_from_its_name_and_keeps_the_options() -> None:
    t = L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)
    assert isinstance(t.strategy, FSDPStrategy) and t.world_size == 2
    assert t.strategy.sharding_strategy.name == "FULL_SHARD" and t.strategy.state_dict_type == "full"
    s = FSDPStrategy(sharding_strategy="shard_grad_op", state_dict_type="sharded", auto_wrap_policy={torch.nn.Linear},
                     timeout=datetime.timedelta(seconds=60), process_group_backend="gloo", limit_all_gathers=False)
    t = L.Trainer(accelerator="cpu", devices=2, strategy=s, logger=False)
    assert t.strategy is s and s.sharding_strategy.name == "SHARD_GRAD_OP" and s.timeout.total_seconds() == 60
    assert s.kwargs["use_orig_params"] is True and s.kwargs["limit_all_gathers"] is False
    assert callable(s.kwargs["auto_wrap_policy"])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sharding_strategy="FULL"), MisconfigurationException, r"sharding_strategy='FULL'.*'FULL_SHARD', 'SHARD_GRAD_OP', 'NO_SHARD', 'HYBRID_SHARD'"),
    (dict(state_dict_type="half"), MisconfigurationException, r"state_dict_type='half'.*'full', 'sharded'"),
    (dict(auto_wrap_policy=3), MisconfigurationException, r"auto_wrap_policy=3.*set of `torch.nn.Module` subclasses or a callable"),
    (dict(auto_wrap_policy={int}), MisconfigurationException, r"auto_wrap_policy=.*not module classes"),
    (dict(activation_checkpointing_policy="Linear"), MisconfigurationException, r"activation_checkpointing_policy='Linear'"),
    (dict(cpu_offload="yes"), ConfigTypeError, r"cpu_offload='yes'.*None, True, False"),
    (dict(timeout=30), MisconfigurationException, r"timeout=.*timedelta"),
    (dict(process_group_backend="mpx"), MisconfigurationException, r"process_group_backend='mpx'.*'gloo', 'nccl'"),
    (dict(use_orig_param=True), MisconfigurationException, r"unknown keyword argument.*'use_orig_param'.*use_orig_params"),
    (dict(device_mesh=(1, 2)), MisconfigurationException, r"device_mesh=\(1, 2\).*HYBRID_SHARD"),
])
def test_bad_options_name_the_parameter_and_the_allowed_values(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        FSDPStrategy(**kwargs)


def test_options_that_cannot_run_here_fail_at_construction() -> None:
    # CPU offload moves parameters off a CUDA device; torch's FSDP needs one for it.
    with pytest.raises(MisconfigurationException, match=r"cpu_offload=True.*accelerator='cpu'"):
        L.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(cpu_offload=True), logger=False)
    with pytest.raises(MisconfigurationException, match=r"cpu_offload=True"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp_cpu_offload", logger=False)
    with pytest.raises(MisconfigurationException, match=r"process_group_backend='nccl'.*needs CUDA"):
        L.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(process_group_backend="nccl"), logger=False)
    with pytest.raises(NotSupportedYetError, match=r"precision='16-mixed'.*FSDPStrategy.*'32-true'"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", precision="16-mixed", logger=False)
