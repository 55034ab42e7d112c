"""Regenerate the seed corpus of the torch checkpoint reader's fuzz target (rust/core/fuzz-corpus/torch/).

Each seed is a small, valid checkpoint written by `ferrotrain.checkpoint.save`, plus one written
by `torch.save`; the fuzz target (`rust/core/src/checkpoint/fuzz.rs`, run by `cargo test`)
mutates them. (rust/core/fuzz-corpus/legacy/ holds seeds of the earlier safetensors-based format,
which the legacy reader still reads; they are kept as committed.) Run from the repository root:
`PYTHONPATH=python python scripts/make-fuzz-corpus.py`.
"""

import os
from collections import OrderedDict

import torch

from ferrotrain.checkpoint import save

OUT = os.path.join("rust", "core", "fuzz-corpus", "torch")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    seeds = {
        "lightning.ckpt": {
            "epoch": 1, "global_step": 12, "pytorch-lightning_version": "2.6.6",
            "state_dict": net.state_dict(), "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [], "loops": {"progress": {"global_step": 12}},
            "callbacks": {"ModelCheckpoint{}": {"best_model_path": "a.ckpt", "best_model_score": None}},
            "hyper_parameters": {"lr": 0.1, "name": "x"},
        },
        "dtypes.ckpt": {
            str(d).replace("torch.", ""): torch.arange(6).to(d).reshape(2, 3)
            for d in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                      torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64)
        },
        "empty.ckpt": {},
        "zero_sized.ckpt": {"a": torch.zeros(0), "b": torch.zeros(3, 0, 2), "c": torch.tensor(1.5)},
        "tree.ckpt": {
            "od": OrderedDict([("z", 1), ("a", [1, 2.5, None, True, "s", b"by"])]),
            (1, 2): {"nan": float("nan"), "inf": float("-inf")}, "dtype": torch.float16,
            "device": torch.device("cpu"), "views": [torch.ones(4), torch.ones(4)[1:]],
        },
    }
    for name, ckpt in seeds.items():
        save(os.path.join(OUT, name), ckpt)
    # torch's own writer: its memo references, storage sharing and view offsets.
    base = torch.arange(12.0)
    torch.save({"view": base[2:8].view(2, 3), "same": base, "param": torch.nn.Parameter(torch.ones(2)),
                "od": OrderedDict(a=1), "bytes": b"ab", "big": 2**70},
               os.path.join(OUT, "torchsave.ckpt"))


if __name__ == "__main__":
    main()
