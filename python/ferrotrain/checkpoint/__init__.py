"""Checkpoint files: `save`, `load` and `AsyncCheckpointWriter`.

Owns reading and writing one checkpoint dict to one file. It does not decide when or what to
checkpoint (that is the Trainer's `ModelCheckpoint`), nor restore state into objects.

The file is safetensors-compatible: an 8-byte little-endian header length, a JSON header
`{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`, then the raw tensor bytes.
`safetensors.torch.load_file(path)` / `safe_open(path, "pt")` read every tensor; the model's
weights keep their `state_dict` names, other tensors are named by key path
(e.g. `optimizer_states/0/state/0/exp_avg`). Everything that is not a tensor goes, as JSON, into
the `ferrotrain.tree` metadata entry (tensors referenced by name); each tensor's CRC-32 is in
`ferrotrain.crc32`. Nothing is pickled, on save or on load.

What a checkpoint may hold: nested dicts (str, int or other scalar/tuple keys; OrderedDict
stays OrderedDict, with its `_metadata`), lists and tuples; tensors of any dense dtype safetensors
knows (bool, (u)int8..64, float16, bfloat16, float32/64, float8, complex64), on any device;
numpy arrays and scalars; None, bool, int, float (nan and inf included), str, bytes; torch.dtype
and torch.device. This covers Lightning's checkpoint dict: model and optimizer state dicts,
scheduler and callback states, hyperparameters and the torch / CUDA / numpy / python RNG states.
Round-trips are exact (types, keys, dtypes, shapes, values); non-contiguous tensors come back
contiguous; views of the same memory are stored once and come back as one tensor. Subclasses of
dict/list/tuple/str/int/float are saved as their base type; any other value raises
`CheckpointError` naming its key path.

API:

- `save(path, checkpoint) -> None`: synchronous; atomic (temporary file in the same folder,
  fsync, rename, fsync of the folder) and durable when it returns.
- `load(path, map_location=None, verify=True) -> dict`: the inverse of `save`; tensors are
  memory-mapped without a copy; checksums verified unless `verify=False`.
- `AsyncCheckpointWriter()`: `submit(path, checkpoint)` snapshots the tensors into a reusable host
  buffer and returns while a background thread writes; `wait()`; `close()`; `buffer_nbytes`.

- `convert(src, dst) -> dict`: a Lightning `.ckpt` (`torch.save`, read with
  `torch.load(weights_only=True)` only) rewritten in this format; also
  `python -m ferrotrain.checkpoint convert IN.ckpt OUT.ckpt`. The Trainer and
  `load_from_checkpoint` read such files directly too.

Errors: `ferrotrain.errors.CheckpointError` (cannot save a value, cannot write or open a file:
the message names the key path or the file) and its subclass `CorruptCheckpointError` (damaged,
truncated or foreign file: the message names the file, and the tensor for a checksum mismatch).
"""

from ._async import AsyncCheckpointWriter
from ._io import load, save
from ._migrate import convert

__all__ = ["AsyncCheckpointWriter", "convert", "load", "save"]
