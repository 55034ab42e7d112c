"""Checking and resolving the Trainer's constructor arguments.

Every argument is checked here, when the Trainer is built, before anything runs: a wrong type is a
`ConfigTypeError` (a `TypeError`), a wrong value a `MisconfigurationException` (a `ValueError`), and
each message names the parameter, the value given and what is allowed. Valid settings whose
behaviour is not implemented yet raise `NotSupportedYetError`. The result is a frozen
`TrainerConfig` of plain values the loops read.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ferrotrain.errors import ConfigTypeError, MisconfigurationException, NotSupportedYetError
from ferrotrain.trainer.limit_messages import announce_batch_limit


class _DefaultInt(int):
    """An int that remembers it is a constructor default.

    The reference API documents `max_epochs=1000` and `min_epochs=1`, while Lightning's real
    defaults are `None` and resolve to "1000 unless max_steps is set" and "no minimum". Marking the
    defaults keeps both: the signature shows the documented numbers, and a default left untouched
    behaves as in Lightning."""

    def __repr__(self) -> str:
        return int.__repr__(self)


DEFAULT_MAX_EPOCHS = _DefaultInt(1000)
DEFAULT_MIN_EPOCHS = _DefaultInt(1)


class _DefaultFloat(float):
    """A float that remembers it is a constructor default: `val_check_interval=1.0` left untouched
    is not announced, an explicit `1.0` is (Lightning's default is `None`)."""

    def __repr__(self) -> str:
        return float.__repr__(self)


DEFAULT_VAL_CHECK_INTERVAL = _DefaultFloat(1.0)

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = (
    "auto",
    "single_device",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "fsdp",
    "fsdp_cpu_offload",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
)
SUPPORTED_STRATEGIES = (
    "auto", "single_device", "ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false",
    "ddp_spawn", "fsdp", "fsdp_cpu_offload", "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2",
    "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
)
PRECISIONS = {
    "64": "64-true", "64-true": "64-true", "32": "32-true", "32-true": "32-true",
    "16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16-true": "16-true", "bf16-true": "bf16-true",
}
SUPPORTED_PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", "16-true", "bf16-true")
CLIP_ALGORITHMS = ("norm", "value")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int  # -1: no limit
    max_steps: int  # -1: no limit
    min_epochs: int
    # Left to their defaults: Lightning reports these None until a fit resolves them.
    max_epochs_unset: bool
    min_epochs_unset: bool
    min_steps_unset: bool
    min_steps: int
    max_time: Optional[datetime.timedelta]
    accelerator: str
    devices: Any
    strategy: Any  # a name from STRATEGIES or a Strategy object
    precision: str
    log_every_n_steps: int
    enable_progress_bar: bool
    enable_model_summary: bool
    accumulate_grad_batches: int
    gradient_clip_val: Optional[float]
    gradient_clip_algorithm: str
    val_check_interval: Union[int, float]
    check_val_every_n_epoch: Optional[int]
    num_sanity_val_steps: int
    enable_checkpointing: bool
    default_root_dir: str
    deterministic: Union[bool, str]
    limit_train_batches: Union[int, float]
    limit_val_batches: Union[int, float]
    limit_test_batches: Union[int, float]
    limit_predict_batches: Union[int, float]
    overfit_batches: Union[int, float]
    fast_dev_run: int
    num_nodes: int
    inference_mode: bool
    detect_anomaly: bool
    benchmark: Optional[bool]
    reload_dataloaders_every_n_epochs: int
    barebones: bool


def _type_name(value: Any) -> str:
    return type(value).__name__


def _fail_type(name: str, value: Any, allowed: str) -> ConfigTypeError:
    return ConfigTypeError(f"`Trainer({name}=...)` must be {allowed}, got {value!r} ({_type_name(value)})")


def _fail_value(name: str, value: Any, allowed: str, lightning: str = "") -> MisconfigurationException:
    """`lightning`: Lightning's own text for this error, which then leads the message."""
    lead = f"{lightning} " if lightning else ""
    return MisconfigurationException(f"{lead}`Trainer({name}=...)` must be {allowed}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False, lightning: str = "") -> Optional[int]:
    allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise _fail_type(name, value, allowed)
    if value < minimum:
        raise _fail_value(name, value, allowed, lightning)
    return int(value)


def _invalid_limit(name: str, value: Any) -> str:
    """Lightning's text for a batch limit out of range."""
    return f"You have passed invalid value {value} for {name}, it has to be in [0.0, 1.0] or an int."


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail_type(name, value, "True or False")
    return value


def check_limit(name: str, value: Any) -> Union[int, float]:
    """`limit_*_batches`: a fraction in [0.0, 1.0] or a number of batches."""
    allowed = "a float in [0.0, 1.0] (fraction of the batches) or an int >= 0 (number of batches)"
    if value is None:
        return 1.0
    if _is_int(value):
        if value < 0:
            raise _fail_value(name, value, allowed, _invalid_limit(name, value))
        return int(value)
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise _fail_value(name, value, allowed, _invalid_limit(name, value))
        return value
    raise _fail_type(name, value, allowed)


def _check_accelerator(value: Any) -> str:
    from ferrotrain.accelerators import accelerator_name

    value = accelerator_name(value)
    allowed = "one of " + ", ".join(repr(a) for a in ACCELERATORS) + " or an Accelerator instance"
    if not isinstance(value, str):
        raise _fail_type("accelerator", value, allowed)
    if value.lower() not in ACCELERATORS:
        raise _fail_value("accelerator", value, allowed)
    return value.lower()


def _check_devices(value: Any) -> Union[int, str, List[int]]:
    allowed = "an int >= 1, -1 or 'auto' (all), a str like '2' or '0,1', or a list of device indices"
    if isinstance(value, bool):
        raise _fail_type("devices", value, allowed)
    if _is_int(value):
        if value == 0 or value < -1:
            raise _fail_value("devices", value, allowed)
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return "auto"
        if text == "-1":
            return -1
        parts = [p.strip() for p in text.split(",")]
        if len(parts) == 1:
            if not parts[0].isdigit() or int(parts[0]) == 0:
                raise _fail_value("devices", value, allowed)
            return int(parts[0])
        indices = [p for p in parts if p != ""]
        if not indices or not all(p.isdigit() for p in indices):
            raise _fail_value("devices", value, allowed)
        return [int(p) for p in indices]
    if isinstance(value, (list, tuple)):
        if not value or not all(_is_int(v) and v >= 0 for v in value):
            raise _fail_value("devices", value, allowed)
        if len(set(value)) != len(value):
            raise _fail_value("devices", value, allowed + " without repeats")
        return [int(v) for v in value]
    raise _fail_type("devices", value, allowed)


def _check_strategy(value: Any) -> Any:
    allowed = "one of " + ", ".join(repr(s) for s in STRATEGIES)
    from ferrotrain.strategies.strategy import Strategy

    if isinstance(value, Strategy):
        return value
    if not isinstance(value, str):
        raise _fail_type("strategy", value, allowed + " or a Strategy object (DDPStrategy(...))")
    name = value.lower()
    if name not in STRATEGIES:
        raise _fail_value("strategy", value, allowed)
    if name.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise MisconfigurationException(
                f"`Trainer(strategy={value!r})` needs the `deepspeed` package, which is not installed "
                "(`pip install deepspeed`)"
            )
    if name in ("ddp_fork", "ddp_notebook"):
        from ferrotrain.strategies.ddp import FORK_UNSAFE

        raise NotSupportedYetError(f"`Trainer(strategy={value!r})` {FORK_UNSAFE}")
    if name not in SUPPORTED_STRATEGIES:
        raise NotSupportedYetError(
            f"`Trainer(strategy={value!r})` is valid but not supported yet by ferrotrain; "
            f"supported now: {', '.join(repr(s) for s in SUPPORTED_STRATEGIES)}"
        )
    return name


def _check_precision(value: Any) -> str:
    allowed = "one of 64, 32, 16, 'bf16', '64-true', '32-true', '16-mixed', 'bf16-mixed', '16-true', 'bf16-true'"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _fail_type("precision", value, allowed)
    key = str(value)
    if key not in PRECISIONS:
        raise _fail_value("precision", value, allowed)
    resolved = PRECISIONS[key]
    if key in ("16", "bf16"):
        # Lightning's warning for the legacy half-precision spellings (not for 32 and 64).
        import warnings

        warnings.warn(
            f"`precision={key}` is supported for historical reasons but its usage is discouraged. "
            f"Please set your precision to {resolved} instead!",
            UserWarning,
        )
    if resolved not in SUPPORTED_PRECISIONS:
        raise NotSupportedYetError(
            f"`Trainer(precision={value!r})` is valid but not supported yet by ferrotrain; supported now: "
            + ", ".join(repr(p) for p in SUPPORTED_PRECISIONS)
        )
    return resolved


def _check_val_check_interval(value: Any) -> Union[int, float]:
    allowed = "a float in (0.0, 1.0] (fraction of an epoch) or an int >= 1 (number of batches)"
    lightning = _invalid_limit("val_check_interval", value)
    if _is_int(value):
        if value < 1:
            raise _fail_value("val_check_interval", value, allowed, lightning)
        return int(value)
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise _fail_value("val_check_interval", value, allowed, lightning)
        return value
    raise _fail_type("val_check_interval", value, allowed)


def _check_max_time(value: Any) -> Optional[datetime.timedelta]:
    allowed = "None, a 'DD:HH:MM:SS' string, a datetime.timedelta or a dict of timedelta arguments"
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, dict):
        try:
            return datetime.timedelta(**value)
        except TypeError as exc:
            raise _fail_value("max_time", value, allowed) from exc
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise _fail_value("max_time", value, allowed)
        d, h, m, s = (int(p) for p in parts)
        return datetime.timedelta(days=d, hours=h, minutes=m, seconds=s)
    raise _fail_type("max_time", value, allowed)


def resolve(kwargs: Dict[str, Any]) -> TrainerConfig:
    k = kwargs
    max_steps = check_int("max_steps", k["max_steps"], -1, lightning=(
        f"`max_steps` must be a non-negative integer or -1 (infinite steps). You passed in {k['max_steps']}."))
    min_steps = check_int("min_steps", k["min_steps"], 0, allow_none=True)

    raw_max_epochs = k["max_epochs"]
    if raw_max_epochs is None or raw_max_epochs is DEFAULT_MAX_EPOCHS:
        # Lightning: 1000 epochs unless a step limit or a time limit is set.
        max_epochs = 1000 if (max_steps == -1 and k["max_time"] is None) else -1
    else:
        max_epochs = check_int("max_epochs", raw_max_epochs, -1, lightning=(
            f"`max_epochs` must be a non-negative integer or -1. You passed in {raw_max_epochs}."))
    raw_min_epochs = k["min_epochs"]
    if raw_min_epochs is None or raw_min_epochs is DEFAULT_MIN_EPOCHS:
        min_epochs = 1 if min_steps is not None else 0
    else:
        min_epochs = check_int("min_epochs", raw_min_epochs, 0)
    if max_epochs != -1 and min_epochs > max_epochs:
        raise MisconfigurationException(
            f"`Trainer(min_epochs={min_epochs})` must not exceed `max_epochs={max_epochs}`"
        )

    accelerator = _check_accelerator(k["accelerator"])
    devices = _check_devices(k["devices"])
    strategy = _check_strategy(k["strategy"])
    precision = _check_precision(k["precision"])

    log_every_n_steps = check_int("log_every_n_steps", k["log_every_n_steps"], 0)
    accumulate = check_int("accumulate_grad_batches", k["accumulate_grad_batches"], 1)

    clip_val = k["gradient_clip_val"]
    if clip_val is not None:
        if not _is_number(clip_val):
            raise ConfigTypeError(f"`gradient_clip_val` should be an int or a float. Got {clip_val}. "
                                  f"`Trainer(gradient_clip_val=...)` must be None or a number >= 0, got {clip_val!r} "
                                  f"({_type_name(clip_val)})")
        if clip_val < 0 or clip_val != clip_val:
            raise _fail_value("gradient_clip_val", clip_val, "None or a number >= 0")
        clip_val = float(clip_val)
    algo = k["gradient_clip_algorithm"]
    if not isinstance(algo, str):
        raise _fail_type("gradient_clip_algorithm", algo, "'norm' or 'value'")
    if algo.lower() not in CLIP_ALGORITHMS:
        raise _fail_value("gradient_clip_algorithm", algo, "'norm' or 'value'",
                          f"`gradient_clip_algorithm` {algo} is invalid. Allowed algorithms: ['value', 'norm'].")

    raw_interval = k["val_check_interval"]
    for limit_name in ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                       "limit_predict_batches", "overfit_batches", "val_check_interval"):
        if k[limit_name] is not DEFAULT_VAL_CHECK_INTERVAL:
            announce_batch_limit(limit_name, k[limit_name])
    # `None` (Lightning's default) is one validation per epoch, as 1.0.
    val_check_interval = _check_val_check_interval(1.0 if raw_interval is None else raw_interval)
    raw_every = k["check_val_every_n_epoch"]
    if raw_every is not None and not _is_int(raw_every):
        # Lightning's text and class (MisconfigurationException) for a non-int.
        raise ConfigTypeError(
            f"`check_val_every_n_epoch` should be an integer. `Trainer(check_val_every_n_epoch=...)` "
            f"must be an int >= 1 or None, got {raw_every!r} ({_type_name(raw_every)})"
        )
    check_val_every_n_epoch = check_int("check_val_every_n_epoch", raw_every, 1, allow_none=True)
    user_float = isinstance(raw_interval, float) and raw_interval is not DEFAULT_VAL_CHECK_INTERVAL
    if check_val_every_n_epoch is None and user_float:
        # Lightning refuses any float here, 1.0 included: without epochs, a fraction of one is undefined.
        raise MisconfigurationException(
            "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`. "
            f"`Trainer(val_check_interval=...)` must be an int (a number of batches) then, got {raw_interval!r}"
        )
    num_sanity_val_steps = check_int("num_sanity_val_steps", k["num_sanity_val_steps"], -1)

    root = k["default_root_dir"]
    if root is None:
        root = os.getcwd()
    elif isinstance(root, (str, os.PathLike)):
        root = os.path.expanduser(os.fspath(root))  # Lightning expands a leading `~`
    else:
        raise _fail_type("default_root_dir", root, "None, a str or an os.PathLike path")

    deterministic = k["deterministic"]
    if not (isinstance(deterministic, bool) or deterministic == "warn" or deterministic is None):
        raise _fail_value("deterministic", deterministic, "True, False, None or 'warn'")

    fast_dev_run = k["fast_dev_run"]
    if isinstance(fast_dev_run, bool):
        fast_dev_run = int(fast_dev_run)
    elif _is_int(fast_dev_run) and fast_dev_run < 0:
        raise MisconfigurationException(
            f"fast_dev_run={fast_dev_run!r} is not a valid configuration. It should be >= 0 (an int, or True/False)."
        )
    else:
        fast_dev_run = check_int("fast_dev_run", fast_dev_run, 0)

    if fast_dev_run:
        # Lightning: n batches of each loop, one epoch, no sanity check, validation every epoch.
        max_epochs, max_steps, num_sanity_val_steps = 1, fast_dev_run, 0
        val_check_interval, check_val_every_n_epoch = 1.0, 1

    num_nodes = check_int("num_nodes", k["num_nodes"], 1)
    benchmark = k["benchmark"]
    if benchmark is not None:
        check_bool("benchmark", benchmark)
    raw_reload = k["reload_dataloaders_every_n_epochs"]
    if not _is_int(raw_reload) or raw_reload < 0:
        # Lightning's text: "`reload_dataloaders_every_n_epochs` should be an int >= 0".
        cls = ConfigTypeError if not _is_int(raw_reload) else MisconfigurationException
        raise cls(
            f"`reload_dataloaders_every_n_epochs` should be an int >= 0, got {raw_reload!r} ({_type_name(raw_reload)})."
        )
    reload_every = int(raw_reload)
    overfit = check_limit("overfit_batches", k["overfit_batches"])

    # `overfit_batches` > 0 replaces the fit's limits; `fast_dev_run` then the others, and the
    # fit's too without overfitting (Lightning's `_init_debugging_flags`).
    limit_train = overfit or check_limit("limit_train_batches", k["limit_train_batches"])
    limit_val = overfit or check_limit("limit_val_batches", k["limit_val_batches"])
    limit_test = check_limit("limit_test_batches", k["limit_test_batches"])
    limit_predict = check_limit("limit_predict_batches", k["limit_predict_batches"])
    if fast_dev_run:
        if not overfit:
            limit_train = limit_val = fast_dev_run
        limit_test = limit_predict = fast_dev_run
    return TrainerConfig(
        max_epochs=max_epochs,
        max_steps=max_steps,
        min_epochs=min_epochs,
        max_epochs_unset=raw_max_epochs is None or raw_max_epochs is DEFAULT_MAX_EPOCHS,
        min_epochs_unset=raw_min_epochs is None or raw_min_epochs is DEFAULT_MIN_EPOCHS,
        min_steps_unset=min_steps is None,
        min_steps=min_steps or 0,
        max_time=_check_max_time(k["max_time"]),
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        log_every_n_steps=log_every_n_steps,
        enable_progress_bar=check_bool("enable_progress_bar", k["enable_progress_bar"]),
        enable_model_summary=check_bool("enable_model_summary", k["enable_model_summary"]),
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip_val,
        gradient_clip_algorithm=algo.lower(),
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=check_val_every_n_epoch,
        num_sanity_val_steps=num_sanity_val_steps,
        enable_checkpointing=check_bool("enable_checkpointing", k["enable_checkpointing"]),
        default_root_dir=root,
        deterministic=deterministic if deterministic is not None else False,
        limit_train_batches=limit_train,
        limit_val_batches=limit_val,
        limit_test_batches=limit_test,
        limit_predict_batches=limit_predict,
        overfit_batches=overfit,
        fast_dev_run=fast_dev_run,
        num_nodes=num_nodes,
        inference_mode=check_bool("inference_mode", k["inference_mode"]),
        detect_anomaly=check_bool("detect_anomaly", k["detect_anomaly"]),
        benchmark=benchmark,
        reload_dataloaders_every_n_epochs=reload_every,
        barebones=check_bool("barebones", k["barebones"]),
    )


def check_callbacks(value: Any) -> List[Any]:
    from ferrotrain.callbacks.callback import Callback

    allowed = "None, a Callback, or a list of Callback instances"
    if value is None:
        return []
    if isinstance(value, Callback):
        return [value]
    if isinstance(value, (list, tuple)):
        for i, cb in enumerate(value):
            if not isinstance(cb, Callback):
                raise ConfigTypeError(
                    f"`Trainer(callbacks=...)` must be {allowed}; item {i} is {cb!r} ({_type_name(cb)})"
                )
        return list(value)
    raise _fail_type("callbacks", value, allowed)


def check_logger(value: Any) -> Union[bool, List[Any]]:
    """True/None: the default logger; False: none; else the given loggers."""
    from ferrotrain.loggers.logger import Logger

    allowed = "None, True, False, a Logger, or a list of Logger instances"
    if value is None or value is True:
        return True
    if value is False:
        return []
    if isinstance(value, Logger):
        return [value]
    if isinstance(value, (list, tuple)):
        for i, lg in enumerate(value):
            if not isinstance(lg, Logger):
                raise ConfigTypeError(f"`Trainer(logger=...)` must be {allowed}; item {i} is {lg!r} ({_type_name(lg)})")
        return list(value)
    raise _fail_type("logger", value, allowed)


def check_profiler(value: Any) -> Any:
    allowed = "None, 'simple', 'pytorch' or a `ferrotrain.profilers.Profiler`"
    if value is None:
        return None
    if isinstance(value, str) and value in ("simple", "pytorch"):
        return value
    if isinstance(value, str) and value == "advanced":
        raise NotSupportedYetError("`Trainer(profiler='advanced')` is valid but not supported yet by ferrotrain")
    if isinstance(value, str):
        raise _fail_value("profiler", value, allowed)
    from ferrotrain.profilers import Profiler

    if isinstance(value, Profiler):
        return value
    raise _fail_type("profiler", value, allowed)


def reject_unsupported(name: str, value: Any, default: Any) -> None:
    """Arguments accepted for compatibility whose non-default values are not implemented yet."""
    if value is not default and value != default:
        raise NotSupportedYetError(f"`Trainer({name}={value!r})` is not supported yet by ferrotrain (only {default!r})")
