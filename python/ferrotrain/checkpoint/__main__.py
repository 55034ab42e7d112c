"""`python -m ferrotrain.checkpoint convert IN OUT.ckpt`: rewrite a checkpoint of an earlier
ferrotrain format (or a legacy torch file) in torch's format;
`python -m ferrotrain.checkpoint export --safetensors IN.ckpt OUT.safetensors`: the weights
(`state_dict`) as a safetensors file, for serving stacks. Nothing is unpickled."""

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
    exp = sub.add_parser("export", help="write a checkpoint's weights in another format")
    exp.add_argument("--safetensors", action="store_true", required=True, help="as a safetensors file")
    exp.add_argument("src", help="the checkpoint to read")
    exp.add_argument("dst", help="where to write the weights")
    args = parser.parse_args(argv)
    from ._migrate import convert, load_any

    try:
        if args.command == "export":
            from ._io import save_safetensors

            ckpt = load_any(args.src, map_location="cpu")
            weights = ckpt.get("state_dict")
            if not isinstance(weights, dict):
                raise CheckpointError(f"checkpoint '{args.src}' has no 'state_dict' to export")
            save_safetensors(args.dst, {k: v for k, v in weights.items() if hasattr(v, "dtype")})
            print(f"exported {len(weights)} tensors of '{args.src}' -> '{args.dst}'")
            return 0
        ckpt = convert(args.src, args.dst)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted '{args.src}' -> '{args.dst}' (epoch {ckpt.get('epoch')}, global step {ckpt.get('global_step')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
