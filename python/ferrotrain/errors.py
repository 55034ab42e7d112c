"""The exceptions ferrotrain raises. Each subclasses the standard exception users already catch
(`ValueError` for bad settings, `TypeError` for wrong types, `RuntimeError` for failures at run
time), and the native core raises these same classes by name."""

from __future__ import annotations


class FerrotrainError(Exception):
    """Base of every ferrotrain exception."""


class MisconfigurationException(FerrotrainError, ValueError):
    """A setting or a combination of settings is invalid. Same name as Lightning's, so
    `except MisconfigurationException` keeps working."""


class ConfigTypeError(MisconfigurationException, TypeError):
    """A setting has the wrong type. Also a `MisconfigurationException`, the class Lightning
    raises for most of these."""


class NotSupportedYetError(MisconfigurationException, NotImplementedError):
    """A valid setting whose behaviour ferrotrain does not implement yet."""


class LoopStateError(FerrotrainError, RuntimeError):
    """The loop was driven out of order: a bug in ferrotrain, reported instead of crashing."""


class CheckpointError(FerrotrainError, RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The `ckpt_path` given names no file; a `FileNotFoundError`, as Lightning raises."""


class NoModelAttachedError(MisconfigurationException, AttributeError):
    """An action needs the trainer's model and none is attached yet; an `AttributeError`, as
    Lightning raises."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """A checkpoint file is damaged or malformed; the message names the file and what is wrong."""


class NonFiniteNormError(FerrotrainError, RuntimeError):
    """A gradient norm is NaN or infinite and `error_if_nonfinite=True` asked to stop; the
    message names the norm. A `RuntimeError`, as torch raises in the same case."""


class NonFiniteLossError(FerrotrainError, RuntimeError):
    """`training_step` returned a NaN or infinite loss while `Trainer(detect_anomaly=True)`; the
    message names the global step, the epoch and the batch."""


class SIGTERMException(SystemExit):
    """Raised by the fit loop once a SIGTERM-requested stop is done (the checkpoint written):
    Lightning's exception, a `SystemExit`, so an uncaught one ends the process with status 0 after
    the `on_exception` hooks ran. Catch it (or see it in `Callback.on_exception`) for custom logic."""


class _TunerExitException(Exception):
    """Raised by a tuner callback run from `Tuner` once it is done: the `fit`/`validate`/... call
    that hosted it ends there, with the teardown hooks, and is not an error (Lightning's)."""
