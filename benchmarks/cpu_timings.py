#!/usr/bin/env python
"""What a run costs on a small CPU machine, as a user runs it: the README's "Measured results".

    python benchmarks/cpu_timings.py                     # every case, 1 repetition
    python benchmarks/cpu_timings.py --repeat 3 --cases demo synthetic

Each case is the real command line (``run_slam.py --config ...``) in a subprocess. Recorded per
run: the wall time of the whole command (start-up, imports, model creation and writing the outputs
included), the frames and the run's own time from ``summary.json`` (frames/s), the median time per
frame and per stage after the warm-up frames (``timing``), the peak resident memory of the process
(``ru_maxrss`` of the child), and the machine: CPU count, model name, the load average before the
run (other work on a shared machine slows every number down: it is recorded, not hidden), the
commit and the date. One JSON line per run goes to ``--out`` (default
``benchmarks/results/cpu_timings_<date>.jsonl``); a Markdown table is printed.
"""
from __future__ import annotations

import argparse
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

CASES: dict[str, tuple[str, list[str], str]] = {
    "demo": ("demo.yaml", [], "rgbd frontend, TUM fr1_rpy sample (75 frames, 640x480), TSDF 1 cm, loop closure, evo"),
    "demo_no_bundle_adjustment": ("demo.yaml", ["disable=[bundle_adjustment]"],
                                  "the demo without the end-of-run bundle adjustment (the tracker alone)"),
    "demo_match_at_end": ("demo.yaml", ["bundle_adjustment.match_during_run=false"],
                          "the demo with the adjustment's feature matching all done when the stream ends"),
    "demo_all_cores": ("demo.yaml", ["rgbd.deterministic=false"],
                       "the same with Open3D on every core (not bit-reproducible)"),
    "synthetic": ("synthetic.yaml", [], "rgbd frontend, synthetic room (60 frames, 320x240), TSDF 2 cm, evo"),
    "synthetic_loop": ("synthetic_loop.yaml", [], "rgbd, synthetic room, 2 laps (612 frames, 160x120), "
                                                  "Kinect-like noise, loop closure"),
    "stream3r_cpu": ("tum.yaml", ["source.path=sample:tum_fr1_rpy", "source.max_frames=8", "model.random_weights=true",
                                  "model.device=cpu", "model.mode=window"],
                     "STream3R full model (random weights), CPU float32, 518x392 input, window(5), 8 frames"),
}


def run_case(name: str, workdir: Path) -> dict[str, Any]:
    config, sets, what = CASES[name]
    out = workdir / f"{name}-{time.time_ns()}"
    cmd = [sys.executable, str(REPO / "run_slam.py"), "--config", config, "--output", str(out)]
    for s in ["progress=false", *sets]:
        cmd += ["--set", s]
    load = os.getloadavg()
    log = workdir / f"{name}.stderr"
    t = time.perf_counter()
    with open(log, "w") as err:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
        _, status, ru = os.wait4(p.pid, 0)  # this child's own resource usage (peak RSS, CPU time)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    p.returncode = code
    rec: dict[str, Any] = {"case": name, "what": what, "command": " ".join(cmd[1:]), "exit": code,
                           "wall_s": round(wall, 2), "load_before": [round(x, 2) for x in load],
                           "cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "max_rss_mb": round(ru.ru_maxrss / 1024, 1)}
    try:
        summary = json.loads((out / "summary.json").read_text())
        timing = summary.get("timing", {})
        stages = timing.get("stages", {})
        rec.update(frames=summary["frames"], run_s=summary["seconds"], fps=summary["fps"],
                   frame_median_ms=timing.get("frame_median_ms"),
                   stages_median_ms={k: v["median_ms"] for k, v in stages.items()},
                   end_of_run_s=timing.get("end_of_run_s", {}))
        metrics = summary.get("metrics", {})
        if "ate" in metrics:
            rec["ate_m"] = metrics["ate"]
    except (OSError, ValueError, KeyError) as e:
        rec["error"] = f"{type(e).__name__}: {e}; stderr: {log.read_text()[-500:]}"
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"cpu_timings_{time.strftime('%Y%m%d')}.jsonl"))
    args = ap.parse_args(argv)
    machine = {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
               "commit": git_commit(short=True) or "", "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.cases:
            for _ in range(args.repeat):
                rec = {**run_case(name, Path(d)), **machine}
                rows.append(rec)
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name}: exit {rec['exit']}, {rec['wall_s']} s wall, {rec.get('fps')} frames/s, "
                      f"load {rec['load_before'][0]}", file=sys.stderr)
    print(f"\n{machine['cpus']} CPUs ({machine['cpu_model']}), commit {machine['commit']}, {machine['date']}\n")
    print("| case | frames | whole command, s | frames/s (run) | median ms a frame | peak RSS, MB | load before |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r.get('frames')} | {r['wall_s']} | {r.get('fps')} | {r.get('frame_median_ms')} | "
              f"{r['max_rss_mb']} | {r['load_before'][0]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
