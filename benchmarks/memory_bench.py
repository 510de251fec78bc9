#!/usr/bin/env python
"""Host memory per frame of a long run: the RSS slope over a synthetic stream (issue 14, case 6).

    python benchmarks/memory_bench.py                           # 20,000 frames, 160x120, rgbd + fusion
    python benchmarks/memory_bench.py --frames 3000 --trace     # where the growth comes from (tracemalloc)

The run is the real application: ``configs/synthetic.yaml`` (the classical RGB-D frontend, TSDF
fusion, keyframes, loop closure, trajectory export, evaluation at the end), with the synthetic
camera going round its closed path in the furnished room again and again (``synthetic_laps``), so
the scene never grows: a correct run's memory should stop growing once the room is mapped. Images
are 160x120 so that 20,000 frames take minutes on a CPU, not hours.

Every ``--every`` frames a probe plugin reads the process's resident set size (``/proc/self/statm``)
and the number of keyframes so far. Keyframes legitimately keep data (their depth for loop closure,
their features, their points), so the probe also takes over the keyframe decision after
``--keyframes-until`` frames (default 400: the room is mapped after its first lap of 306 frames):
from then on no frame is a keyframe, and the RSS slope per frame over the second half of the run is
what a non-keyframe costs. ``--keyframes-until -1`` leaves the keyframe policy in charge (what a
keyframe costs shows then). ``--json FILE`` writes the samples and the fit. ``--trace`` also compares
two tracemalloc snapshots (at 1/3 and at the end of the run) and prints the Python allocations that
grew in between, by call site (tracemalloc makes the run several times slower).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Optional

import numpy as np

from _provenance import git_commit  # benchmarks/_provenance.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slam3r_app.config_check import load_and_check  # noqa: E402
from slam3r_app.frame_loop import run  # noqa: E402
from slam3r_app.hookspecs import hookimpl  # noqa: E402
from slam3r_app.pipeline import Pipeline  # noqa: E402
from slam3r_app.types import KeyframeDecision  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
MAP_BLOCK_BYTES = 8 ** 3 * 20  # a TSDF block of 8^3 voxels: tsdf, weight, colour (float32)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Probe:
    """Samples RSS and the keyframe count every ``every`` frames (and takes tracemalloc snapshots)."""

    def __init__(self, every: int, frames: int, trace: bool, keyframes_until: Optional[int] = None) -> None:
        self.every = every
        self.keyframes_until = keyframes_until
        self.samples: list[tuple[int, int, int, float]] = []  # (frames, keyframes, rss bytes, seconds)
        self.maps: list[tuple[int, int]] = []  # the TSDF hash map's (blocks used, blocks allocated) per sample
        self.keyframes = 0
        self.t0 = time.perf_counter()
        self.trace = trace
        self.snap_at = frames // 3
        self.snapshots: list[Any] = []
        self.kf_at_snap = 0

    @hookimpl(tryfirst=True)
    def slam3r_keyframe_decision(self, frame, estimate, context):
        """After ``keyframes_until`` frames (the room is mapped) no frame is a keyframe: what a frame then
        adds to the process's memory is what a non-keyframe costs."""
        if self.keyframes_until is not None and frame.index >= self.keyframes_until:
            return KeyframeDecision(is_keyframe=False)
        return None

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        self.keyframes += int(bool(estimate.is_keyframe))
        n = frame.index + 1
        if n % self.every == 0:
            self.samples.append((n, self.keyframes, rss_bytes(), time.perf_counter() - self.t0))
            self.maps.append(_fusion_blocks(context))
        if self.trace and n == self.snap_at:
            self.kf_at_snap = self.keyframes
            self.snapshots.append(tracemalloc.take_snapshot())

    @hookimpl
    def slam3r_run_end(self, result, context):
        if self.trace:
            self.snapshots.append(tracemalloc.take_snapshot())


def _fusion_blocks(context) -> tuple[int, int]:
    """(blocks in the TSDF map, blocks its hash map has room for: what it allocated); (0, 0) without one."""
    st = context.state.get("_fusion_state")
    grid = getattr(st, "grid", None)
    if grid is None:
        return 0, 0
    hm = grid.hashmap()
    return int(hm.size()), int(hm.capacity())


def fit(samples: list[tuple[int, int, int, float]], maps: list[tuple[int, int]]) -> dict[str, Any]:
    """RSS slope per frame over the second half of the run: least squares, and Theil-Sen (the median of
    the slopes between sample pairs: one step, such as the TSDF hash map doubling its allocation when
    the map outgrows it, does not tilt it), and the same after taking out the map's own allocation
    (blocks allocated x bytes per block) from the RSS."""
    s = np.array([(f, k, r) for f, k, r, _ in samples], dtype=np.float64)
    half = s[len(s) // 2:]
    slope = float(np.polyfit(half[:, 0], half[:, 2], 1)[0]) if len(half) >= 2 else float("nan")
    i, j = np.triu_indices(len(half), 1)
    theil_sen = float(np.median((half[j, 2] - half[i, 2]) / (half[j, 0] - half[i, 0]))) if len(half) >= 2 else float("nan")
    cap = np.array([c for _, c in maps], dtype=np.float64)[len(s) // 2:]
    without_map = half[:, 2] - cap * MAP_BLOCK_BYTES
    slope_wo = float(np.polyfit(half[:, 0], without_map, 1)[0]) if len(half) >= 2 else float("nan")
    return {"bytes_per_frame_second_half": slope, "bytes_per_frame_second_half_theil_sen": theil_sen,
            "bytes_per_frame_second_half_without_map": slope_wo,
            "map_blocks_end": list(maps[-1]) if maps else None,
            "keyframes_in_second_half": int(half[-1, 1] - half[0, 1]),
            "frames_in_second_half": int(half[-1, 0] - half[0, 0]), "rss_start_mb": float(s[0, 2] / 2**20),
            "rss_end_mb": float(s[-1, 2] / 2**20), "frames": int(s[-1, 0]), "keyframes": int(s[-1, 1])}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--every", type=int, default=250, help="sample RSS every N frames")
    ap.add_argument("--keyframes-until", type=int, default=400,
                    help="no keyframe after this frame (the room is mapped by then: one lap is 306 frames), so that "
                         "the slope is what a non-keyframe costs; -1: the keyframe policy decides throughout")
    ap.add_argument("--trace", action="store_true", help="tracemalloc: the Python allocations that grew")
    ap.add_argument("--json", default=None, help="write samples and fits to this file")
    ap.add_argument("--output", default=None, help="run folder (default: a temporary one under runs/)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = ap.parse_args(argv)

    overrides = [f"source.synthetic_frames={args.frames}", "source.synthetic_laps=1", f"source.width={args.width}",
                 f"source.height={args.height}", "progress=false", "evaluation.plot=false", *args.overrides]
    cfg, host = load_and_check("synthetic.yaml", overrides=overrides)
    probe = Probe(args.every, args.frames, args.trace,
                  keyframes_until=None if args.keyframes_until < 0 else args.keyframes_until)
    host.register(probe, name="memory_probe")
    if args.trace:
        tracemalloc.start(12)
    out = args.output or str(REPO / "runs" / f"memory_bench-{time.strftime('%Y%m%d-%H%M%S')}")
    pipe = Pipeline(cfg, output=out, host=host)
    t = time.perf_counter()
    result = run(cfg, pipeline=pipe)
    seconds = time.perf_counter() - t
    res = fit(probe.samples, probe.maps)
    res.update(seconds=round(seconds, 1), run_folder=out, width=args.width, height=args.height,
               plugin_errors=result.plugin_errors, commit=git_commit(short=True) or "", date=time.strftime("%Y-%m-%d"),
               machine=f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               overrides=overrides)
    print(f"{res['frames']} frames ({res['keyframes']} keyframes) of {args.width}x{args.height} in {seconds:.0f} s; "
          f"RSS {res['rss_start_mb']:.0f} MB at frame {probe.samples[0][0]} -> {res['rss_end_mb']:.0f} MB")
    print(f"RSS slope over the second half (frames {res['frames'] - res['frames_in_second_half']}-{res['frames']}, "
          f"{res['keyframes_in_second_half']} keyframes among them): {res['bytes_per_frame_second_half'] / 1024:.2f} KB "
          f"per frame (least squares), {res['bytes_per_frame_second_half_theil_sen'] / 1024:.2f} KB (Theil-Sen), "
          f"{res['bytes_per_frame_second_half_without_map'] / 1024:.2f} KB without the TSDF map's own allocation "
          f"(map at the end: {res['map_blocks_end']} blocks used / allocated)")
    if args.trace and len(probe.snapshots) == 2:
        first, last = probe.snapshots
        frames_between = res["frames"] - probe.snap_at
        print(f"\ntracemalloc: Python allocations that grew between frame {probe.snap_at} and the end "
              f"({frames_between} frames, {probe.keyframes - probe.kf_at_snap} keyframes), bytes per frame:")
        grew = [st for st in last.compare_to(first, "traceback") if st.size_diff > 0]
        for stat in sorted(grew, key=lambda st: -st.size_diff)[:15]:
            frames = list(stat.traceback)[::-1]  # most recent call first
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[:5])
            print(f"  {stat.size_diff / max(frames_between, 1):8.1f}  ({stat.count_diff:+d} blocks)  {where}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**res, "samples": probe.samples, "map_blocks": probe.maps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
