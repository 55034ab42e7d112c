"""`python -m ferrotrain.lightning script.py [args]` / `python -m ferrotrain.lightning -m module [args]`:
run a program written for Lightning with the redirect installed before it imports anything."""

import runpy
import sys
from typing import List

from ferrotrain.lightning import install

USAGE = "usage: python -m ferrotrain.lightning (script.py | -m module | -c code) [args ...]"


def main(argv: List[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    install()
    if argv[0] in ("-m", "-c"):
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            raise SystemExit(2)
        if argv[0] == "-c":
            sys.argv = ["-c"] + argv[2:]
            sys.path[0] = ""  # as `python -c`: the current folder leads sys.path
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            return
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    import os

    script = argv[0]
    if not os.path.isfile(script):
        print(f"ferrotrain.lightning: can't open file {script!r}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = argv
    # As `python script.py` does: the script's folder, not ours, leads sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
