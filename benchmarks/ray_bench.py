#!/usr/bin/env python
"""Wall time of ``run_slam.py bench`` over a 6-sequence synthetic list: one process vs Ray workers.

    python benchmarks/ray_bench.py                              # sequential, --workers 1, --workers 2
    python benchmarks/ray_bench.py --modes seq w2 --frames 90   # a quicker look

Six sequences are written once with ``run_slam.py synth`` (TUM layout, under the names of six of
the upstream TUM list's sequences, seeds 0-5) into ``--data`` and benchmarked with
``bench --config tum.yaml --protocol app --set frontend=rgbd`` (the TUM protocol: 90 frames at
stride 3; the rgbd frontend with TSDF fusion, loop closure and evo, as the config ships), each mode
as the real command line in a subprocess: ``seq`` (no --workers: one process), ``w1``
(``--workers 1``) and ``w2`` (``--workers 2``: a local Ray with 2 CPUs). Recorded per mode: the
wall time of the whole command (Ray start and stop included), its exit code, the load average
before and after (the machine may be shared: it is recorded, not hidden), and every row of its
``bench.csv`` (status, frames, frames/s, the run's own wall time and node). One JSON line per mode
goes to ``--out`` (default ``benchmarks/results/ray_bench_<date>.jsonl``); a table is printed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _provenance import cpu_model, git_commit  # benchmarks/_provenance.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
SEQUENCES = tuple(f"rgbd_dataset_freiburg3_{s}" for s in (
    "sitting_static", "sitting_xyz", "sitting_halfsphere", "walking_static", "walking_xyz", "walking_rpy"))
MODES = {"seq": [], "w1": ["--workers", "1"], "w2": ["--workers", "2"]}


def write_data(data: Path, frames: int, width: int, height: int) -> None:
    for seed, name in enumerate(SEQUENCES):
        folder = data / "tum" / name
        if (folder / "rgb.txt").is_file():
            continue
        subprocess.run([sys.executable, str(REPO / "run_slam.py"), "synth", "--out", str(folder), "--frames",
                        str(frames), "--width", str(width), "--height", str(height), "--seed", str(seed), "-q"],
                       check=True, stdout=subprocess.DEVNULL)


def run_mode(mode: str, data: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    out = work / f"{mode}-{time.time_ns()}"
    cmd = [sys.executable, str(REPO / "run_slam.py"), "bench", "--config", "tum.yaml", "--protocol", "app",
           "--root", str(data), "--out", str(out), "--set", "frontend=rgbd", "--set", "evaluation.plot=false",
           "--set", "progress=false", *MODES[mode]]
    for s in extra:
        cmd += ["--set", s]
    load_before = os.getloadavg()
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - t
    rows = []
    if (out / "bench.csv").is_file():
        with open(out / "bench.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["status"] not in ("missing",)]
    return {"mode": mode, "workers": MODES[mode][1:] and int(MODES[mode][1]) or None, "wall_s": round(wall, 2),
            "rc": p.returncode, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "rows": [{k: r[k] for k in ("sequence", "status", "frames", "ate", "fps", "wall_s", "node", "peak_mem_gb")}
                     for r in rows],
            "stderr_tail": p.stderr[-1500:] if p.returncode not in (0,) else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    ap.add_argument("--frames", type=int, default=270, help="frames per synthetic sequence (the protocol takes "
                                                             "every 3rd, at most 90; default 270)")
    ap.add_argument("--size", default="320x240", help="image size WxH (default 320x240)")
    ap.add_argument("--data", default=None, help="where the sequences are written (kept; default a temp folder)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="more config overrides for every mode")
    ap.add_argument("--out", default=None, help="raw results (JSON lines)")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    tmp = tempfile.TemporaryDirectory(prefix="ray_bench_")
    data = Path(args.data) if args.data else Path(tmp.name) / "data"
    write_data(data, args.frames, width, height)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"ray_bench_{time.strftime('%Y%m%d')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    common = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), "cpus": os.cpu_count(),
              "cpu_model": cpu_model(), "python": platform.python_version(), "sequences": len(SEQUENCES),
              "frames_per_sequence": min(90, -(-args.frames // 3)), "size": f"{width}x{height}",
              "overrides": ["frontend=rgbd", "evaluation.plot=false", *args.extra]}
    try:
        import ray

        common["ray"] = ray.__version__
    except ImportError:
        common["ray"] = None
    results = []
    for mode in args.modes:
        r = {**common, **run_mode(mode, data, Path(tmp.name), args.extra)}
        results.append(r)
        with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{mode}: {r['wall_s']:.1f} s (rc {r['rc']}, load {r['loadavg_before'][0]:.1f} -> "
              f"{r['loadavg_after'][0]:.1f})", file=sys.stderr)
    base = next((r["wall_s"] for r in results if r["mode"] == "seq"), None)
    print(f"\n{len(SEQUENCES)} sequences x {common['frames_per_sequence']} frames ({common['size']}), rgbd frontend, "
          f"{common['cpus']} CPUs ({common['cpu_model']}), commit {str(common['commit'])[:7]}, Ray {common['ray']}\n")
    print("| mode | wall (s) | vs one process | ok | mean run wall (s) | load avg before / after |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ok = [x for x in r["rows"] if x["status"] == "ok" and x["sequence"] != "mean"]
        runs = [float(x["wall_s"]) for x in ok if x["wall_s"]]
        mean_run = sum(runs) / len(runs) if runs else float("nan")
        speed = f"{base / r['wall_s']:.2f}x" if base else "-"
        print(f"| {r['mode']} | {r['wall_s']:.1f} | {speed} | {len(ok)}/{len(SEQUENCES)} | {mean_run:.1f} | "
              f"{r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |")
    print(f"\nraw: {out}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
