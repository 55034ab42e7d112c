"""Tests of `ferrotrain.checkpoint`: exact round-trips of Lightning-style checkpoints in torch's
file format (torch.load reads them), corrupt and hostile files, atomicity, and the async writer."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from ferrotrain.checkpoint import AsyncCheckpointWriter, load, save
from ferrotrain.errors import CheckpointError, CorruptCheckpointError

# ---------------------------------------------------------------------------------------------
# helpers


def assert_same(a, b, path="checkpoint"):
    """Exact equality of structure, types and values (tensors compared byte for byte)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), path
        assert a.requires_grad == b.requires_grad, path
        ab = a.detach().cpu().reshape(-1).view(torch.uint8)
        bb = b.detach().cpu().reshape(-1).view(torch.uint8)
        assert torch.equal(ab, bb), f"{path}: values differ"
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], f"{path}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
        if hasattr(a, "_metadata") or hasattr(b, "_metadata"):
            assert_same(getattr(a, "_metadata", None), getattr(b, "_metadata", None), f"{path}._metadata")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def train_objects(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train_step(model, opt, sched, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 8, generator=g)
    loss = model(x).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def lightning_checkpoint():
    """A checkpoint shaped like Lightning's `Trainer.save_checkpoint` dict, after 3 Adam steps."""
    model, opt, sched = train_objects()
    for s in range(3):
        train_step(model, opt, sched, s)
    ckpt = {
        "epoch": 2,
        "global_step": 3,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "loops": {
            "fit_loop": {
                "state_dict": {},
                "epoch_loop.state_dict": {"_batches_that_stepped": 3},
                "epoch_progress": {
                    "total": {"ready": 3, "started": 3, "processed": 3, "completed": 2},
                    "current": {"ready": 3, "started": 3, "processed": 3, "completed": 2},
                },
            }
        },
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                "monitor": "val_loss",
                "best_model_score": torch.tensor(0.25),
                "best_model_path": "checkpoints/epoch=1.ckpt",
                "best_k_models": {"checkpoints/epoch=1.ckpt": torch.tensor(0.25)},
                "kth_value": torch.tensor(float("inf")),
                "last_model_path": "",
            },
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {
                "wait_count": 0,
                "stopped_epoch": 0,
                "best_score": torch.tensor(0.25, dtype=torch.float64),
                "patience": 3,
            },
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "lr": 1e-2,
            "layers": [8, 16, 4],
            "dropout": None,
            "betas": (0.9, 0.999),
            "max_norm": float("inf"),
            "precision": torch.bfloat16,
        },
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "rng_states": {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": random.getstate(),
        },
    }
    return ckpt, (model, opt, sched)


def _numpy_state():
    # As the Trainer stores it: numpy arrays are outside what torch.load(weights_only=True) reads.
    name, keys, *rest = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), *rest)


def _set_numpy_state(state):
    name, keys, *rest = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


@contextlib.contextmanager
def file_size_limit(nbytes):
    """Make the OS refuse to grow any file of this process past `nbytes` (a real write error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def big_checkpoint(mib=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"state_dict": {"w": torch.randn(mib * 1024 * 256, generator=g)}, "step": seed}


# ---------------------------------------------------------------------------------------------
# round-trips


def test_lightning_checkpoint_round_trips_exactly(tmp_path):
    ckpt, _ = lightning_checkpoint()
    path = tmp_path / "last.ckpt"
    save(path, ckpt)
    loaded = load(path)
    assert_same(ckpt, loaded)
    # The details a resume depends on:
    assert type(loaded["state_dict"]) is OrderedDict
    assert list(loaded["optimizer_states"][0]["state"]) == [0, 1, 2, 3, 4, 5]
    assert loaded["optimizer_states"][0]["param_groups"][0]["params"] == [0, 1, 2, 3, 4, 5]
    assert loaded["hyper_parameters"]["betas"] == (0.9, 0.999)
    assert type(loaded["rng_states"]["numpy"]) is tuple
    # torch reads the same file with its defaults (weights_only=True), to the same dict.
    assert_same(ckpt, torch.load(path))


def test_loaded_checkpoint_resumes_training_identically(tmp_path):
    ckpt, (model, opt, sched) = lightning_checkpoint()
    save(tmp_path / "c.ckpt", ckpt)
    loaded = load(tmp_path / "c.ckpt")
    model2, opt2, sched2 = train_objects(seed=123)
    model2.load_state_dict(loaded["state_dict"])
    opt2.load_state_dict(loaded["optimizer_states"][0])
    sched2.load_state_dict(loaded["lr_schedulers"][0])
    for s in (10, 11):
        train_step(model, opt, sched, s)
        train_step(model2, opt2, sched2, s)
    assert_same(model.state_dict(), model2.state_dict())
    # RNG states restore the same streams.
    torch.set_rng_state(loaded["rng_states"]["torch"])
    _set_numpy_state(loaded["rng_states"]["numpy"])
    random.setstate(loaded["rng_states"]["python"])
    draws = (torch.rand(3), np.random.rand(3), random.random())
    torch.set_rng_state(ckpt["rng_states"]["torch"])
    _set_numpy_state(ckpt["rng_states"]["numpy"])
    random.setstate(ckpt["rng_states"]["python"])
    assert_same(draws, (torch.rand(3), np.random.rand(3), random.random()))


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.int64,
          torch.int32, torch.int16, torch.int8, torch.uint8, torch.complex64, torch.float8_e4m3fn]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensor_dtypes_and_shapes_round_trip(tmp_path, dtype):
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(5, 7, generator=g) * 50)
    full = base.to(dtype) if dtype != torch.complex64 else torch.complex(base, -base)
    ckpt = {
        "full": full,
        "scalar": full[1, 2].clone(),  # 0-dim
        "empty": full[:0],
        "empty3d": torch.empty(2, 0, 3, dtype=dtype),
        "transposed": full.t(),  # non-contiguous
        "strided": full[::2, 1::3],
    }
    save(tmp_path / "t.ckpt", ckpt)
    loaded = load(tmp_path / "t.ckpt")
    assert_same(ckpt, loaded)
    assert loaded["transposed"].is_contiguous() and loaded["scalar"].dim() == 0


def test_python_values_keys_and_containers_round_trip(tmp_path):
    ckpt = {
        "floats": [0.1, -0.0, 1e300, 5e-324, float("nan"), float("inf"), -float("inf"), 1.0],
        "ints": [0, -1, 2**63 - 1, 2**100, -(2**70)],
        "misc": (None, True, False, "", "ünïcødé ✓", b"\x00\xffbytes", b""),
        "int_keys": {0: "a", 1: {"nested": (1, (2, [3]))}, -5: None},
        "mixed_keys": {1: 1, "1": 2, (2, "x"): 3, None: 4, 2.5: 5, True: 6},
        "empty": ({}, [], (), OrderedDict()),
        "ordered": OrderedDict([("b", 1), ("a", 2)]),
        "torch": (torch.float16, torch.device("cpu"), torch.Size([2, 3]), torch.Size([])),
        "param": nn.Parameter(torch.ones(2)),
        "frozen": nn.Parameter(torch.zeros(2), requires_grad=False),
    }
    save(tmp_path / "v.ckpt", ckpt)
    assert_same(ckpt, load(tmp_path / "v.ckpt"))
    assert_same(ckpt, torch.load(tmp_path / "v.ckpt"))


@pytest.mark.parametrize("value", [np.arange(3), np.float64(0.5)], ids=["array", "scalar"])
def test_numpy_values_are_refused_naming_the_key_path_before_any_file_is_written(tmp_path, value):
    # torch.load(weights_only=True) refuses numpy objects: they never reach a file.
    with pytest.raises(CheckpointError, match=r"\['callbacks'\]\['X'\]\['v'\]: a numpy .*torch.from_numpy"):
        save(tmp_path / "n.ckpt", {"callbacks": {"X": {"v": value}}})
    assert os.listdir(tmp_path) == []


def test_subclasses_of_builtin_types_are_saved_as_their_base_type(tmp_path):
    import collections
    import enum

    class Stage(str, enum.Enum):
        TRAIN = "train"

    Point = collections.namedtuple("Point", "x y")
    ckpt = {"stage": Stage.TRAIN, "point": Point(1, 2), "dd": collections.defaultdict(int, a=1)}
    save(tmp_path / "s.ckpt", ckpt)
    loaded = load(tmp_path / "s.ckpt")
    assert_same(loaded, {"stage": "train", "point": (1, 2), "dd": {"a": 1}})


def test_keys_that_need_escaping_and_mapping_order_round_trip(tmp_path):
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    od = OrderedDict([("a", 1), ("b", 2), ("c", 3)])
    od.move_to_end("a")  # the OrderedDict's order now differs from its dict storage's
    ckpt = {
        'quote"back\\slash': 1,
        "new\nline\ttab\x00nul\x1f": [2],
        "ünï ✓ 🙂": {"deeper": "\x7f"},
        "od": od,
        "level": Level.HIGH,
        "huge": -(2**200),
    }
    save(tmp_path / "k.ckpt", ckpt)
    loaded = load(tmp_path / "k.ckpt")
    assert list(loaded["od"]) == ["b", "c", "a"]
    assert type(loaded["level"]) is int and loaded["level"] == 3
    assert_same({**ckpt, "level": 3}, loaded)


def test_a_key_with_a_lone_surrogate_is_saved_with_an_escape(tmp_path):
    ckpt = {"bad\ud800key": torch.ones(2)}
    save(tmp_path / "u.ckpt", ckpt)
    assert torch.equal(load(tmp_path / "u.ckpt")["bad\\ud800key"], torch.ones(2))


def test_lazily_negated_and_conjugated_views_are_saved_with_their_values(tmp_path):
    z = torch.complex(torch.arange(4.0), torch.arange(4.0) + 10).conj()
    im = z.imag  # a float view with torch's negation bit set: its memory holds +10..13
    assert im.is_neg()
    ckpt = {"im": im, "z": z, "plain": torch.arange(4.0)}
    save(tmp_path / "n.ckpt", ckpt)
    loaded = load(tmp_path / "n.ckpt")
    assert torch.equal(loaded["im"], -(torch.arange(4.0) + 10))
    assert torch.equal(loaded["z"], z.resolve_conj())
    with AsyncCheckpointWriter() as writer:
        writer.submit(tmp_path / "a.ckpt", ckpt)
    assert torch.equal(load(tmp_path / "a.ckpt")["im"], -(torch.arange(4.0) + 10))


def test_a_parameter_and_a_plain_view_of_it_are_stored_once(tmp_path):
    p = nn.Parameter(torch.randn(64, 64))
    save(tmp_path / "p.ckpt", {"param": p, "state_dict": {"w": p.detach()}})
    assert os.path.getsize(tmp_path / "p.ckpt") < 2 * p.numel() * 4
    loaded = load(tmp_path / "p.ckpt")
    assert type(loaded["param"]) is nn.Parameter and torch.equal(loaded["state_dict"]["w"], p.detach())


def test_a_checkpoint_nested_too_deeply_is_an_error(tmp_path):
    deep: list = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    with pytest.raises(CheckpointError, match="nested too deeply"):
        save(tmp_path / "d.ckpt", {"deep": deep})
    assert not (tmp_path / "d.ckpt").exists()


def test_views_of_one_tensor_are_stored_once(tmp_path):
    w = torch.randn(256, 64)
    save(tmp_path / "tied.ckpt", {"state_dict": {"embed.weight": w, "head.weight": w.detach()}})
    size = os.path.getsize(tmp_path / "tied.ckpt")
    assert w.numel() * 4 < size < 2 * w.numel() * 4
    loaded = load(tmp_path / "tied.ckpt")["state_dict"]
    assert loaded["embed.weight"] is loaded["head.weight"]
    assert torch.equal(loaded["embed.weight"], w)


def test_loaded_tensors_are_writable_without_changing_the_file(tmp_path):
    save(tmp_path / "m.ckpt", {"w": torch.arange(10.0)})
    t = load(tmp_path / "m.ckpt")["w"]
    t.mul_(0)
    assert torch.equal(load(tmp_path / "m.ckpt")["w"], torch.arange(10.0))


@pytest.mark.parametrize(
    "map_location",
    ["cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda storage, loc: storage, lambda storage, loc: None],
    ids=["str", "device", "dict", "callable", "callable-none"],
)
def test_map_location_to_cpu(tmp_path, map_location):
    ckpt = {"w": torch.randn(3, 2), "n": 1}
    save(tmp_path / "c.ckpt", ckpt)
    assert_same(ckpt, load(tmp_path / "c.ckpt", map_location=map_location))


def test_map_location_moves_tensors_to_another_device(tmp_path):
    save(tmp_path / "c.ckpt", {"w": torch.randn(3, 2), "p": nn.Parameter(torch.ones(1))})
    loaded = load(tmp_path / "c.ckpt", map_location="meta")
    assert loaded["w"].device.type == "meta" and loaded["w"].shape == (3, 2)
    assert type(loaded["p"]) is nn.Parameter and loaded["p"].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_round_trip_to_their_device(tmp_path):
    ckpt = {"w": torch.randn(64, 32, device="cuda"), "cpu": torch.ones(2), "h": torch.arange(5, device="cuda").half()}
    save(tmp_path / "g.ckpt", ckpt)
    assert_same(ckpt, load(tmp_path / "g.ckpt"))
    on_cpu = load(tmp_path / "g.ckpt", map_location="cpu")
    assert on_cpu["w"].device.type == "cpu" and torch.equal(on_cpu["w"], ckpt["w"].cpu())
    with AsyncCheckpointWriter() as writer:
        expected = ckpt["w"].clone()
        writer.submit(tmp_path / "a.ckpt", ckpt)
        ckpt["w"].add_(1.0)  # modified on the device right after submit returns
    assert torch.equal(load(tmp_path / "a.ckpt")["w"], expected)


# ---------------------------------------------------------------------------------------------
# safetensors compatibility


def test_safetensors_export_opens_the_weights_under_their_state_dict_names(tmp_path):
    from safetensors.torch import load_file

    from ferrotrain.checkpoint import save_safetensors

    ckpt, (model, _, _) = lightning_checkpoint()
    save_safetensors(tmp_path / "w.safetensors", ckpt["state_dict"])
    tensors = load_file(tmp_path / "w.safetensors")
    assert sorted(tensors) == sorted(model.state_dict())
    for name, value in model.state_dict().items():
        assert_same(value, tensors[name], name)
    with pytest.raises(CheckpointError, match="str -> tensor"):
        save_safetensors(tmp_path / "x.safetensors", {"a": 1})


def test_checkpoints_in_the_earlier_safetensors_based_format_still_load(tmp_path):
    from ferrotrain.checkpoint._migrate import load_any
    from ferrotrain.checkpoint import save_safetensors

    w = torch.randn(3, 4)
    save_safetensors(tmp_path / "old.ckpt", {"w": w})  # the same file layout the old format had
    assert torch.equal(load_any(tmp_path / "old.ckpt")["w"], w)


# ---------------------------------------------------------------------------------------------
# values that cannot be saved


def test_unsupported_value_is_an_error_naming_its_key_path(tmp_path):
    ckpt = {"callbacks": {"MyCallback": {"state": [1, object()]}}}
    with pytest.raises(CheckpointError, match=r"\['callbacks'\]\['MyCallback'\]\['state'\]\[1\].*object"):
        save(tmp_path / "x.ckpt", ckpt)
    assert not (tmp_path / "x.ckpt").exists()
    with pytest.raises(CheckpointError, match=r"\['fn'\]"):
        save(tmp_path / "x.ckpt", {"fn": lambda: 0})
    with pytest.raises(CheckpointError, match="complex128"):
        save(tmp_path / "x.ckpt", {"z": torch.zeros(2, dtype=torch.complex128)})
    with pytest.raises(CheckpointError, match="sparse"):
        save(tmp_path / "x.ckpt", {"s": torch.eye(3).to_sparse()})
    with pytest.raises(CheckpointError, match="must be a dict"):
        save(tmp_path / "x.ckpt", [1, 2])
    assert os.listdir(tmp_path) == []


def test_a_cyclic_checkpoint_is_an_error(tmp_path):
    ckpt = {"a": []}
    ckpt["a"].append(ckpt)
    with pytest.raises(CheckpointError, match="cycle"):
        save(tmp_path / "x.ckpt", ckpt)


# ---------------------------------------------------------------------------------------------
# corrupt and hostile files


@pytest.fixture
def valid_file(tmp_path):
    path = tmp_path / "ok.ckpt"
    save(path, {"state_dict": {"a.weight": torch.arange(12.0).view(3, 4), "b": torch.ones(3, dtype=torch.int64)},
                "step": 5})
    return path


def _entry(path, name):
    """(data offset, size, central-directory offset of the CRC) of zip entry `name`."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
        raw = path.read_bytes()
        n, e = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
        # The central directory record of `name` (its name follows the 46-byte fixed part; the
        # CRC is 16 bytes in).
        at = raw.index(name.encode() + b"", raw.index(b"PK\x01\x02")) - 46
        assert raw[at : at + 4] == b"PK\x01\x02"
        return info.header_offset + 30 + n + e, info.file_size, at + 16


def _flip(path, at, bit=0x04):
    raw = bytearray(path.read_bytes())
    raw[at] ^= bit
    path.write_bytes(bytes(raw))


def test_flipped_byte_in_tensor_data_names_the_file_and_the_entry(valid_file):
    at, size, _ = _entry(valid_file, "archive/data/0")
    _flip(valid_file, at + 5)
    with pytest.raises(CorruptCheckpointError, match=r"ok\.ckpt.*checksum mismatch in entry 'data/0'"):
        load(valid_file)
    with pytest.raises(CorruptCheckpointError, match=r"ok\.ckpt.*checksum mismatch in entry 'data/0'"):
        load(valid_file, mmap=True)
    # verify=False trusts the file.
    assert load(valid_file, verify=False)["step"] == 5


def test_flipped_byte_in_the_object_tree_or_a_header_is_corrupt(valid_file):
    raw = valid_file.read_bytes()
    at, _, _ = _entry(valid_file, "archive/data.pkl")
    _flip(valid_file, at + 10)
    with pytest.raises(CorruptCheckpointError, match=r"ok\.ckpt.*checksum mismatch in entry 'archive/data\.pkl'"):
        load(valid_file)
    valid_file.write_bytes(raw)
    _flip(valid_file, 0, 0xFF)  # the first local header's signature
    with pytest.raises(CorruptCheckpointError, match=r"ok\.ckpt.*bad signature"):
        load(valid_file)
    valid_file.write_bytes(raw)
    _flip(valid_file, len(raw) - 22, 0xFF)  # the end-of-central-directory record
    with pytest.raises(CorruptCheckpointError, match=r"ok\.ckpt.*end-of-central-directory"):
        load(valid_file)


def test_wrong_crc_in_the_central_directory_is_corrupt(valid_file):
    _, _, crc_at = _entry(valid_file, "archive/data/1")
    _flip(valid_file, crc_at, 0x01)
    with pytest.raises(CorruptCheckpointError, match=r"ok\.ckpt.*checksum mismatch in entry 'data/1'"):
        load(valid_file)


@pytest.mark.parametrize("cut", [0, 3, 30, 200, -1, -30], ids=lambda c: f"cut{c}")
def test_truncated_file_is_corrupt(valid_file, cut):
    raw = valid_file.read_bytes()
    valid_file.write_bytes(raw[:cut])
    with pytest.raises(CorruptCheckpointError, match="ok.ckpt"):
        load(valid_file)


def _zip_with_pickle(path, payload: bytes):
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touchq\x85R.", r"the global os\.system"),
        (b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.", r"the global builtins\.eval"),
        (b"\x80\x02(cos\nsystem\ni.", r"the global os\.system"),
        (b"\x80\x02(X\x01\x00\x00\x00xi__main__\nC\n.", r"opcode 0x69"),
        (b"\x80\x02]q\x00h\x00a.", r"an object contains itself|memo 0 is empty|container"),
        (b"\x80\x02K\x01K\x02", r"truncated"),
        (b"\x80\x02\x95\x00\x00\x00\x00\x00\x00\x00\x00c__builtin__\nexec\n.", r"builtins?\.exec|__builtin__\.exec"),
    ],
    ids=["os.system", "eval", "inst", "obj-opcode", "self-reference", "truncated", "exec"],
)
def test_hostile_pickles_are_refused_without_running_anything(tmp_path, payload, message):
    path = tmp_path / "evil.ckpt"
    _zip_with_pickle(path, payload)
    with pytest.raises(CorruptCheckpointError, match=rf"evil\.ckpt.*({message})") as info:
        load(path)
    if "global" in message:
        assert "weights_only=False" in str(info.value)


def test_a_repeated_memo_reference_bomb_is_refused(tmp_path):
    # Each level is a list holding the previous one ten times: 10**30 objects once expanded.
    body = bytearray(b"\x80\x02]q\x00")
    for level in range(1, 30):
        body += b"0]q" + bytes([level]) + b"(" + (b"h" + bytes([level - 1])) * 10 + b"e"
    body += b"."
    path = tmp_path / "bomb.ckpt"
    _zip_with_pickle(path, bytes(body))
    with pytest.raises(CorruptCheckpointError, match="too many objects"):
        load(path)


def test_loading_never_runs_the_python_unpickler(tmp_path):
    # Python's unpickler looks every global up through `find_class`, which raises the audit
    # event "pickle.find_class"; torch's weights-only unpickler is tripped by its `load`.
    ckpt, _ = lightning_checkpoint()
    save(tmp_path / "c.ckpt", ckpt)
    torch.save({"w": torch.ones(2), "od": OrderedDict(a=torch.zeros(1))}, tmp_path / "t.pt")
    script = textwrap.dedent(
        """
        import sys, torch, torch._weights_only_unpickler as wo
        from ferrotrain.checkpoint import load
        events = []
        sys.addaudithook(lambda name, args: events.append(args) if name == "pickle.find_class" else None)
        real = wo.Unpickler.load
        def tripwire(self):
            events.append("weights-only unpickler")
            return real(self)
        wo.Unpickler.load = tripwire
        a = load(sys.argv[1]); b = load(sys.argv[2])
        assert not events, events
        torch.load(sys.argv[2], weights_only=False)  # the controls: both fire
        torch.load(sys.argv[2])
        assert "weights-only unpickler" in events and len(events) > 1, events
        print("ok", len(a["state_dict"]), len(b))
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.ckpt"), str(tmp_path / "t.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_torch_save_files_load_natively_and_other_files_are_corrupt(tmp_path):
    saved = {"w": torch.arange(6.0).view(2, 3).t(), "meta": {"step": 3, "name": "x"}, "b": b"\x00\x01"}
    torch.save(saved, tmp_path / "pickle.pt")
    loaded = load(tmp_path / "pickle.pt")
    assert_same(saved, loaded)
    assert loaded["w"].stride() == saved["w"].stride()  # views keep their layout, as with torch.load
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "noise").write_bytes(os.urandom(4096))
    for name in ("empty", "noise"):
        with pytest.raises(CorruptCheckpointError, match=name):
            load(tmp_path / name)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.ckpt"):
        load(tmp_path / "nothere.ckpt")


# ---------------------------------------------------------------------------------------------
# atomicity and write errors


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    save(path, {"step": 1, "w": torch.ones(16)})
    with file_size_limit(1 << 20):  # the new file (8 MiB) cannot be written in full
        with pytest.raises(CheckpointError, match="last.ckpt"):
            save(path, big_checkpoint(8))
    loaded = load(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(16))
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind


def test_crash_during_write_leaves_the_old_or_the_new_file(tmp_path):
    """A process killed at a random instant while overwriting: the file is one of the two."""
    path = tmp_path / "c.ckpt"
    script = textwrap.dedent(
        f"""
        import sys, torch
        from ferrotrain.checkpoint import save
        save({str(path)!r}, {{"step": 0, "w": torch.zeros(2 * 1024 * 1024)}})
        print("ready", flush=True)
        i = 1
        while True:
            save({str(path)!r}, {{"step": i, "w": torch.full((2 * 1024 * 1024,), float(i))}})
            i += 1
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        import time

        time.sleep(random.uniform(0.2, 0.6))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    loaded = load(path)
    assert torch.equal(loaded["w"], torch.full_like(loaded["w"], float(loaded["step"])))


@contextlib.contextmanager
def unprivileged():
    """Run file operations as a user without the rights root has over every folder."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_read_only_folder_is_an_error_naming_the_path():
    folder = tempfile.mkdtemp()
    try:
        os.chmod(folder, 0o555)
        path = os.path.join(folder, "epoch=0.ckpt")
        with unprivileged():
            with pytest.raises(CheckpointError, match=r"epoch=0\.ckpt.*(Permission denied|Read-only)"):
                save(path, {"w": torch.ones(2)})
            writer = AsyncCheckpointWriter()
            writer.submit(path, {"w": torch.ones(2)})
            with pytest.raises(CheckpointError, match=r"epoch=0\.ckpt"):
                writer.wait()
        assert os.listdir(folder) == []
    finally:
        os.chmod(folder, 0o755)
        os.rmdir(folder)


# ---------------------------------------------------------------------------------------------
# async writer


def test_async_snapshot_is_taken_before_submit_returns(tmp_path):
    ckpt = big_checkpoint(16)
    ckpt["state_dict"]["t"] = torch.randn(64, 32).t()  # non-contiguous: copied by torch
    ckpt["opt"] = {0: {"exp_avg": torch.randn(1000)}}
    expected = {"state_dict": {k: v.clone() for k, v in ckpt["state_dict"].items()}, "step": 0,
                "opt": {0: {"exp_avg": ckpt["opt"][0]["exp_avg"].clone()}}}
    with AsyncCheckpointWriter() as writer:
        writer.submit(tmp_path / "a.ckpt", ckpt)
        # The training side moves on at once: in-place updates, and a freed tensor.
        ckpt["state_dict"]["w"].add_(1.0)
        ckpt["state_dict"]["t"].zero_()
        ckpt["opt"][0]["exp_avg"].mul_(-1)
        ckpt["step"] = 99
        del ckpt
    assert_same(expected, load(tmp_path / "a.ckpt"))


def test_async_deferred_tensors_are_copied_after_submit_returns_and_hold_their_values(tmp_path):
    weights = torch.randn(3 << 20)  # 12 MiB: above the size under which nothing is deferred
    buffer = torch.randn(10)  # not deferred: copied before submit returns
    expected = {"w": weights.clone(), "b": buffer.clone(), "step": 3}
    path = tmp_path / "a.ckpt"
    with AsyncCheckpointWriter() as writer:
        writer.submit(path, {"w": weights, "b": buffer, "step": 3}, defer=[weights])
        assert writer.snapshot_pending
        buffer.add_(1.0)  # a tensor not deferred may change at once
        writer.finish_snapshot()
        assert not writer.snapshot_pending
        weights.mul_(-1)  # ... and a deferred one once the snapshot is finished
    assert_same(expected, load(path))


def test_async_a_deferred_tensor_changed_during_its_copy_is_a_warning_and_the_file_is_whole(tmp_path):
    path = tmp_path / "a.ckpt"
    save(path, {"step": 0})
    weights = torch.zeros(64 << 20, dtype=torch.uint8)
    writer = AsyncCheckpointWriter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(20):  # the change must land while the copy runs: it does within a few tries
            weights.zero_()
            writer.submit(path, {"w": weights, "step": 1}, defer=[weights])
            weights.fill_(7)
            writer.wait()
            if seen:
                break
    assert len(seen) == 1 and re.search(r"'w' of checkpoint .*a\.ckpt' was modified in place", str(seen[0].message))
    got = load(path)
    assert got["step"] == 1
    # Written again from the tensor as it is now: one value throughout, never a mix.
    assert torch.equal(got["w"], torch.full_like(weights, 7))
    # From then on this writer copies everything before submit returns.
    writer.submit(path, {"w": weights, "step": 2}, defer=[weights])
    assert not writer.snapshot_pending
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]


def test_async_writes_in_order_and_reuses_its_buffer(tmp_path):
    writer = AsyncCheckpointWriter()
    nbytes = big_checkpoint(4)["state_dict"]["w"].numel() * 4
    for step in range(3):
        writer.submit(tmp_path / f"s{step}.ckpt", big_checkpoint(4, seed=step))  # awaits the previous
        assert writer.buffer_nbytes == nbytes  # one checkpoint's tensor bytes, reused
    writer.close()
    assert not writer.in_flight
    for step in range(3):
        assert_same(load(tmp_path / f"s{step}.ckpt"), big_checkpoint(4, seed=step))


def test_async_background_error_surfaces_on_wait(tmp_path):
    writer = AsyncCheckpointWriter()
    writer.submit(tmp_path / "missing-folder" / "x.ckpt", {"w": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"missing-folder.x\.ckpt"):
        writer.wait()
    writer.wait()  # reported once; the writer stays usable
    writer.submit(tmp_path / "ok.ckpt", {"w": torch.ones(3)})
    writer.close()
    assert torch.equal(load(tmp_path / "ok.ckpt")["w"], torch.ones(3))


def test_async_background_error_surfaces_at_the_next_submit_and_at_close(tmp_path):
    path = tmp_path / "last.ckpt"
    save(path, {"step": 1})
    writer = AsyncCheckpointWriter()
    with file_size_limit(1 << 20):
        writer.submit(path, big_checkpoint(4))  # fails in the background (file too large)
        with pytest.raises(CheckpointError, match="last.ckpt"):
            writer.submit(tmp_path / "other.ckpt", {"step": 2})
    assert not (tmp_path / "other.ckpt").exists()  # the failing submit took nothing
    assert load(path) == {"step": 1}  # the previous file is intact
    writer.submit(tmp_path / "missing" / "x.ckpt", {"step": 3})
    with pytest.raises(CheckpointError, match="x.ckpt"):
        writer.close()
    with pytest.raises(CheckpointError, match="closed"):
        writer.submit(path, {"step": 4})


def test_async_unsupported_value_is_raised_by_submit(tmp_path):
    with AsyncCheckpointWriter() as writer:
        with pytest.raises(CheckpointError, match=r"\['bad'\]"):
            writer.submit(tmp_path / "x.ckpt", {"bad": {1, 2}})
    assert not (tmp_path / "x.ckpt").exists()


def test_async_submit_deletes_the_replaced_files_in_the_background(tmp_path):
    old, gone = tmp_path / "old.ckpt", tmp_path / "never-existed.ckpt"
    save(old, {"step": 0})
    with AsyncCheckpointWriter() as writer:
        writer.submit(tmp_path / "new.ckpt", {"step": 1}, remove=[old, gone])  # a missing file is fine
        writer.wait()
        assert not old.exists()
        assert load(tmp_path / "new.ckpt") == {"step": 1}


def test_async_failure_to_delete_a_replaced_file_surfaces_on_wait(tmp_path):
    blocker = tmp_path / "a-folder.ckpt"
    blocker.mkdir()  # not a file: it cannot be deleted as one
    writer = AsyncCheckpointWriter()
    writer.submit(tmp_path / "new.ckpt", {"step": 1}, remove=[blocker])
    with pytest.raises(CheckpointError, match="a-folder.ckpt"):
        writer.wait()
    assert load(tmp_path / "new.ckpt") == {"step": 1}  # the new checkpoint was written all the same
    writer.close()


# ---------------------------------------------------------------------------------------------
# loading, editing and saving in place


def _run_edit(path, code):
    script = textwrap.dedent(
        f"""
        import torch
        from ferrotrain.checkpoint import load, save
        p = {str(path)!r}
        """
    ) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


@pytest.mark.parametrize(
    "code",
    [
        # The default load owns its memory: torch.save may truncate and rewrite the same file.
        'c = load(p); c["step"] += 1; c["w"] += 1; torch.save(c, p)',
        # Memory-mapped tensors survive our own writer replacing the file (it renames).
        'c = load(p, mmap=True); c["step"] += 1; c["w"] += 1; save(p, c); assert float(c["w"][-1]) == 2.0',
    ],
    ids=["owned-then-torch.save", "mmap-then-save"],
)
def test_load_edit_and_save_in_place_keeps_the_process_and_the_file(tmp_path, code):
    path = tmp_path / "c.ckpt"
    save(path, {"step": 1, "w": torch.ones(4 * 1024 * 1024)})
    out = _run_edit(path, code)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    edited = load(path)
    assert edited["step"] == 2 and torch.equal(edited["w"], torch.full((4 * 1024 * 1024,), 2.0))


def test_mmap_load_then_a_foreign_in_place_rewrite_is_the_documented_hazard(tmp_path):
    # What `load(mmap=True)` documents (and what every load did before it owned its memory):
    # a writer that truncates the mapped file in place takes the process down with SIGBUS.
    path = tmp_path / "c.ckpt"
    save(path, {"step": 1, "w": torch.ones(4 * 1024 * 1024)})
    out = _run_edit(path, 'c = load(p, mmap=True); torch.save(c, p)')
    assert out.returncode == -signal.SIGBUS, (out.returncode, out.stderr[-2000:])
