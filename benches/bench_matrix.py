"""The loop-overhead matrix (issue 16): everyday Trainer configurations, each against its own
hand-written loop over the same DataLoader, under a pseudo-terminal and with output redirected,
Lightning beside them when it is installed. One table of ratios and a PNG chart (the `bench`
extra installs matplotlib). Same options as `python -m ferrotrain.bench --matrix`:

    PYTHONPATH=python python benches/bench_matrix.py [--repeats 5] [--only "map/dict;W7"]
                                                     [--outputs terminal,redirected] [--chart m.png]
"""

import sys

from ferrotrain.bench.matrix import main

if __name__ == "__main__":
    sys.exit(main())
