#!/usr/bin/env python
"""A long RGB-D input for the whole-app benchmark: one lap of the synthetic room, rendered once
(in parallel), played as many laps as asked (issue 23).

    python benchmarks/make_loop_input.py OUT --frames 10000 --width 640 --height 480 --workers 16

The synthetic camera path is closed and every lap goes through the same poses
(``SyntheticSequence(laps=...)``), so a 10,000-frame stream of 33 laps needs only the first lap's
images: ``OUT/rgb.txt`` and ``OUT/depth.txt`` list 10,000 timestamps (30 frames/s) whose files
repeat the lap's, ``groundtruth.txt`` has every frame's (identical-per-lap) pose. The result is an
ordinary TUM folder (``--config tum.yaml --set source.path=OUT``). Rendering a 640x480 frame
takes 1-3 s on one CPU core, so the lap is rendered by ``--workers`` processes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slam3r_app.trajectory import format_tum  # noqa: E402
from slam3r_datasets.synthetic import TUM_DEPTH_SCALE, SyntheticSequence, format_intrinsics  # noqa: E402

_SEQ = None


def _init(width: int, height: int, laps: int, seed: int) -> None:
    global _SEQ
    _SEQ = SyntheticSequence(seed=seed, width=width, height=height, laps=laps)


def _render(args: tuple[int, str]) -> int:
    import cv2

    i, out = args
    rgb, depth = _SEQ.render(i)
    raw = np.clip(np.rint(depth.astype(np.float64) * TUM_DEPTH_SCALE), 0, 65535).astype(np.uint16)
    cv2.imwrite(str(Path(out) / "rgb" / f"{i:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(Path(out) / "depth" / f"{i:05d}.png"), raw)
    return i


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args(argv)
    out = Path(a.out)
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    probe = SyntheticSequence(seed=a.seed, width=a.width, height=a.height, laps=1)
    lap = probe.frames_per_lap
    laps = -(-a.frames // lap)
    seq = SyntheticSequence(seed=a.seed, width=a.width, height=a.height, laps=laps)
    t = time.perf_counter()
    with Pool(a.workers, initializer=_init, initargs=(a.width, a.height, laps, a.seed)) as pool:
        for _ in pool.imap_unordered(_render, [(i, str(out)) for i in range(lap)], chunksize=1):
            pass
    render_s = time.perf_counter() - t
    stamps = [seq.timestamp(i) for i in range(a.frames)]
    rgb = ["# color images (one lap, repeated)", "# timestamp filename"]
    dep = ["# depth maps (one lap, repeated)", "# timestamp filename"]
    for i, ts in enumerate(stamps):
        rgb.append(f"{ts:.6f} rgb/{i % lap:05d}.png")
        dep.append(f"{ts:.6f} depth/{i % lap:05d}.png")
    (out / "rgb.txt").write_text("\n".join(rgb) + "\n")
    (out / "depth.txt").write_text("\n".join(dep) + "\n")
    poses = seq.poses()[: a.frames]
    (out / "groundtruth.txt").write_text("# ground truth (camera-to-world, OpenCV axes)\n# timestamp tx ty tz qx qy qz qw\n"
                                         + format_tum([float(f"{s:.6f}") for s in stamps], poses))
    fx, fy, cx, cy = format_intrinsics(seq.K)
    (out / "intrinsics.txt").write_text(f"# fx fy cx cy (pixels)\n{fx!r} {fy!r} {cx!r} {cy!r}\n")
    # the same poses every lap: the repeated files are the true images of those frames
    same = float(np.abs(seq.poses()[lap] - seq.poses()[0]).max()) if laps > 1 else 0.0
    meta = {"frames": a.frames, "frames_per_lap": lap, "laps": laps, "width": a.width, "height": a.height,
            "seed": a.seed, "render_seconds": round(render_s, 1), "workers": a.workers,
            "lap_pose_repeat_max_abs_diff": same}
    (out / "loop_input.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {a.frames} frames ({laps} laps of {lap}, {a.width}x{a.height}; lap rendered in {render_s:.1f} s "
          f"by {a.workers} processes; pose repeat error {same:.2e}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
