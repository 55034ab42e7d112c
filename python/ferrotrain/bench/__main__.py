"""Command line of `python -m ferrotrain.bench`: pick workloads and repetitions, print the table,
write the chart.

    python -m ferrotrain.bench [--workloads W1,W2,W3,W4,W5] [--repeats 3] [--tiny]
                               [--no-lightning] [--chart bench.png | --no-chart]
    python -m ferrotrain.bench --matrix [matrix options: --repeats, --only, --outputs, --tiny, ...]

`--matrix` runs the loop-overhead matrix instead (`ferrotrain.bench.matrix`: everyday
configurations against their own raw loops, under a pseudo-terminal and redirected).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

from ferrotrain.bench.workloads import WORKLOADS, Row, Sizes, lightning_module


def format_table(rows: List[Row]) -> str:
    medians = {(r.workload, r.config): r.median_s for r in rows}
    head = ("workload", "configuration", "median", "unit", "ratio", "vs")
    body = []
    for r in rows:
        scale, unit = (1e6, "us" + r.unit[1:]) if r.median_s < 1e-2 else (1e3, "ms" + r.unit[1:])
        base = medians.get((r.workload, r.baseline)) if r.baseline else None
        ratio = f"{r.median_s / base:.3f}" if base else ""
        body.append((r.workload, r.config, f"{r.median_s * scale:.1f}", unit, ratio, r.baseline or ""))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i in (2, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths)))
             for x in [head, *body]]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


def write_chart(rows: List[Row], path: str) -> Optional[str]:
    """A bar chart of each configuration against its workload's baseline; None when matplotlib
    is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    medians = {(r.workload, r.config): r.median_s for r in rows}
    compared = [r for r in rows if r.baseline and medians.get((r.workload, r.baseline))]
    labels = [f"{r.workload}\n{r.config}" for r in compared]
    ratios = [r.median_s / medians[(r.workload, r.baseline)] for r in compared]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(compared), 2) + 1.2))
    colors = ["tab:orange" if "lightning" in r.config else "tab:blue" for r in compared]
    ax.barh(range(len(compared)), ratios, color=colors)
    ax.set_yticks(range(len(compared)), labels, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("median / baseline of the workload (lower is better)")
    ax.set_title("ferrotrain reference workloads (one run, side by side)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--matrix" in argv:
        from ferrotrain.bench import matrix

        return matrix.main([a for a in argv if a != "--matrix"])
    ap = argparse.ArgumentParser(prog="python -m ferrotrain.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5", help="comma-separated subset of W1..W5")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions per measurement (the median is reported)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: checks that everything runs, measures nothing")
    ap.add_argument("--w3-features", type=int, default=None,
                    help="W3 layer width (the reference is 4096; default 1024, to finish quickly)")
    ap.add_argument("--no-lightning", action="store_true", help="skip the Lightning rows even when it is installed")
    ap.add_argument("--chart", default="ferrotrain-bench.png", help="where to write the PNG chart")
    ap.add_argument("--no-chart", action="store_true")
    args = ap.parse_args(argv)
    names = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    sizes = Sizes.tiny() if args.tiny else Sizes()
    if args.w3_features:
        sizes.w3_features = args.w3_features
    torch.set_num_threads(1)
    ref = None if args.no_lightning else lightning_module()
    if ref is None and not args.no_lightning:
        print("lightning is not installed: its rows are skipped")
    rows: List[Row] = []
    for name in names:
        t0 = time.perf_counter()
        rows += WORKLOADS[name](sizes, args.repeats, ref)
        print(f"{name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(format_table(rows))
    if not args.no_chart:
        path = write_chart(rows, args.chart)
        if path is None:
            print("matplotlib is not installed: no chart (pip install 'ferrotrain[bench]')")
        else:
            print(f"chart: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
