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
        description="Render a procedural, seeded scene along a smooth camera path on the CPU and write it "
                    "in the TUM layout (rgb/, depth/, rgb.txt, depth.txt, groundtruth.txt, intrinsics.txt) or "
                    "the Sintel layout (training/final, camdata_left .cam, depth .dpt). The same seed writes "
                    "the same files. --laps N goes N times round a closed loop (identical poses every lap), "
                    "--noise kinect adds structured-light depth noise, --scene aliasing renders a hall of "
                    "identical office bays (loop-closure test scenes).",
    )
    p.add_argument("--out", "-o", required=True, help="output folder (created)")
    p.add_argument("--frames", "-n", type=int, default=None,
                   help="number of frames (default 60, or laps x the frames of one lap with --laps)")
    p.add_argument("--format", "-f", choices=("tum", "sintel"), default="tum", help="folder layout (default tum)")
    p.add_argument("--seed", "-s", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--dynamic", action="store_true", help="add moving objects (GT poses stay the camera's)")
    p.add_argument("--scene", choices=("room", "aliasing"), default="room",
                   help="room (default) or aliasing: a hall of identical office bays")
    p.add_argument("--laps", type=int, default=None,
                   help="go N times round the scene's closed loop path, revisiting the same poses every lap")
    p.add_argument("--noise", default="none", choices=("none", "kinect"),
                   help="depth/colour sensor noise: none (exact, default) or kinect (structured light)")
    p.add_argument("--speed", type=float, default=None,
                   help="camera speed, metres per frame (default 0.012; laps 0.014; aliasing 0.02)")
    p.add_argument("--width", type=int, default=320, help="image width (default 320)")
    p.add_argument("--height", type=int, default=240, help="image height (default 240)")
    p.add_argument("--name", default="synthetic", help="sequence name in the Sintel layout (default synthetic)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """Handler of ``run_slam.py synth``; returns the exit code."""
    from slam3r_app.errors import SourceError

    from .synthetic import SyntheticSequence

    if args.frames is not None and args.frames < 1:
        print(f"error: --frames must be >= 1, got {args.frames}", file=sys.stderr)
        return 2
    if args.laps is not None and args.laps < 1:
        print(f"error: --laps must be >= 1, got {args.laps}", file=sys.stderr)
        return 2
    if args.speed is not None and not args.speed > 0:
        print(f"error: --speed must be > 0 metres per frame, got {args.speed}", file=sys.stderr)
        return 2
    if args.width < 8 or args.height < 8:
        print(f"error: --width and --height must be >= 8, got {args.width}x{args.height}", file=sys.stderr)
        return 2
    if args.dynamic and args.scene != "room":
        print(f"error: --dynamic exists only in the room scene, got --scene {args.scene}", file=sys.stderr)
        return 2
    try:
        seq = SyntheticSequence(seed=args.seed, frames=args.frames, width=args.width, height=args.height,
                                dynamic=args.dynamic, scene=args.scene, laps=args.laps, noise=args.noise,
                                speed=args.speed)
        path = seq.write(args.out, format=args.format, name=args.name, progress=not args.quiet)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    what = [f"{args.width}x{args.height}", f"seed {args.seed}"]
    if args.scene != "room":
        what.append(f"scene {args.scene}")
    if args.dynamic:
        what.append("dynamic")
    if seq.laps is not None:
        what.append(f"{seq.laps} lap{'s' if seq.laps != 1 else ''} of {seq.frames_per_lap} frames")
    if seq.noise is not None:
        what.append(f"{seq.noise.name} noise")
    print(f"wrote {seq.frames} frames ({', '.join(what)}) in the {args.format} layout to {path}")
    print(f"map it with: run_slam.py --config {args.format}.yaml --set source.path={path}"
          + (" --set frontend=rgbd" if args.format == "tum" else ""))
    return 0
