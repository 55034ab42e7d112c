"""`DeepSpeedStrategy`: one process per device, the model and its optimizer handed to a DeepSpeed
engine (ZeRO stage 0-3, optionally offloaded), over gloo on the CPU or NCCL on CUDA.

Without the `deepspeed` package, building one is a clear error naming the package.

What it owns: turning the constructor's options (Lightning's names) into DeepSpeed's config, or
reading the user's config (a dict or a JSON file); `deepspeed.initialize` right after
`configure_optimizers` (one optimizer, the schedulers stay with the Trainer), with
`gradient_accumulation_steps`, `gradient_clipping` and `train_micro_batch_size_per_gpu` filled in
from the Trainer and the train loader; routing every `*_step` through the engine's forward (ZeRO-3
gathers the parameters there); the training step itself: the engine's `backward` and `step` on
every batch, with the Trainer's schedule telling the engine which batch ends an accumulation window
(the loss is divided by `accumulate_grad_batches` once, as without DeepSpeed, so the gradients are
the window's mean); and checkpoints: a folder written by every rank through
`engine.save_checkpoint`, holding ferrotrain's own state as the engine's client state, read back
with `engine.load_checkpoint` (or, with no engine, as one consolidated fp32 state dict). Ranks, the
process group, samplers and collectives are `parallel`'s.

DeepSpeed clips by norm only (`gradient_clip_algorithm="value"` is refused). On the CPU the engine
runs with DeepSpeed's CPU accelerator (it needs ninja and a C++ compiler to build its
communication op); mixed precision there is refused.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import warnings
from typing import Any, Callable, Dict, Optional, Union

import torch

from ferrotrain.errors import CheckpointError, ConfigTypeError, MisconfigurationException, NotSupportedYetError
from ferrotrain.strategies import environment as env_mod
from ferrotrain.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy, forward_redirection
from ferrotrain.utilities._overrides import is_overridden

_STAGES = {
    "deepspeed": (2, False), "deepspeed_stage_1": (1, False), "deepspeed_stage_2": (2, False),
    "deepspeed_stage_2_offload": (2, True), "deepspeed_stage_3": (3, False), "deepspeed_stage_3_offload": (3, True),
}
_OFFLOAD_DEVICES = ("cpu", "nvme")
# The precisions DeepSpeed runs itself (Lightning's `DeepSpeedPrecision`), and their config keys.
_MIXED = {"16-mixed": "fp16", "bf16-mixed": "bf16"}
PRECISIONS_CUDA = ("32-true", "16-mixed", "bf16-mixed")
PRECISIONS_CPU = ("32-true",)
CHECKPOINT_TAG = "checkpoint"
# Keys of the engine's model-states file that are DeepSpeed's, not the Trainer's client state.
_ENGINE_KEYS = (
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
    "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config",
    "ds_version", "checkpoint_parallel_dimensions",
)


def _require_package() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise MisconfigurationException(
            "`DeepSpeedStrategy` needs the `deepspeed` package, which is not installed (`pip install deepspeed`)"
        )


class DeepSpeedStrategy(ParallelStrategy):
    strategy_name = "deepspeed"
    runs_own_precision = True

    def __init__(
        self,
        accelerator: Any = None,
        zero_optimization: bool = True,
        stage: int = 2,
        remote_device: Optional[str] = None,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        offload_params_device: str = "cpu",
        nvme_path: str = "/local_nvme",
        params_buffer_count: int = 5,
        params_buffer_size: int = 100_000_000,
        max_in_cpu: int = 1_000_000_000,
        offload_optimizer_device: str = "cpu",
        optimizer_buffer_count: int = 4,
        block_size: int = 1048576,
        queue_depth: int = 8,
        single_submit: bool = False,
        overlap_events: bool = True,
        thread_count: int = 1,
        pin_memory: bool = False,
        sub_group_size: int = 1_000_000_000_000,
        contiguous_gradients: bool = True,
        overlap_comm: bool = True,
        allgather_partitions: bool = True,
        reduce_scatter: bool = True,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        zero_allow_untested_optimizer: bool = True,
        logging_batch_size_per_gpu: Union[str, int] = "auto",
        config: Optional[Union[str, os.PathLike, Dict[str, Any]]] = None,
        logging_level: int = logging.WARN,
        parallel_devices: Optional[list] = None,
        cluster_environment: Optional[env_mod.ClusterEnvironment] = None,
        loss_scale: float = 0,
        initial_scale_power: int = 16,
        loss_scale_window: int = 1000,
        hysteresis: int = 2,
        min_loss_scale: int = 1,
        partition_activations: bool = False,
        cpu_checkpointing: bool = False,
        contiguous_memory_optimization: bool = False,
        synchronize_checkpoint_boundary: bool = False,
        load_full_weights: bool = False,
        precision_plugin: Any = None,
        process_group_backend: Optional[str] = None,
        timeout: Optional[datetime.timedelta] = DEFAULT_TIMEOUT,
        exclude_frozen_parameters: bool = False,
    ) -> None:
        _require_package()
        super().__init__(process_group_backend, timeout, cluster_environment)
        for name, value in (("accelerator", accelerator), ("parallel_devices", parallel_devices),
                            ("precision_plugin", precision_plugin), ("remote_device", remote_device)):
            if value is not None:
                raise NotSupportedYetError(
                    f"`DeepSpeedStrategy({name}=...)` is not supported yet by ferrotrain: leave it None "
                    "(the Trainer's `accelerator`, `devices` and `precision` decide)"
                )
        if load_full_weights:
            raise NotSupportedYetError(
                "`DeepSpeedStrategy(load_full_weights=True)` is not supported yet by ferrotrain: resume from the "
                "folder `engine.save_checkpoint` wrote"
            )
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
            raise MisconfigurationException(f"`DeepSpeedStrategy(stage={stage!r})` must be one of 0, 1, 2, 3")
        for name, value in (("offload_optimizer_device", offload_optimizer_device),
                            ("offload_params_device", offload_params_device)):
            if value not in _OFFLOAD_DEVICES:
                raise MisconfigurationException(
                    f"`DeepSpeedStrategy({name}={value!r})` must be one of {', '.join(map(repr, _OFFLOAD_DEVICES))}"
                )
        if offload_parameters and zero_optimization and stage != 3:
            raise MisconfigurationException(
                f"`DeepSpeedStrategy(offload_parameters=True)` needs ZeRO stage 3 (DeepSpeed offloads parameters only "
                f"when it partitions them), got stage={stage}"
            )
        if offload_optimizer and zero_optimization and stage == 0:
            raise MisconfigurationException(
                "`DeepSpeedStrategy(offload_optimizer=True)` needs ZeRO stage 1, 2 or 3, got stage=0"
            )
        if logging_batch_size_per_gpu != "auto" and (
            isinstance(logging_batch_size_per_gpu, bool) or not isinstance(logging_batch_size_per_gpu, int)
            or logging_batch_size_per_gpu < 1
        ):
            raise MisconfigurationException(
                f"`DeepSpeedStrategy(logging_batch_size_per_gpu={logging_batch_size_per_gpu!r})` must be 'auto' "
                "(the train loader's batch size) or a positive int"
            )
        if isinstance(logging_level, bool) or not isinstance(logging_level, int):
            raise ConfigTypeError(
                f"`DeepSpeedStrategy(logging_level={logging_level!r})` must be an int (a `logging` level, e.g. logging.WARN)"
            )
        self.config: Dict[str, Any]
        loaded = _load_config(config)
        if loaded is None:
            loaded = _default_config(
                zero_optimization=zero_optimization, zero_allow_untested_optimizer=zero_allow_untested_optimizer,
                logging_batch_size_per_gpu=logging_batch_size_per_gpu,
                activation_checkpointing={
                    "partition_activations": partition_activations, "cpu_checkpointing": cpu_checkpointing,
                    "contiguous_memory_optimization": contiguous_memory_optimization,
                    "synchronize_checkpoint_boundary": synchronize_checkpoint_boundary,
                },
                aio={"block_size": block_size, "queue_depth": queue_depth, "single_submit": single_submit,
                     "overlap_events": overlap_events, "thread_count": thread_count},
                offload_optimizer=offload_optimizer and {
                    "device": offload_optimizer_device, "nvme_path": nvme_path,
                    "buffer_count": optimizer_buffer_count, "pin_memory": pin_memory,
                },
                offload_param=offload_parameters and {
                    "device": offload_params_device, "nvme_path": nvme_path, "buffer_count": params_buffer_count,
                    "buffer_size": params_buffer_size, "max_in_cpu": max_in_cpu, "pin_memory": pin_memory,
                },
                zero={
                    "stage": stage, "contiguous_gradients": contiguous_gradients, "overlap_comm": overlap_comm,
                    "allgather_partitions": allgather_partitions, "reduce_scatter": reduce_scatter,
                    "allgather_bucket_size": allgather_bucket_size, "reduce_bucket_size": reduce_bucket_size,
                    "sub_group_size": sub_group_size,
                },
            )
        self.config = loaded
        for key in ("optimizer", "scheduler"):
            if key in self.config:
                raise NotSupportedYetError(
                    f"A DeepSpeed config with an {key!r} section is not supported yet by ferrotrain: return the "
                    "optimizer and scheduler from `configure_optimizers`"
                )
        if "gradient_accumulation_steps" in self.config:
            raise MisconfigurationException(
                "Do not set `gradient_accumulation_steps` in the DeepSpeed config: it is set from "
                "`Trainer(accumulate_grad_batches=...)`"
            )
        self.logging_level = logging_level
        self.loss_scale = loss_scale
        self.initial_scale_power = initial_scale_power
        self.loss_scale_window = loss_scale_window
        self.hysteresis = hysteresis
        self.min_loss_scale = min_loss_scale
        self.load_full_weights = load_full_weights
        self.exclude_frozen_parameters = exclude_frozen_parameters
        self._engine_config: Optional[Dict[str, Any]] = None

    @classmethod
    def from_name(cls, name: str) -> "DeepSpeedStrategy":
        stage, offload = _STAGES[name]
        return cls(stage=stage, offload_optimizer=offload, offload_parameters=offload and stage == 3)

    @property
    def zero_stage(self) -> int:
        zero = self.config.get("zero_optimization") or {}
        return int(zero.get("stage", 0)) if isinstance(zero, dict) else 0

    @property
    def zero_stage_3(self) -> bool:
        return self.zero_stage == 3

    @property
    def deepspeed_engine(self) -> Any:
        return self._model

    @property
    def handles_gradient_accumulation(self) -> bool:
        return True

    # ---------------------------------------------------------------- layout
    def _configure(self, accelerator: str, devices: list, num_nodes: int) -> None:
        if accelerator not in ("cpu", "cuda"):
            raise NotSupportedYetError(
                f"`DeepSpeedStrategy` runs on accelerator='cpu' or 'cuda' in ferrotrain, not {accelerator!r}"
            )
        if accelerator == "cpu":
            # DeepSpeed picks its accelerator once, when it is first imported: say it before.
            chosen = os.environ.setdefault("DS_ACCELERATOR", "cpu")
            if chosen != "cpu":
                raise MisconfigurationException(
                    f"`Trainer(accelerator='cpu')` with `DeepSpeedStrategy`, but the environment sets "
                    f"DS_ACCELERATOR={chosen!r}; unset it or set it to 'cpu'"
                )
            zero = self.config.get("zero_optimization") or {}
            if isinstance(zero, dict) and any(
                isinstance(zero.get(k), dict) and zero[k].get("device") == "nvme" for k in ("offload_optimizer", "offload_param")
            ):
                raise NotSupportedYetError(
                    "NVMe offload with `DeepSpeedStrategy` needs DeepSpeed's async I/O op, built for CUDA; on the CPU "
                    "offload to 'cpu' (the parameters and optimizer states are there already)"
                )
        super()._configure(accelerator, devices, num_nodes)

    def check_precision(self, precision: str) -> None:
        allowed = PRECISIONS_CUDA if self.accelerator == "cuda" else PRECISIONS_CPU
        if precision not in allowed:
            why = (
                "DeepSpeed's CPU accelerator does not run its fp16/bf16 optimizers here"
                if self.accelerator != "cuda" and precision in PRECISIONS_CUDA else "DeepSpeed runs the precision itself"
            )
            raise NotSupportedYetError(
                f"`Trainer(precision={precision!r})` with `DeepSpeedStrategy` on accelerator={self.accelerator!r} is not "
                f"supported by ferrotrain ({why}); supported: {', '.join(map(repr, allowed))}"
            )

    def _check_trainer(self, trainer: Any) -> None:
        if trainer.gradient_clip_algorithm == "value" and trainer.gradient_clip_val:
            raise MisconfigurationException(
                "DeepSpeed does not support clipping gradients by value: use `Trainer(gradient_clip_algorithm='norm')` "
                "(DeepSpeed's `gradient_clipping`)"
            )

    # ---------------------------------------------------------------- the engine
    def wrap_model(self, module: torch.nn.Module) -> torch.nn.Module:
        # The engine needs the optimizer: it is built in `setup_optimizers`, right after `configure_optimizers`.
        self._model = None
        return module

    def setup_optimizers(self, trainer: Any, module: Any) -> None:
        import deepspeed

        self._check_trainer(trainer)
        if not module.automatic_optimization:
            raise NotSupportedYetError(
                "Manual optimization with `DeepSpeedStrategy` is not supported yet by ferrotrain"
            )
        if len(trainer.optimizers) != 1 or len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationException(
                "DeepSpeed supports one optimizer and at most one scheduler; `configure_optimizers` returned "
                f"{len(trainer.optimizers)} optimizers and {len(trainer.lr_scheduler_configs)} schedulers"
            )
        if isinstance(trainer.optimizers[0], torch.optim.LBFGS):
            raise MisconfigurationException("DeepSpeed and the LBFGS optimizer are not compatible.")
        from ferrotrain.core.module import LightningModule

        if is_overridden(module, LightningModule, "optimizer_step"):
            raise NotSupportedYetError(
                "Overriding `LightningModule.optimizer_step` with `DeepSpeedStrategy` is not supported yet by "
                "ferrotrain: DeepSpeed's engine takes the step"
            )
        for hook, what in (("backward", "DeepSpeed's engine runs the backward pass"),
                           ("configure_gradient_clipping", "DeepSpeed clips by `Trainer(gradient_clip_val=...)`")):
            if is_overridden(module, LightningModule, hook):
                warnings.warn(f"`LightningModule.{hook}` is overridden but ignored with `DeepSpeedStrategy`: {what}",
                              UserWarning, stacklevel=2)
        deepspeed.utils.logging.logger.setLevel(self.logging_level)
        config = self._config_for(trainer)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=trainer.optimizers[0], config=config, dist_init_required=False,
        )
        self._engine_config = config
        self._model = engine
        # The Trainer steps the scheduler (Lightning's loop too); the engine steps the ZeRO optimizer.
        trainer.optimizers = [optimizer]

    def _config_for(self, trainer: Any) -> Dict[str, Any]:
        config = json.loads(json.dumps(self.config))  # a copy that the engine may keep
        config["gradient_accumulation_steps"] = trainer.accumulate_grad_batches
        config.setdefault("train_micro_batch_size_per_gpu", _batch_size_of(trainer))
        config.setdefault("gradient_clipping", float(trainer.gradient_clip_val or 0.0))
        precision = trainer.precision
        if precision in _MIXED:
            key = _MIXED[precision]
            section = config.setdefault(key, {})
            section.setdefault("enabled", True)
            if key == "fp16":
                for k, v in (("loss_scale", self.loss_scale), ("initial_scale_power", self.initial_scale_power),
                             ("loss_scale_window", self.loss_scale_window), ("hysteresis", self.hysteresis),
                             ("min_loss_scale", self.min_loss_scale)):
                    section.setdefault(k, v)
        return config

    def step_fn(self, module: Any, name: str) -> Callable[..., Any]:
        engine = self._model
        if engine is None:
            return getattr(module, name)
        # Every step goes through the engine's forward (ZeRO-3 gathers the parameters there).
        return forward_redirection(engine, module, name)

    def automatic_step(self, trainer: Any) -> Any:
        if self._model is None:
            return None
        return _DeepSpeedStep(trainer, self._model)

    def clip_grad_norm(self, parameters: list, max_norm: float) -> Any:
        return None  # the engine clips (`gradient_clipping`), on the whole gradient over all ranks

    def teardown(self) -> None:
        pass  # as Lightning: the engine stays, later validate/test runs (ZeRO-3) go through it

    # ---------------------------------------------------------------- checkpoints
    def model_state_dict(self, module: torch.nn.Module) -> dict:
        if self._model is None:
            return module.state_dict()
        return {}  # the engine writes the weights (partitioned with ZeRO-3)

    def optimizer_state(self, optimizer: Any) -> dict:
        if self._model is None:
            return getattr(optimizer, "optimizer", optimizer).state_dict()
        return {}  # the engine writes each rank's partition

    def save_checkpoint(self, trainer: Any, path: str, ckpt: dict, sync: bool) -> None:
        if self._model is None:
            return super().save_checkpoint(trainer, path, ckpt, sync)
        import shutil

        from ferrotrain.trainer import checkpointing

        path = self.broadcast(path)
        self.barrier("deepspeed checkpoint")
        if self.is_global_zero and (os.path.isfile(path) or os.path.islink(path)):
            os.remove(path)
        elif self.is_global_zero and os.path.isdir(path):
            shutil.rmtree(path)  # overwritten (e.g. last.ckpt): no stale partitions of a bigger world
        self.barrier("deepspeed checkpoint folder")
        client = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}
        self._model.save_checkpoint(
            path, client_state=client, tag=CHECKPOINT_TAG, exclude_frozen_parameters=self.exclude_frozen_parameters
        )
        self.barrier("deepspeed checkpoint written")
        if self.is_global_zero:
            checkpointing.wait_for_writes(trainer)  # deletes what this checkpoint replaced

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True

    def checkpoint_exists(self, path: str) -> bool:
        return os.path.isfile(path) or _is_deepspeed_checkpoint(path)

    def load_checkpoint(self, path: str, map_location: Any, weights_only: Optional[bool] = None) -> dict:
        from ferrotrain.trainer import checkpointing

        engine = self._model
        if not os.path.isdir(path):
            if engine is not None:
                raise CheckpointError(
                    f"{path!r} is a checkpoint file; `DeepSpeedStrategy` resumes a fit from the folder the engine "
                    "wrote (`engine.save_checkpoint`)"
                )
            return checkpointing.load(path, map_location=map_location, weights_only=weights_only)
        if not _is_deepspeed_checkpoint(path):
            raise CheckpointError(f"{path!r} is not a DeepSpeed checkpoint folder (no 'latest' file)")
        if engine is None:
            # Evaluating from a DeepSpeed checkpoint without an engine: the consolidated fp32 weights.
            return _consolidated(path)
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn is not None and trainer.state.fn.value == "fit"
        strict = getattr(trainer.lightning_module, "strict_loading", True) if trainer is not None else True
        _, client = engine.load_checkpoint(
            path, load_optimizer_states=fitting, load_lr_scheduler_states=False,
            load_module_strict=True if strict is None else bool(strict),
        )
        if client is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {path!r}")
        ckpt = {k: v for k, v in client.items() if k not in _ENGINE_KEYS}
        ckpt["state_dict"] = {}
        if fitting:
            ckpt["optimizer_states"] = [{} for _ in trainer.optimizers]
        return ckpt

    def load_model_state_dict(self, module: torch.nn.Module, ckpt: dict, path: str, strict: bool) -> None:
        if self._model is not None:
            return  # the engine loaded the weights
        super().load_model_state_dict(module, ckpt, path, strict)

    def load_optimizer_states(self, optimizers: list, states: list, path: str) -> None:
        if self._model is not None:
            return  # the engine loaded each rank's partition
        super().load_optimizer_states(optimizers, states, path)


def _load_config(config: Any) -> Optional[Dict[str, Any]]:
    if config is None and os.environ.get("PL_DEEPSPEED_CONFIG_PATH"):
        config = os.environ["PL_DEEPSPEED_CONFIG_PATH"]
    if config is None:
        return None
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise MisconfigurationException(
                f"`DeepSpeedStrategy(config={path!r})`: a path to a DeepSpeed JSON config, but no such file exists"
            )
        try:
            with open(path) as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise MisconfigurationException(f"`DeepSpeedStrategy(config={path!r})` is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigTypeError(
            f"`DeepSpeedStrategy(config=...)` must be a dict or a path to a JSON file, got {type(config).__name__}"
        )
    return json.loads(json.dumps(config))


def _default_config(*, zero_optimization: bool, zero_allow_untested_optimizer: bool,
                    logging_batch_size_per_gpu: Union[str, int], activation_checkpointing: dict, aio: dict,
                    offload_optimizer: Any, offload_param: Any, zero: dict) -> Dict[str, Any]:
    """Lightning's default config for the constructor's options."""
    cfg: Dict[str, Any] = {"activation_checkpointing": activation_checkpointing, "aio": aio}
    if zero_optimization:
        if offload_optimizer:
            zero["offload_optimizer"] = offload_optimizer
        if offload_param:
            zero["offload_param"] = offload_param
        cfg = {"zero_allow_untested_optimizer": zero_allow_untested_optimizer, "zero_optimization": zero, **cfg}
    if logging_batch_size_per_gpu != "auto":
        cfg = {"train_micro_batch_size_per_gpu": logging_batch_size_per_gpu, **cfg}
    return cfg


def _batch_size_of(trainer: Any) -> int:
    """The train loader's batch size (DeepSpeed logs throughput with it), or 1 when it is not known
    yet without calling the user's `train_dataloader` hook early."""
    sources = getattr(trainer, "_fit_sources", None) or (None, None)
    loader = trainer._train_loader if getattr(trainer, "_train_loader", None) is not None else sources[0]
    sampler = getattr(loader, "batch_sampler", None)
    size = getattr(sampler, "batch_size", None) or getattr(loader, "batch_size", None)
    return int(size) if isinstance(size, int) and size > 0 else 1


def _is_deepspeed_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "latest"))


def _consolidated(path: str) -> dict:
    """A DeepSpeed checkpoint folder as one ferrotrain checkpoint dict: the client state and the
    fp32 weights gathered from every rank's partition (no process group needed)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with open(os.path.join(path, "latest")) as f:
        tag = f.read().strip()
    files = sorted(f for f in os.listdir(os.path.join(path, tag)) if f.endswith("model_states.pt"))
    if not files:
        raise CheckpointError(f"{path!r} has no model states file under {tag!r}")
    client = torch.load(os.path.join(path, tag, files[0]), map_location="cpu", weights_only=False)
    ckpt = {k: v for k, v in client.items() if k not in _ENGINE_KEYS}
    ckpt["state_dict"] = dict(get_fp32_state_dict_from_zero_checkpoint(path, tag=tag))
    ckpt.pop("optimizer_states", None)
    return ckpt


def _make_step_class() -> Any:
    from ferrotrain.loops.train_batch import STEP, ZERO_GRAD, AutomaticStep, _loss_from_output  # noqa: F401

    class DeepSpeedStep(AutomaticStep):
        """Automatic optimization through the engine: forward, `engine.backward`, `engine.step` on
        every batch (Lightning's DeepSpeed loop). The Trainer's schedule says which batch ends an
        accumulation window (`set_gradient_accumulation_boundary`), so the last, shorter window of
        an epoch steps as it does without DeepSpeed."""

        def __init__(self, trainer: Any, engine: Any) -> None:
            super().__init__(trainer)
            self.engine = engine
            self.accumulate_closure = self.closure
            self.clip_val = None  # the engine clips
            self.ov_clip = False  # warned about at setup: the engine clips

        def _backward_pass(self, loss: torch.Tensor) -> None:
            # Divided by `accumulate_grad_batches` in the closure already, as without DeepSpeed.
            self.engine.backward(loss, scale_wrt_gas=False)

        def run(self, batch: Any, batch_idx: int, flags: int) -> Any:
            self._batch = batch
            self._batch_idx = batch_idx
            self._zero = bool(flags & ZERO_GRAD)
            step = bool(flags & STEP)
            self.engine.set_gradient_accumulation_boundary(step)
            loss = self.closure()
            if loss is None:
                raise MisconfigurationException(
                    "Skipping backward by returning `None` from your `training_step` is not supported by `DeepSpeed`"
                )
            if step:
                self.after_closure()
            self.engine.step()
            if step:
                self.count_step()
            self._batch = None
            return self._batch_outputs(self._out, loss) if self.wants_outputs else None

    return DeepSpeedStep


_STEP_CLASS: Any = None


def _DeepSpeedStep(trainer: Any, engine: Any) -> Any:
    global _STEP_CLASS
    if _STEP_CLASS is None:
        _STEP_CLASS = _make_step_class()
    return _STEP_CLASS(trainer, engine)
