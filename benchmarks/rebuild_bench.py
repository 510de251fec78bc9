"""What following a pose correction costs: the fusion TSDF rebuild, the point-cloud export, the viewer.

    python benchmarks/rebuild_bench.py [--frames 50 100 300] [--size 320 240] [--voxel 0.02] [--json out.json]

* fusion: ``GridBuild`` of N buffered frames (float16 depth + colour at ``--size``, which is what
  ``fusion.buffer_stride: 2`` keeps of 640x480 frames) into a fresh Open3D grid on the CPU, synchronously;
  then the same rebuild in the background while the frame loop's thread integrates new frames, to see how
  much the loop slows down (the GIL, the shared cores);
* pointcloud: placing and merging ``AnchoredPoints`` of 100 keyframes (``map_points`` at export);
* bytes per buffered frame.

Frames are the synthetic room (exact depth), rendered once and reused cyclically. Prints a table and
optionally writes JSON (with the machine's core count and load average: the figures depend on both).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[50, 100, 300])
    ap.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    ap.add_argument("--distinct", type=int, default=40, help="distinct views rendered (reused cyclically)")
    ap.add_argument("--voxel", type=float, default=0.02)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()

    from slam3r_datasets.synthetic import SyntheticSequence
    from slam3r_plugins.fusion.tsdf import GridBuild, integrate, make_grid, o3d_device
    from slam3r_plugins.maps import BufferedFrame
    from slam3r_plugins.maps.anchored import AnchoredPoints
    from slam3r_plugins.maps.common import unproject

    W, H = args.size
    seq = SyntheticSequence(seed=0, frames=args.distinct * 4, width=W, height=H)
    t = time.perf_counter()
    views = []
    for i in range(args.distinct):
        rgb, depth = seq.render(4 * i)
        views.append((BufferedFrame(i, depth.astype(np.float16), rgb, seq.K.copy(), True), seq.pose(4 * i)))
    render_s = time.perf_counter() - t
    med = float(np.median(views[0][0].depth[views[0][0].depth > 0]))
    depth_max = 3.0 * med
    device = o3d_device("cpu")

    def new_grid():
        return make_grid(args.voxel, 8, 20000, device)

    out = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()},
           "size": [W, H], "voxel": args.voxel, "bytes_per_buffered_frame": views[0][0].nbytes, "fusion": [],
           "render_s": round(render_s, 2)}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {W}x{H} buffered frames "
          f"({views[0][0].nbytes / 1024:.0f} KB each), voxel {args.voxel} m")
    for n in args.frames:
        frames = [views[i % len(views)][0] for i in range(n)]
        T = np.stack([views[i % len(views)][1] for i in range(n)])
        b = GridBuild(frames, T, 1.0, new_grid, depth_max, 4.0, device, background=False)
        assert b.grid is not None
        row = {"frames": n, "sync_s": round(b.seconds, 3), "ms_per_frame": round(1000 * b.seconds / n, 2)}
        out["fusion"].append(row)
        print(f"fusion rebuild, {n:4d} frames: {b.seconds:6.2f} s ({1000 * b.seconds / n:.1f} ms a frame)")

    # the frame loop integrating while a background rebuild runs
    n = max(args.frames)
    frames = [views[i % len(views)][0] for i in range(n)]
    T = np.stack([views[i % len(views)][1] for i in range(n)])
    live = new_grid()

    def loop_ms(count: int) -> float:
        ts = []
        for i in range(count):
            e, P = views[i % len(views)]
            t0 = time.perf_counter()
            integrate(live, e.depth.astype(np.float32), e.rgb, e.K, P, depth_max, 4.0, device)
            ts.append(time.perf_counter() - t0)
        return 1000 * float(np.median(ts))

    alone = loop_ms(20)
    b = GridBuild(frames, T, 1.0, new_grid, depth_max, 4.0, device, background=True)
    during = []
    while not b.done:
        during.append(loop_ms(1))
    b.wait()
    out["background"] = {"frames": n, "rebuild_s": round(b.seconds, 3), "loop_integrate_ms_alone": round(alone, 2),
                         "loop_integrate_ms_during": round(float(np.median(during)), 2) if during else None,
                         "loop_frames_during": len(during)}
    print(f"background rebuild of {n} frames: {b.seconds:.2f} s; the loop's own integration {alone:.1f} ms a frame "
          f"alone, {out['background']['loop_integrate_ms_during']} ms during it ({len(during)} frames)")

    # point cloud: 100 keyframes of camera-frame points, posed and merged
    acc = AnchoredPoints(0.01, 2_000_000)
    for k in range(100):
        e, P = views[k % len(views)]
        pts, _ = unproject(e.depth.astype(np.float32), e.K, None, stride=2)
        acc.add(k, pts, np.full((len(pts), 3), 128))
    poses = {k: views[k % len(views)][1] for k in range(100)}
    t0 = time.perf_counter()
    xyz, _ = acc.merged(poses.get)
    pc_s = time.perf_counter() - t0
    out["pointcloud"] = {"keyframes": 100, "points_kept": len(acc), "merged_points": len(xyz),
                         "export_s": round(pc_s, 3), "bytes": acc.nbytes}
    print(f"pointcloud: {len(acc):,} points kept over 100 keyframes ({acc.nbytes / 2**20:.1f} MB), posed and merged "
          f"into {len(xyz):,} in {pc_s:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
