"""DDP with real processes over gloo: the Trainer starting its second process, a failing rank,
and torchrun with two "nodes" on loopback; plus the strategy arguments and environment detection."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader

import ferrotrain as L
from ferrotrain.errors import ConfigTypeError, MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies import DDPStrategy, SingleDeviceStrategy
from ferrotrain.strategies.environment import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment, detect, find_free_port

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "ddp_worker.py")
sys.path.insert(0, HERE)
import ddp_worker  # noqa: E402


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (
        "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
        "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID")}
    python_dir = os.path.join(os.path.dirname(HERE), "python")
    env["PYTHONPATH"] = os.pathsep.join([python_dir, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _load(out, rank: int) -> dict:
    return torch.load(os.path.join(out, f"rank{rank}.pt"), weights_only=False)


def _single_process_reference(epochs: int = 2, accumulate: int = 2) -> dict:
    """A hand-written loop over the same global batches (2 ranks x 32 = 64, interleaved)."""
    net = ddp_worker.make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DataLoader(ddp_worker.dataset(0), batch_size=64)
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader):
            loss = torch.nn.functional.mse_loss(net(x), y) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad()
    return {f"net.{k}": v for k, v in net.state_dict().items()}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_process_ddp_matches_single_process(tmp_path) -> None:
    proc = subprocess.run([sys.executable, WORKER, "fit", str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    # Identical parameters on both ranks, equal to one process over the same global batches.
    ref = _single_process_reference()
    for k, v in ref.items():
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), k
        torch.testing.assert_close(r0["state_dict"][k], v, rtol=1e-5, atol=1e-6)
    for r, info in ((0, r0), (1, r1)):
        assert (info["world_size"], info["global_rank"], info["local_rank"]) == (2, r, r)
        assert info["is_global_zero"] is (r == 0) and info["rank_zero_only"] == r
        assert info["model_type_in_fit"] == "DistributedDataParallel"
        # DistributedSampler in front of the loader: half the batches per rank, set_epoch each epoch.
        assert info["epochs"] == [("DistributedSampler", 0, False, 4), ("DistributedSampler", 1, False, 4)]
        # 8 batches with accumulate_grad_batches=2: 4 all-reduces, the accumulating batches skip it.
        assert info["allreduces"] == 4 and info["global_step"] == 4
        assert torch.equal(info["gathered"], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
        assert info["rank_step"] == pytest.approx(0.5)  # step value averaged over ranks
    # sync_dist=True: the epoch mean over both ranks' batches; without it, each rank's own.
    assert r0["loss_synced"] == pytest.approx(r1["loss_synced"])
    assert r0["loss_synced"] == pytest.approx((r0["loss_local"] + r1["loss_local"]) / 2, rel=1e-6)
    assert r0["loss_local"] != pytest.approx(r1["loss_local"])
    assert r0["val_loss"] == pytest.approx(r1["val_loss"])
    # Files on rank zero only: one logger version, one checkpoint, the same path on both ranks.
    logs = tmp_path / "logs"
    assert sorted(os.listdir(logs)) == ["version_0"]
    assert r0["ckpt"] == r1["ckpt"] and os.path.isfile(r0["ckpt"])
    assert os.listdir(os.path.dirname(r0["ckpt"])) == [os.path.basename(r0["ckpt"])]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_failing_rank_stops_the_run_with_its_error(tmp_path) -> None:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, WORKER, "fail", str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode != 0
    # Rank 0 reports rank 1's error (its traceback), not a broken connection alone or a hang.
    assert "RankFailedError: Rank 1 (local rank 1) failed" in proc.stderr
    assert "ValueError: boom on rank 1" in proc.stderr.split("RankFailedError")[1]
    assert not os.path.exists(tmp_path / "rank0.pt")
    assert time.monotonic() - start < 150


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_two_nodes_on_loopback(tmp_path) -> None:
    port = find_free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port), WORKER, "nodes",
             str(tmp_path)],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=220)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    assert (r0["node_rank"], r1["node_rank"]) == (0, 1)
    assert (r0["global_rank"], r1["global_rank"], r0["world_size"]) == (0, 1, 2)
    assert (r0["local_rank"], r1["local_rank"]) == (0, 0)
    ref = _single_process_reference()
    for k, v in ref.items():
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), k
        torch.testing.assert_close(r1["state_dict"][k], v, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- arguments, one process
def test_strategy_names_and_objects_resolve() -> None:
    t = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", logger=False)
    assert isinstance(t.strategy, DDPStrategy) and t.strategy.find_unused_parameters
    assert t.num_devices == 2 and t.world_size == 2 and t.is_global_zero and t.global_rank == 0
    s = DDPStrategy(static_graph=True, process_group_backend="gloo")
    t = L.Trainer(accelerator="cpu", devices=2, strategy=s, logger=False)
    assert t.strategy is s and s.static_graph and s.process_group_backend == "gloo"
    # `auto` with several devices is DDP; with one, a single device.
    assert isinstance(L.Trainer(accelerator="cpu", devices=2, logger=False).strategy, DDPStrategy)
    t = L.Trainer(accelerator="cpu", logger=False)
    assert isinstance(t.strategy, SingleDeviceStrategy) and t.world_size == 1 and t.model is None


def test_strategy_errors_are_clear() -> None:
    with pytest.raises(MisconfigurationException, match="'ddp'.*'fsdp'"):
        L.Trainer(strategy="dpp")
    with pytest.raises(ConfigTypeError, match="Strategy object"):
        L.Trainer(strategy=3)
    with pytest.raises(MisconfigurationException, match="one process"):
        L.Trainer(accelerator="cpu", devices=2, strategy="single_device")
    with pytest.raises(NotSupportedYetError, match="start_method='fork'.*background threads"):
        DDPStrategy(start_method="fork")
    with pytest.raises(MisconfigurationException, match="start_method='thread'.*'popen', 'spawn'"):
        DDPStrategy(start_method="thread")
    for name in ("ddp_fork", "ddp_notebook"):
        with pytest.raises(NotSupportedYetError, match=f"{name}.*fork.*ddp_spawn"):
            L.Trainer(accelerator="cpu", devices=2, strategy=name)
    with pytest.raises(MisconfigurationException, match="timedelta"):
        DDPStrategy(timeout=30)


@pytest.mark.timeout(180)
def test_stop_decisions_are_shared_and_predict_splits_the_data(tmp_path) -> None:
    proc = subprocess.run([sys.executable, WORKER, "stop", str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    # Every rank set `trainer.should_stop` after batch 1 of epoch 1: all stop right there, as in Lightning.
    assert r0["stop_in_batch"] == r1["stop_in_batch"] == (4 + 2, 2, True)
    # Only rank 1 set it, at the end of epoch 1: both ranks stop together, and nothing hangs.
    assert r0["stop"] == r1["stop"] == (4 + 4, 2, True)
    # Only rank 1's EarlyStopping wants to stop (after its 2nd validation): both stop together.
    assert r0["early"] == r1["early"] and r0["early"][1] == 2 and r0["early"][2] == 1
    # predict: rank-local results, each sample once over the ranks, in order despite shuffle=True.
    assert r0["predictions"] == [[0.0, 2.0, 4.0, 6.0], [8.0]]
    assert r1["predictions"] == [[1.0, 3.0, 5.0, 7.0], [9.0]]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_spawn_brings_the_trained_model_back_to_the_main_process(tmp_path) -> None:
    proc = subprocess.run([sys.executable, WORKER, "spawn", str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = torch.load(tmp_path / "main.pt", weights_only=False)
    # The main process trained nothing itself, yet its model object holds rank zero's trained
    # weights: those of one process over the same global batches.
    assert not info["dist_initialized_in_main"]
    for k, v in _single_process_reference().items():
        torch.testing.assert_close(info["state_dict"][k], v, rtol=1e-5, atol=1e-6)
        assert not torch.equal(info["before"][k], info["state_dict"][k])
    assert info["lightning_module_is_model"] and info["status"] == "finished"
    assert (info["global_step"], info["epoch"]) == (4, 2)
    assert os.path.isfile(info["best"]) and info["best"].endswith("epoch=1-step=4.ckpt")
    assert set(info["callback_metrics"]) == {"loss_synced", "loss_local", "rank_step", "val_loss"}
    # validate runs spawned too, on the weights fit brought back: fit's last validation loss.
    assert info["validate"][0]["val_loss"] == pytest.approx(info["callback_metrics"]["val_loss"], rel=1e-6)
    # predict returns rank zero's part: samples 0, 2, 4, ... (no shuffle, no padding).
    assert [p.tolist() for p in info["predictions"]] == [[0.0, 2.0, 4.0, 6.0], [8.0]]


@pytest.mark.timeout(180)
def test_ddp_spawn_failing_rank_reports_its_error(tmp_path) -> None:
    proc = subprocess.run([sys.executable, WORKER, "spawn_fail", str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode != 0
    assert "RankFailedError: Rank 1 (local rank 1) of the spawned run failed" in proc.stderr
    assert "ValueError: boom on rank 1" in proc.stderr.split("RankFailedError")[-1]
    assert not os.path.exists(tmp_path / "main.pt")


def test_spawn_resolves_and_a_trainer_pickles(tmp_path) -> None:
    import pickle

    from ferrotrain.strategies.spawn import SpawnLauncher
    from tests.conftest import BoringModel, make_dataset

    t = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    assert isinstance(t.strategy, DDPStrategy) and t.strategy.start_method == "spawn"
    assert isinstance(t.strategy.launcher, SpawnLauncher) and t.strategy.launcher.num_processes == 2
    assert DDPStrategy(start_method="forkserver").start_method == "forkserver"
    # What ddp_spawn sends to its workers: a Trainer and a model after a run, loop progress kept.
    t = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path)
    model = BoringModel()
    t.fit(model, DataLoader(make_dataset(), batch_size=8))
    t2, m2 = pickle.loads(pickle.dumps((t, model)))
    assert t2.global_step == 3 and t2.lightning_module is m2 and m2.trainer is t2
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), m2.parameters()))
    t2.fit(m2, DataLoader(make_dataset(), batch_size=8))  # a pickled Trainer still runs (already at max_steps)
    assert t2.global_step == 3


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_the_package_names_it() -> None:
    from ferrotrain.strategies import DeepSpeedStrategy

    for name in ("deepspeed_stage_2", "deepspeed_stage_3_offload"):
        with pytest.raises(MisconfigurationException, match="`deepspeed` package"):
            L.Trainer(strategy=name)
    with pytest.raises(MisconfigurationException, match="`deepspeed` package"):
        DeepSpeedStrategy(stage=3)


def test_environment_detection(monkeypatch) -> None:
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "TORCHELASTIC_RUN_ID",
              "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(k, raising=False)
    plain = detect()
    assert type(plain) is LightningEnvironment and not plain.creates_processes_externally
    assert (plain.world_size(), plain.global_rank()) == (1, 0)  # until the strategy sets them
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[07-08]")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    env = detect()
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank(), env.main_address) == (4, 3, 1, 1, "gpu07")
    env.validate_settings(num_devices=2, num_nodes=2)
    # Lightning checks SLURM's tasks per node and node count against `devices` and `num_nodes`.
    with pytest.raises(ValueError, match="ntasks-per-node=2"):
        detect().validate_settings(num_devices=1, num_nodes=1)
    for k, v in dict(TORCHELASTIC_RUN_ID="x", RANK="1", LOCAL_RANK="0", WORLD_SIZE="2", GROUP_RANK="1",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(k, v)
    env = detect()
    assert isinstance(env, TorchElasticEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (2, 1, 0, 1)


def test_one_process_collectives_are_the_identity(tmp_path) -> None:
    from tests.conftest import BoringModel, make_dataset

    seen = {}

    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            seen["gathered"] = self.all_gather(torch.tensor(2.0))
            self.log("synced", torch.tensor(3.0), sync_dist=True)
            return super().training_step(batch, batch_idx)

    t = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    t.fit(M(), DataLoader(make_dataset(), batch_size=8))
    assert torch.equal(seen["gathered"], torch.tensor(2.0))
    assert float(t.callback_metrics["synced"]) == 3.0
    assert t.strategy.reduce_boolean_decision(True) is True and t.strategy.broadcast("x") == "x"


def test_predict_loaders_get_an_unrepeated_sampler_without_shuffle() -> None:
    from torch.utils.data import TensorDataset

    from ferrotrain.strategies.sampler import UnrepeatedDistributedSampler, with_distributed_sampler

    loader = DataLoader(TensorDataset(torch.arange(5.0)), batch_size=2, shuffle=True)
    parts = [with_distributed_sampler(loader, "predict", 2, r) for r in (0, 1)]
    for part in parts:
        assert isinstance(part.sampler, UnrepeatedDistributedSampler) and not part.sampler.shuffle
    # Every sample exactly once over the ranks (no padding), in order on each rank.
    assert [[float(x) for (b,) in p for x in b] for p in parts] == [[0.0, 2.0, 4.0], [1.0, 3.0]]
    assert [len(p.sampler) for p in parts] == [3, 2]
    # Training keeps DistributedSampler's padding and the loader's shuffle.
    train = with_distributed_sampler(loader, "train", 2, 1)
    assert type(train.sampler).__name__ == "DistributedSampler" and train.sampler.shuffle and len(train.sampler) == 3
