"""Each kind of `Trainer(plugins=...)` observed from user code: a precision plugin (the dtypes a
step sees), a CheckpointIO subclass (which of its methods the trainer calls, with which files) and a
layer sync (the layers a step runs), and the cluster environments (the ranks each reads from its
variables, the one a Trainer detects or is given, and a DDP run with a user's subclass). Pinned to Lightning 2.6's observations; FERROTRAIN_CROSSCHECK=1
reruns each scenario under Lightning."""

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import warnings

import pytest
import torch

from ferrotrain.strategies.environment import find_free_port
from tests.lightning_ref import CROSSCHECK, QUIET, callbacks_module, check, is_lightning, loader, model_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# ---------------------------------------------------------------- cluster environments
ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_PROCID",
            "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NODELIST", "SLURM_JOB_ID", "SLURM_JOB_NAME", "LSB_JOBID",
            "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK",
            "STANDALONE_PORT")


def environments(L):
    return importlib.import_module(
        "lightning.pytorch.plugins.environments" if is_lightning(L) else "ferrotrain.plugins.environments")


def only_vars(monkeypatch, **values):
    """The cluster variables are exactly `values` (monkeypatch restores them, also those an environment sets)."""
    for k in ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, str(v))


def ranks(env):
    return [env.creates_processes_externally, env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()]


def raised(fn):
    """The exception type `fn` raises and its message's first words, or None."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the type is what the test compares
        return type(exc).__name__
    return None


@pytest.fixture
def rank_zero_restored():
    """`set_global_rank` (and a Trainer's strategy) set the process-wide rank-zero flag: put it back."""
    from ferrotrain.utilities.rank_zero import rank_zero_only

    yield
    rank_zero_only.rank = 0
    if CROSSCHECK:
        from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_flag
        from lightning.pytorch.utilities.rank_zero import rank_zero_only as pytorch_flag

        fabric_flag.rank = pytorch_flag.rank = 0


def test_lightning_and_torchelastic_environments_read_their_variables(monkeypatch, rank_zero_restored):
    def scenario(L):
        envs = environments(L)
        out = {}
        only_vars(monkeypatch)
        plain = envs.LightningEnvironment()
        out["plain"] = ranks(plain) + [plain.main_address, envs.LightningEnvironment.detect()]
        only_vars(monkeypatch, LOCAL_RANK=1, NODE_RANK=2, MASTER_ADDR="10.0.0.1", MASTER_PORT=1234, WORLD_SIZE=4)
        launched = envs.LightningEnvironment()
        launched.set_world_size(4)
        launched.set_global_rank(5)
        out["launched"] = ranks(launched) + [launched.main_address, launched.main_port]
        launched.set_global_rank(0)
        launched.teardown()
        out["world_size_var_after_teardown"] = "WORLD_SIZE" in os.environ
        only_vars(monkeypatch, GROUP_RANK=3)
        out["group_rank"] = envs.LightningEnvironment().node_rank()

        only_vars(monkeypatch, TORCHELASTIC_RUN_ID="x", RANK=3, LOCAL_RANK=1, WORLD_SIZE=4, GROUP_RANK=1,
                  MASTER_ADDR="10.0.0.2", MASTER_PORT=29400)
        elastic = envs.TorchElasticEnvironment()
        elastic.set_world_size(8)  # the launcher owns the ranks: ignored
        elastic.set_global_rank(0)
        out["elastic"] = ranks(elastic) + [elastic.main_address, elastic.main_port, envs.TorchElasticEnvironment.detect()]
        out["elastic_checks"] = [raised(lambda: elastic.validate_settings(num_devices=2, num_nodes=2)),
                                 raised(lambda: elastic.validate_settings(num_devices=1, num_nodes=2))]
        only_vars(monkeypatch, TORCHELASTIC_RUN_ID="x", RANK=0, LOCAL_RANK=0, WORLD_SIZE=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            defaults = [envs.TorchElasticEnvironment().main_address, envs.TorchElasticEnvironment().main_port]
        out["elastic_defaults"] = defaults + [sorted({str(w.message).split()[0] for w in caught})]
        only_vars(monkeypatch)
        out["elastic_detected_without_run_id"] = envs.TorchElasticEnvironment.detect()
        return out
    check(scenario, {
        "plain": [False, 1, 0, 0, 0, "127.0.0.1", True],
        "launched": [True, 4, 5, 1, 2, "10.0.0.1", 1234],
        "world_size_var_after_teardown": False,
        "group_rank": 3,
        "elastic": [True, 4, 3, 1, 1, "10.0.0.2", 29400, True],
        "elastic_checks": [None, "ValueError"],
        "elastic_defaults": ["127.0.0.1", 12910, ["MASTER_ADDR", "MASTER_PORT"]],
        "elastic_detected_without_run_id": False,
    })


def test_slurm_environment_reads_its_variables(monkeypatch):
    slurm = dict(SLURM_NTASKS=4, SLURM_NTASKS_PER_NODE=2, SLURM_NNODES=2, SLURM_PROCID=3, SLURM_LOCALID=1,
                 SLURM_NODEID=1, SLURM_NODELIST="gpu[07-08],cpu1", SLURM_JOB_ID=123456, SLURM_JOB_NAME="train")

    def scenario(L):
        envs = environments(L)
        out = {}
        only_vars(monkeypatch, **slurm)
        env = envs.SLURMEnvironment()
        env.set_world_size(1)  # SLURM owns the ranks: ignored
        env.set_global_rank(0)
        out["ranks"] = ranks(env) + [env.main_address, env.main_port, envs.SLURMEnvironment.detect()]
        out["sets_master_vars"] = [os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")]
        out["requeue"] = [env.auto_requeue, int(env.requeue_signal), env.job_id(), env.job_name()]
        custom = envs.SLURMEnvironment(auto_requeue=False, requeue_signal=signal.SIGUSR2)
        out["custom_requeue"] = [custom.auto_requeue, int(custom.requeue_signal)]
        out["checks"] = [raised(lambda: env.validate_settings(num_devices=2, num_nodes=2)),
                         raised(lambda: env.validate_settings(num_devices=1, num_nodes=2)),
                         raised(lambda: env.validate_settings(num_devices=2, num_nodes=1))]
        only_vars(monkeypatch, **slurm, MASTER_ADDR="10.0.0.3", MASTER_PORT=4321)
        out["overridden"] = [env.main_address, env.main_port]
        only_vars(monkeypatch, **{**slurm, "SLURM_JOB_NAME": "interactive"})
        out["interactive"] = [envs.SLURMEnvironment.detect(), env.job_id(),
                              raised(lambda: env.validate_settings(num_devices=1, num_nodes=1))]
        only_vars(monkeypatch, **{k: v for k, v in slurm.items() if k != "SLURM_NTASKS_PER_NODE"})
        out["ntasks_without_per_node"] = raised(envs.SLURMEnvironment)
        only_vars(monkeypatch)
        out["outside_slurm"] = [envs.SLURMEnvironment.detect(), envs.SLURMEnvironment().main_port]
        out["root_node"] = [envs.SLURMEnvironment.resolve_root_node_address(n)
                            for n in ("host0 host1", "host0,host1", "host[5-9]", "host[7]", "a[03,05],b1")]
        return out
    check(scenario, {
        "ranks": [True, 4, 3, 1, 1, "gpu07", 18456, True],
        "sets_master_vars": ["gpu07", "18456"],
        "requeue": [True, int(signal.SIGUSR1), 123456, "train"],
        "custom_requeue": [False, int(signal.SIGUSR2)],
        "checks": [None, "ValueError", "ValueError"],
        "overridden": ["10.0.0.3", 4321],
        "interactive": [False, None, None],
        "ntasks_without_per_node": "RuntimeError",
        "outside_slurm": [False, 12910],
        "root_node": ["host0", "host0", "host5", "host7", "a03"],
    })


def test_kubeflow_lsf_mpi_and_xla_environments(monkeypatch, tmp_path):
    rankfile = tmp_path / "ranks"
    host = socket.gethostname()
    rankfile.write_text(f"launch\n{host}\n{host}\nother\n")

    def scenario(L):
        envs = environments(L)
        out = {}
        only_vars(monkeypatch, MASTER_ADDR="10.0.0.4", MASTER_PORT=2222, WORLD_SIZE=3, RANK=2)
        kube = envs.KubeflowEnvironment()
        out["kubeflow"] = ranks(kube) + [kube.main_address, kube.main_port, raised(envs.KubeflowEnvironment.detect)]
        only_vars(monkeypatch, LSB_JOBID=12345, LSB_DJOB_RANKFILE=rankfile, JSM_NAMESPACE_LOCAL_RANK=1,
                  JSM_NAMESPACE_SIZE=3, JSM_NAMESPACE_RANK=1)
        lsf = envs.LSFEnvironment()
        out["lsf"] = ranks(lsf) + [lsf.main_address == host, lsf.main_port, envs.LSFEnvironment.detect(),
                                   os.environ["MASTER_PORT"], os.environ["MASTER_ADDR"] == host]
        only_vars(monkeypatch, LSB_JOBID=12345, LSB_DJOB_RANKFILE=rankfile, JSM_NAMESPACE_LOCAL_RANK=1,
                  JSM_NAMESPACE_SIZE=3, MASTER_PORT=3333)
        out["lsf_port_and_missing_rank"] = [envs.LSFEnvironment().main_port, raised(envs.LSFEnvironment().global_rank)]
        only_vars(monkeypatch)
        out["lsf_outside"] = [envs.LSFEnvironment.detect(), raised(envs.LSFEnvironment)]
        for name in ("MPIEnvironment", "XLAEnvironment"):
            cls = getattr(envs, name)
            try:
                cls()
                out[name] = "built"
            except ModuleNotFoundError as exc:
                # The message names the package to install.
                out[name] = ["ModuleNotFoundError", "mpi4py" in str(exc) or "torch_xla" in str(exc), cls.detect()]
        return out
    check(scenario, {
        "kubeflow": [True, 3, 2, 0, 2, "10.0.0.4", 2222, "NotImplementedError"],
        "lsf": [True, 3, 1, 1, 0, True, 10345, True, "10345", True],
        "lsf_port_and_missing_rank": [3333, "ValueError"],
        "lsf_outside": [False, "ValueError"],
        "MPIEnvironment": ["ModuleNotFoundError", True, False],
        "XLAEnvironment": ["ModuleNotFoundError", True, False],
    })


def test_trainer_detects_the_environment_or_takes_the_plugin(monkeypatch, rank_zero_restored):
    def scenario(L):
        envs = environments(L)
        strategies = importlib.import_module("lightning.pytorch.strategies" if is_lightning(L) else "ferrotrain.strategies")

        def seen(**kwargs):
            trainer = L.Trainer(accelerator="cpu", strategy="ddp", **{"devices": 2, **kwargs})
            env = trainer.strategy.cluster_environment
            return [type(env).__name__, trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size]

        out = {}
        only_vars(monkeypatch, SLURM_NTASKS=4, SLURM_NTASKS_PER_NODE=2, SLURM_NNODES=2, SLURM_PROCID=3,
                  SLURM_LOCALID=1, SLURM_NODEID=1, SLURM_NODELIST="n[1-2]", SLURM_JOB_ID=1)
        out["slurm"] = seen(num_nodes=2)
        only_vars(monkeypatch, SLURM_NTASKS=4, SLURM_NTASKS_PER_NODE=2, SLURM_PROCID=3, SLURM_LOCALID=1,
                  SLURM_NODEID=1, TORCHELASTIC_RUN_ID="x", RANK=2, LOCAL_RANK=0, WORLD_SIZE=4, GROUP_RANK=1)
        out["torchelastic_inside_slurm"] = seen(num_nodes=2)
        only_vars(monkeypatch, MASTER_ADDR="10.0.0.4", MASTER_PORT=2222, WORLD_SIZE=2, RANK=1)
        kube = envs.KubeflowEnvironment()
        trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=1, num_nodes=2, plugins=[kube])
        out["plugin"] = [trainer.strategy.cluster_environment is kube, trainer.global_rank, trainer.node_rank,
                         trainer.world_size]
        out["one_device_has_no_environment"] = hasattr(
            L.Trainer(accelerator="cpu", devices=1, plugins=[envs.LightningEnvironment()]).strategy,
            "cluster_environment")
        both = lambda: L.Trainer(accelerator="cpu", devices=2, plugins=[envs.LightningEnvironment()],  # noqa: E731
                                 strategy=strategies.DDPStrategy(cluster_environment=envs.LightningEnvironment()))
        two = lambda: L.Trainer(accelerator="cpu", devices=2,  # noqa: E731
                                plugins=[envs.LightningEnvironment(), envs.LightningEnvironment()])
        out["refused"] = [raised(both), raised(two)]
        only_vars(monkeypatch)
        out["plain"] = seen()
        return out
    check(scenario, {
        "slurm": ["SLURMEnvironment", 3, 1, 1, 4],
        "torchelastic_inside_slurm": ["TorchElasticEnvironment", 2, 0, 1, 4],
        "plugin": [True, 1, 1, 2],
        "one_device_has_no_environment": False,
        "refused": ["MisconfigurationException", "MisconfigurationException"],
        "plain": ["LightningEnvironment", 0, 0, 0, 2],
    })


@pytest.mark.timeout(120)
def test_ddp_over_gloo_with_a_user_environment_subclass(tmp_path):
    """Two real processes: the Trainer starts the second; both read the subclass's port and the
    ranks the strategy gave it, and train the same weights."""
    def scenario(L):
        out = tmp_path / L.__name__
        out.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        env.update(OMP_NUM_THREADS="1", USER_PORT=str(find_free_port()),
                   PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"), ROOT, env.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cluster_env_worker.py"), L.__name__,
                               str(out)], env=env, capture_output=True, text=True, timeout=110)
        assert proc.returncode == 0, proc.stderr[-4000:]
        seen = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        for s in seen:
            assert s.pop("master_port") == env["USER_PORT"]
        weights = [s.pop("weights") for s in seen]
        return [seen, weights[0] == weights[1]]
    check(scenario, [[
        {"environment_is_the_plugin": True, "environment_type": "UserEnvironment", "ranks": [0, 0, 0, 2],
         "told": [["rank", 0], ["world", 2], ["rank", 0], ["world", 2]], "dist_world": 2, "dist_rank": 0},
        {"environment_is_the_plugin": True, "environment_type": "UserEnvironment", "ranks": [1, 1, 0, 2],
         "told": [["rank", 1], ["world", 2], ["rank", 1], ["world", 2]], "dist_world": 2, "dist_rank": 1},
    ], True])
