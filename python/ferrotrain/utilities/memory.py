"""Recognising out-of-memory errors (the batch size finder backs off on them) and freeing cached
device memory between trials. The tests match torch's messages, as Lightning's `is_oom_error`."""

from __future__ import annotations

import gc

import torch


def _message(exception: BaseException) -> str:
    # Only a RuntimeError carrying a single message string counts (Lightning's rule).
    if isinstance(exception, RuntimeError) and len(exception.args) == 1 and isinstance(exception.args[0], str):
        return exception.args[0]
    return ""


def is_cuda_out_of_memory(exception: BaseException) -> bool:
    msg = _message(exception)
    return "CUDA" in msg and "out of memory" in msg


def is_cudnn_snafu(exception: BaseException) -> bool:
    return "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED." in _message(exception)


def is_out_of_cpu_memory(exception: BaseException) -> bool:
    return "DefaultCPUAllocator: can't allocate memory" in _message(exception)


def is_oom_error(exception: BaseException) -> bool:
    return is_cuda_out_of_memory(exception) or is_cudnn_snafu(exception) or is_out_of_cpu_memory(exception)


def garbage_collection_cuda() -> None:
    """Collect garbage and release torch's cached CUDA blocks (a no-op without CUDA)."""
    gc.collect()
    if not torch.cuda.is_available():
        return
    try:
        torch.cuda.empty_cache()
    except RuntimeError as exception:
        if not is_oom_error(exception):
            raise
