"""`python -m ferrotrain.checkpoint convert IN.ckpt OUT.ckpt`: convert a Lightning checkpoint
(read with `torch.load(weights_only=True)`, nothing else unpickled) to ferrotrain's format."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import CheckpointError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferrotrain.checkpoint", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a Lightning .ckpt (torch.save) to ferrotrain's format")
    conv.add_argument("src", help="the checkpoint to read")
    conv.add_argument("dst", help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    from ._migrate import convert

    try:
        ckpt = convert(args.src, args.dst)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted '{args.src}' -> '{args.dst}' (epoch {ckpt.get('epoch')}, global step {ckpt.get('global_step')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
