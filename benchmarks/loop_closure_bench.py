"""Loop closure on the synthetic scenes: accuracy, map quality, false loops and recall, live cost.

    python benchmarks/loop_closure_bench.py                    # everything below, ~10-20 min on 2 cores
    python benchmarks/loop_closure_bench.py --only loop        # one part: loop | aliasing | live
    python benchmarks/loop_closure_bench.py --json benchmarks/results/loop_closure_<date>.json

Parts (each run twice, loop closure on and off; the rgbd frontend on the noisy scenes):

* ``loop``: ``configs/synthetic_loop.yaml`` (two laps, Kinect-like noise, 612 frames at 160x120):
  ATE (Sim(3), the upstream protocol) and ATE SE(3) against the exact poses, and the fused mesh's
  mean / median distance to the true surfaces after the trajectory's rigid alignment, in metres
  and in voxels.
* ``aliasing``: ``configs/synthetic_aliasing.yaml`` (a hall of identical bays): every accepted loop
  is checked against the scene's exact geometry (true view overlap of the two keyframes,
  ``slam3r_datasets.synthetic_truth``): false loops (overlap < 0.1) and the recall -- the fraction
  of second-lap keyframes that truly revisit a first-lap keyframe and got a loop.
* ``live``: the loop scene played as a live source at a fixed rate (a reader thread hands the
  loop the newest frame and drops the rest, as a camera does): median per-frame time of the
  frame loop and frames dropped, loop closure on (background worker) vs off.

Prints a table per part and writes the raw numbers (with machine, date, commit) as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from _provenance import git_commit  # benchmarks/_provenance.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _provenance() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit() or "", "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def _run(config: str, out: Path, lc: bool, extra=()) -> tuple[Any, Any]:
    from slam3r_app.config import load_config
    from slam3r_app.frame_loop import run
    from slam3r_app.pipeline import Pipeline

    overrides = ["progress=false", "viewer.enabled=false", *extra]
    if not lc:
        overrides.append("disable=[loop_closure]")
    cfg = load_config(config, overrides=overrides)
    pipe = Pipeline(cfg, output=str(out))
    t0 = time.perf_counter()
    result = run(cfg, pipeline=pipe)
    result.info["wall_s"] = time.perf_counter() - t0
    return pipe, result


def _sequence(pipe):
    from slam3r_datasets.synthetic import SyntheticSequence

    src = pipe.config.run.source
    return SyntheticSequence(seed=src.seed, laps=src.synthetic_laps, width=src.width, height=src.height,
                             scene=src.synthetic_scene, frames=src.synthetic_frames)


def _rigid_alignment(P: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from evo.core.geometry import umeyama_alignment

    R, t, _ = umeyama_alignment(P[:, :3, 3].T, G[:, :3, 3].T, False)
    return R, t


def _mesh_distance(pipe, result, seq) -> dict[str, float]:
    import open3d as o3d

    path = pipe.context.out / "mesh.ply"
    if not path.is_file():
        return {}
    V = np.asarray(o3d.io.read_triangle_mesh(str(path)).vertices)
    P = result.pose_array()
    G = seq.poses()[: len(P)]
    R, t = _rigid_alignment(P, G)
    d = seq.scene.distance_to_surface(V @ R.T + t)
    voxel = float(pipe.config.plugin_options["fusion"].voxel_size or 0)
    return {"mesh_vertices": int(len(V)), "mesh_mean_m": float(d.mean()), "mesh_median_m": float(np.median(d)),
            "voxel_m": voxel, "mesh_mean_voxels": float(d.mean() / voxel) if voxel else None}


def part_loop(tmp: Path) -> dict[str, Any]:
    rows = {}
    for lc in (False, True):
        pipe, result = _run("synthetic_loop.yaml", tmp / f"loop_{lc}", lc)
        seq = _sequence(pipe)
        m = result.metrics
        row = {"ate_sim3_m": m.get("ate"), "ate_se3_m": m.get("ate_se3"), "frames": result.frames_seen,
               "loops": m.get("loops_accepted", 0), "corrections": pipe.corrections.applied,
               "lost": pipe.context.frontend.stats().get("lost") if pipe.context.frontend else None,
               "wall_s": round(result.info["wall_s"], 1), **_mesh_distance(pipe, result, seq)}
        rows["on" if lc else "off"] = row
    return rows


def loop_error(loop: dict[str, Any], truth: Any) -> tuple[float, float]:
    """How far an accepted loop's measured relative pose is from the true one: (metres, degrees)."""
    T = np.asarray(loop["transform"], dtype=np.float64)
    true = np.linalg.inv(truth.pose(loop["candidate"])) @ truth.pose(loop["query"])
    D = np.linalg.inv(true) @ T
    ang = float(np.degrees(np.arccos(np.clip((np.trace(D[:3, :3]) - 1) / 2, -1, 1))))
    return float(np.linalg.norm(D[:3, 3])), ang


def part_aliasing(tmp: Path, min_true: float = 0.1, revisit: float = 0.3) -> dict[str, Any]:
    from slam3r_datasets.synthetic_truth import SequenceTruth

    rows = {}
    for lc in (False, True):
        pipe, result = _run("synthetic_aliasing.yaml", tmp / f"alias_{lc}", lc)
        m = result.metrics
        row: dict[str, Any] = {"ate_sim3_m": m.get("ate"), "ate_se3_m": m.get("ate_se3"),
                               "wall_s": round(result.info["wall_s"], 1)}
        st = pipe.context.state.get("_loop_closure")
        if lc and st is not None and st.closer is not None:
            truth = SequenceTruth(_sequence(pipe))
            loops = st.closer.stats.loops
            overlaps = [truth.view_overlap(lp["query"], lp["candidate"]) for lp in loops]
            errors = [loop_error(lp, truth) for lp in loops]
            false = [lp for lp, ov, (et, er) in zip(loops, overlaps, errors)
                     if ov < min_true or et > 0.1 or er > 5.0]
            kfs = result.keyframe_indices
            lap = truth.sequence.frames // max(truth.sequence.laps or 1, 1)
            second = [k for k in kfs if k >= lap]
            first = [k for k in kfs if k < lap - 30]
            revisiting = [k for k in second if any(truth.view_overlap(k, j) >= revisit for j in first)]
            closed = {lp["query"] for lp in loops}
            row.update(loops=len(loops), false_loops=len(false), false_loop_pairs=[(f["candidate"], f["query"]) for f in false],
                       min_true_overlap=round(min(overlaps), 3) if overlaps else None,
                       max_loop_error_m=round(max(e[0] for e in errors), 4) if errors else None,
                       max_loop_error_deg=round(max(e[1] for e in errors), 3) if errors else None,
                       rejected_implausible=st.closer.stats.rejected_implausible,
                       revisiting_keyframes=len(revisiting), revisits_closed=len(closed & set(revisiting)),
                       recall=round(len(closed & set(revisiting)) / len(revisiting), 3) if revisiting else None)
        rows["on" if lc else "off"] = row
    return rows


class _LiveSynthetic:
    """The loop scene delivered like a camera: a reader thread renders frames at ``fps``; the consumer
    always gets the newest one, and frames it was too slow for are dropped and counted."""

    def __init__(self, source: Any, fps: float) -> None:
        from slam3r_app.sources import FrameSource

        self.inner, self.fps = source, fps

        class Live(FrameSource):
            is_live = True
            has_depth = True
            has_gt = True
            kind = "synthetic-live"

            def __init__(s) -> None:
                super().__init__()
                s.dropped = 0

            def __len__(s) -> int:
                return len(source)

            def _iter_raw(s) -> Iterator[Any]:
                frames = source.frames()
                slot: list = []
                cond = threading.Condition()
                done = threading.Event()
                taken = [0]

                def reader() -> None:
                    period = 1.0 / fps
                    t = time.perf_counter()
                    for f in frames:
                        with cond:
                            if slot:
                                s.dropped += 1
                                slot.clear()
                            slot.append(f)
                            cond.notify()
                        t += period
                        time.sleep(max(0.0, t - time.perf_counter()))
                    done.set()
                    with cond:
                        cond.notify()

                th = threading.Thread(target=reader, daemon=True)
                th.start()
                while True:
                    with cond:
                        while not slot and not done.is_set():
                            cond.wait(0.5)
                        if not slot:
                            return
                        f = slot.pop()
                    taken[0] += 1
                    yield f

        self.source = Live()


def part_live(tmp: Path, fps: float) -> dict[str, Any]:
    from slam3r_app.config import load_config
    from slam3r_app.frame_loop import run
    from slam3r_app.hookspecs import hookimpl
    from slam3r_app.pipeline import Pipeline
    from slam3r_datasets.synthetic import SyntheticSource

    rows = {}
    for lc in (False, True):
        overrides = ["progress=false", "viewer.enabled=false", "source.prefetch=0", "disable=[fusion,pointcloud]"]
        if not lc:
            overrides[-1] = "disable=[fusion,pointcloud,loop_closure]"
        cfg = load_config("synthetic_loop.yaml", overrides=overrides)
        src_cfg = cfg.run.source
        inner = SyntheticSource(seed=src_cfg.seed, laps=src_cfg.synthetic_laps, noise=src_cfg.synthetic_noise,
                                width=src_cfg.width, height=src_cfg.height)
        live = _LiveSynthetic(inner, fps).source

        class Provide:
            def __init__(self, live):
                self.live = live

            @hookimpl(tryfirst=True)
            def slam3r_make_source(self, source, context):
                return self.live

        pipe = Pipeline(cfg, output=str(tmp / f"live_{lc}"))
        pipe.host.register(Provide(live), "live_source")
        result = run(cfg, pipeline=pipe)
        stages = pipe.timer.summary()["stages"]
        med = lambda k, stages=stages: stages.get(k, {}).get("median_ms")  # noqa: E731
        st = pipe.context.state.get("_loop_closure")
        rows["on" if lc else "off"] = {
            "frames_tracked": result.frames_seen, "dropped": int(getattr(live, "dropped", 0)),
            "frontend_ms": med("frontend"), "backends_ms": med("backends"),
            "loop_closure_ms": med("backends.loop_closure"), "frame_ms": med("frame"),
            "loops": result.metrics.get("loops_accepted", 0),
            "background": bool(st.background) if st is not None else None,
            "ate_se3_m": result.metrics.get("ate_se3")}
    return rows


def _print(name: str, rows: dict[str, Any]) -> None:
    keys = sorted({k for r in rows.values() for k in r if not isinstance(r[k], (list, dict))})
    print(f"\n## {name}\n")
    print("| | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, r in rows.items():
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        print(f"| loop closure {label} | " + " | ".join(cells) + " |")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("loop", "aliasing", "live"), action="append")
    ap.add_argument("--fps", type=float, default=8.0, help="live part: frames per second delivered")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)
    parts = args.only or ["loop", "aliasing", "live"]
    out: dict[str, Any] = {"provenance": _provenance()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for part in parts:
            rows = {"loop": part_loop, "aliasing": part_aliasing}.get(part)
            res = rows(tmp) if rows else part_live(tmp, args.fps)
            out[part] = res
            _print(part, res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
