"""Convert a Human3R ``.pth`` checkpoint into ``<prefix>.safetensors`` + ``<prefix>.json``.

    python -m h3r_ros.model.convert human3r.pth [-o out_prefix] [--variant 896L]

The converted pair loads without unpickling anything and memory-mapped, and
``load_human3r('human3r.pth')`` uses it automatically when it sits beside the ``.pth`` it
was made from.
"""

from __future__ import annotations

import argparse
import sys

from h3r_ros.model.checkpoint import CheckpointError, convert_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m h3r_ros.model.convert", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="the .pth file written by the Human3R training code")
    parser.add_argument(
        "-o", "--out-prefix", help="output path without extension (default: the .pth path without its suffix)"
    )
    parser.add_argument(
        "--variant", help="configuration to use if the file carries no model string (672S, 672B, 672L, 896L)"
    )
    args = parser.parse_args(argv)
    try:
        paths = convert_checkpoint(args.checkpoint, args.out_prefix, args.variant)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
