"""Checkpoint files: `save`, `load`, `AsyncCheckpointWriter` and `save_safetensors`.

Owns reading and writing one checkpoint dict to one file. It does not decide when or what to
checkpoint (that is the Trainer's `ModelCheckpoint`), nor restore state into objects.

The file is torch's own serialization format, the zip archive `torch.save` writes (`data.pkl`
with the object tree, one stored entry per tensor, `version`, `byteorder`), so
`torch.load(path)` with its default `weights_only=True` returns the dict and Lightning reads it.
The native core writes it (the pickle opcodes of the tree, the zip framing with a CRC-32 per
entry, every entry 64-byte aligned so `torch.load(mmap=True)` maps tensors in place) and reads it
without running any pickle: it parses the restricted opcode subset itself and checks every CRC.

What a checkpoint may hold (what `torch.load(weights_only=True)` accepts without allowlisting):
nested dicts (keys None/bool/int/float/str/tuple; OrderedDict stays OrderedDict, with its
`_metadata`), lists and tuples; tensors and Parameters of any dense dtype (bool, (u)int8..64,
float16, bfloat16, float32/64, float8, complex64), on any device; None, bool, int (any size),
float (nan and inf included), str, bytes; torch.dtype, torch.device, torch.Size. Subclasses of
dict/list/tuple/str/int/float are saved as their base type; numpy values and any other object
raise `CheckpointError` naming their key path, before any file is touched. Round-trips are exact
(types, keys, dtypes, shapes, values); non-contiguous tensors come back contiguous; views of the
same memory are stored once and come back as one tensor.

API:

- `save(path, checkpoint) -> None`: synchronous; atomic (temporary file in the same folder,
  fsync, rename, fsync of the folder) and durable when it returns.
- `load(path, map_location=None, verify=True, mmap=False) -> dict`: the inverse of `save`, and
  of `torch.save` within the restricted tree. Tensors own their memory unless `mmap=True`.
- `AsyncCheckpointWriter()`: `submit(path, checkpoint)` snapshots the tensors into a reusable host
  buffer and returns while a background thread writes; `wait()`; `close()`; `buffer_nbytes`.
- `save_safetensors(path, {name: tensor})`: the weights as a safetensors file (for serving); also
  `python -m ferrotrain.checkpoint export --safetensors IN.ckpt OUT.safetensors`.
- `convert(src, dst) -> dict`: rewrite a checkpoint of ferrotrain's earlier (safetensors-based)
  format, or a legacy torch file, in this format (`python -m ferrotrain.checkpoint convert`).

Errors: `ferrotrain.errors.CheckpointError` (cannot save a value, cannot write or open a file:
the message names the key path or the file) and its subclass `CorruptCheckpointError` (damaged,
truncated or refused file: the message names the file, and the entry for a checksum mismatch).
"""

from ._async import AsyncCheckpointWriter
from ._io import load, save, save_safetensors
from ._migrate import convert

__all__ = ["AsyncCheckpointWriter", "convert", "load", "save", "save_safetensors"]
