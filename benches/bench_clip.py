"""W5: `clip_grad_norm_` (max norm 1.0) against `torch.nn.utils.clip_grad_norm_(foreach=True)`,
side by side in one run, single-threaded torch.

    PYTHONPATH=python python benches/bench_clip.py [--repeats N] [--quick]

Prints a table of medians and the ratio ours/torch (below 1 is faster). The two are timed
alternately, call by call, so a change of load on the machine hits both alike. Gradients are
restored before every timed call (outside the timing), so every call really clips: in place
("kept": the same gradient tensors every call, as with `zero_grad(set_to_none=False)`), or as
new tensors ("fresh": `set_to_none=True`, new gradients every step). The same functions
also run under pytest-benchmark: `pytest benches/bench_clip.py --benchmark-only`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ferrotrain.utilities.clip import clip_grad_norm_

CASES = {"200x1000": (200, 1_000), "8x4M": (8, 4_000_000)}
ORDERS = [2.0, 1.0, float("inf")]


def make_grads(count: int, numel: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.empty(numel)) for _ in range(count)]
    originals = [torch.randn(numel, generator=gen) for _ in range(count)]
    for p, g in zip(params, originals):
        p.grad = g.clone()
    return params, originals


def _restore(params, originals, fresh: bool) -> None:
    for p, g in zip(params, originals):
        if fresh:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def timed_pair(fn_a, fn_b, params, originals, repeats: int, fresh: bool = False):
    """Median seconds of `fn_a(params)` and of `fn_b(params)`, timed alternately (a, b, a, b,
    ...) so that a load change on the machine hits both alike; gradients are restored (or
    replaced) before each call, outside the timing."""
    samples = ([], [])
    for _ in range(repeats):
        for fn, out in ((fn_a, samples[0]), (fn_b, samples[1])):
            _restore(params, originals, fresh)
            t0 = time.perf_counter()
            fn(params)
            out.append(time.perf_counter() - t0)
    return statistics.median(samples[0]), statistics.median(samples[1])


def ours(norm_type):
    return lambda ps: clip_grad_norm_(ps, 1.0, norm_type)


def theirs(norm_type):
    return lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0, norm_type, foreach=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per cell (default: by case)")
    parser.add_argument("--quick", action="store_true", help="only the 200x1000 case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}")
    print(f"{'case':>9} {'grads':>5} {'norm':>5} {'ferrotrain':>12} {'torch':>12} {'ratio':>7}")
    for name, (count, numel) in CASES.items():
        if args.quick and name != "200x1000":
            continue
        repeats = args.repeats or (400 if numel < 100_000 else 21)
        params, originals = make_grads(count, numel)
        for fresh in (False, True):
            kind = "fresh" if fresh else "kept"
            for p in ORDERS:
                timed_pair(ours(p), theirs(p), params, originals, 3, fresh)  # warm-up
                a, b = timed_pair(ours(p), theirs(p), params, originals, repeats, fresh)
                print(f"{name:>9} {kind:>5} {p:>5} {a * 1e6:>9.1f} us {b * 1e6:>9.1f} us {a / b:>7.3f}")


# pytest-benchmark entry points (optional; off in normal test runs, which collect tests/ only).
def _bench(benchmark, fn, count, numel):
    torch.set_num_threads(1)
    params, originals = make_grads(count, numel)

    def setup():
        for q, g in zip(params, originals):
            q.grad.copy_(g)

    benchmark.pedantic(fn, args=(params,), setup=setup, rounds=50 if numel < 100_000 else 5)


def test_w5_ours_200x1000(benchmark):
    _bench(benchmark, ours(2.0), 200, 1_000)


def test_w5_torch_200x1000(benchmark):
    _bench(benchmark, theirs(2.0), 200, 1_000)


if __name__ == "__main__":
    main()
