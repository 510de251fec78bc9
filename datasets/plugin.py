"""The ``datasets`` plugin: frame sources for every built-in ``source.type`` and the ``synth`` command.

Registered through the ``slam3r.plugins`` entry point ``datasets``. Returns
None for source types it does not know, so that another plugin can provide them.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from slam3r_app.hookspecs import hookimpl

from .factory import SOURCE_TYPES, make_source

__all__ = ["SOURCE_TYPES", "slam3r_make_source", "slam3r_register_commands", "cmd_synth"]


@hookimpl
def slam3r_make_source(source: Any, context: Any) -> Optional[Any]:
    """Build the reader for ``source.type`` (see :func:`slam3r_datasets.make_source`)."""
    cfg = getattr(context, "config", None)
    where = cfg.where if cfg is not None and hasattr(cfg, "where") else None
    return make_source(source, where=where)


@hookimpl
def slam3r_register_commands(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "synth",
        help="render a synthetic RGB-D sequence with exact ground truth (TUM or Sintel layout)",
        description="Render a procedural, seeded room scene along a smooth camera loop on the CPU and write it "
                    "in the TUM layout (rgb/, depth/, rgb.txt, depth.txt, groundtruth.txt, intrinsics.txt) or "
                    "the Sintel layout (training/final, camdata_left .cam, depth .dpt). The same seed writes "
                    "the same files.",
    )
    p.add_argument("--out", "-o", required=True, help="output folder (created)")
    p.add_argument("--frames", "-n", type=int, default=60, help="number of frames (default 60)")
    p.add_argument("--format", "-f", choices=("tum", "sintel"), default="tum", help="folder layout (default tum)")
    p.add_argument("--seed", "-s", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--dynamic", action="store_true", help="add moving objects (GT poses stay the camera's)")
    p.add_argument("--width", type=int, default=320, help="image width (default 320)")
    p.add_argument("--height", type=int, default=240, help="image height (default 240)")
    p.add_argument("--name", default="synthetic", help="sequence name in the Sintel layout (default synthetic)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """Handler of ``run_slam.py synth``; returns the exit code."""
    from slam3r_app.errors import SourceError

    from .synthetic import write_sequence

    if args.frames < 1:
        print(f"error: --frames must be >= 1, got {args.frames}", file=sys.stderr)
        return 2
    if args.width < 8 or args.height < 8:
        print(f"error: --width and --height must be >= 8, got {args.width}x{args.height}", file=sys.stderr)
        return 2
    try:
        path = write_sequence(args.out, format=args.format, seed=args.seed, frames=args.frames,
                              dynamic=args.dynamic, width=args.width, height=args.height, name=args.name,
                              progress=not args.quiet)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.frames} frames ({args.width}x{args.height}, seed {args.seed}"
          f"{', dynamic' if args.dynamic else ''}) in the {args.format} layout to {path}")
    print(f"map it with: run_slam.py --config {args.format}.yaml --set source.path={path}"
          + (" --set frontend=rgbd" if args.format == "tum" else ""))
    return 0
