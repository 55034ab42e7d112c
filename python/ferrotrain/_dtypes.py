"""The native core's dtype table (`_core.DTYPES`, from rust/core/src/dtype.rs) as torch dtypes: the
one place Python learns which code or file name each dtype has. Dtypes this torch lacks (the
newer unsigned and float8 types) are left out."""

from typing import Dict, Tuple

import torch

from ferrotrain import _core

__all__ = ["FILE_NAMES", "GRAD_DTYPES", "SCALAR_CODES"]

#: torch dtype -> checkpoint file dtype name ("F32", "BF16", ...).
FILE_NAMES: Dict[torch.dtype, str] = {}
#: torch dtype -> the scalar code the native metric reader takes.
SCALAR_CODES: Dict[torch.dtype, int] = {}
for _torch_name, _file_name, _code in _core.DTYPES:
    _dtype = getattr(torch, _torch_name, None)
    if _dtype is None:
        continue
    FILE_NAMES[_dtype] = _file_name
    if _code is not None:
        SCALAR_CODES[_dtype] = _code

#: The dtypes of the native clip math, indexed by their code (the float scalar codes 0-3).
GRAD_DTYPES: Tuple[torch.dtype, ...] = tuple(
    sorted((d for d in SCALAR_CODES if d.is_floating_point), key=SCALAR_CODES.__getitem__)
)
