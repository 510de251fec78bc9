#!/usr/bin/env python
"""The whole app, every default plugin, as a user runs it, over a long stream (issue 23).

    python benchmarks/make_loop_input.py /tmp/loop --frames 10000 --workers 16
    python benchmarks/app_gpu_bench.py --input /tmp/loop --frames 10000 --json OUT/app.json [--viewer]

Runs ``--config tum.yaml`` (STream3R frontend, keyframes, fusion, point map, loop closure,
trajectory, exports as configured, evaluation: every plugin the config enables) on the TUM folder
``--input`` with ``source.stride=1`` and ``source.max_frames=--frames``, random weights (speed does
not depend on them), plus a probe plugin that records:

* every frame: the wall time at which its hooks ran (frames per second over windows of
  ``--window`` frames: the sustained rate);
* every ``--every`` frames: host RSS (``/proc/self/statm``), CUDA memory allocated / reserved and
  the peak allocated since the previous sample, the KV-cache size and the keyframes so far.

Prints the per-stage medians (``summary.json`` -> ``timing``), the rates, GPU and host memory,
and the host-memory slope (KB per frame over the second half, least squares and Theil-Sen);
``--json`` writes everything with the machine, versions and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
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

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Probe:
    """Per-frame times into a preallocated array; memory samples every ``every`` frames."""

    def __init__(self, frames: int, every: int, partial: Optional[str] = None) -> None:
        self.every = every
        self.partial = partial  # a JSON file rewritten every 1000 frames (what is kept if the run is cut)
        self.t = np.full(frames + 1, np.nan)
        self.samples: list[dict[str, Any]] = []
        self.keyframes = 0
        self.n = 0
        try:
            import torch

            self.cuda = torch.cuda if torch.cuda.is_available() else None
        except ImportError:  # pragma: no cover
            self.cuda = None

    @hookimpl(trylast=True)
    def slam3r_process_frame(self, frame, estimate, context):
        self.keyframes += int(bool(estimate.is_keyframe))
        if self.n < len(self.t):
            self.t[self.n] = time.perf_counter()
        self.n += 1
        if self.n % self.every == 0:
            s = {"frame": self.n, "t": time.perf_counter(), "rss_mb": rss_bytes() / 2**20,
                 "keyframes": self.keyframes}
            fe = context.frontend
            if fe is not None and getattr(fe, "session", None) is not None:
                s["cache_frames"] = fe.session.num_cached_frames
            if self.cuda is not None:
                s["gpu_alloc_gb"] = self.cuda.memory_allocated() / 1e9
                s["gpu_reserved_gb"] = self.cuda.memory_reserved() / 1e9
                s["gpu_peak_gb"] = self.cuda.max_memory_allocated() / 1e9
                self.cuda.reset_peak_memory_stats()
            self.samples.append(s)
            if self.partial and self.n % 1000 == 0:
                done = self.t[: self.n]
                timer = getattr(fe, "timer", None)
                Path(self.partial).write_text(json.dumps(
                    {"frames_done": self.n, "samples": self.samples,
                     "timing": timer.summary() if timer is not None else None,
                     "frontend_stats": fe.stats() if fe is not None else None,
                     "frame_times_ms": np.round(np.diff(done) * 1e3, 2).tolist()}, default=str))


def slopes(frames: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(least squares, Theil-Sen) slope of ``values`` over ``frames``."""
    if len(frames) < 2:
        return float("nan"), float("nan")
    ls = float(np.polyfit(frames, values, 1)[0])
    i, j = np.triu_indices(len(frames), 1)
    return ls, float(np.median((values[j] - values[i]) / (frames[j] - frames[i])))


def env_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.node(),
                            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                            "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover
        pass
    for mod in ("open3d", "gtsam", "evo", "viser", "triton", "cv2"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            info[mod] = f"missing ({type(e).__name__})"
    return info


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="TUM folder (benchmarks/make_loop_input.py)")
    ap.add_argument("--config", default="tum.yaml")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=100, help="memory sample every N frames")
    ap.add_argument("--window", type=int, default=500, help="frames per window of the sustained rate")
    ap.add_argument("--warmup", type=int, default=50, help="frames left out of the rates (graph capture, plans)")
    ap.add_argument("--viewer", action="store_true", help="the live viewer on (viewer.enabled=true)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--output", default=None, help="run folder")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    a = ap.parse_args(argv)

    overrides = [f"source.path={a.input}", "source.stride=1", f"source.max_frames={a.frames}",
                 "model.random_weights=true", "progress=false", f"viewer.enabled={'true' if a.viewer else 'false'}",
                 *a.overrides]
    cfg, host = load_and_check(a.config, overrides=overrides)
    probe = Probe(a.frames, a.every, partial=(a.json[:-5] + "_partial.json") if a.json else None)
    host.register(probe, name="app_probe")
    out = a.output or str(REPO / "runs" / f"app_gpu_bench-{time.strftime('%Y%m%d-%H%M%S')}")
    env = env_info()
    pipe = Pipeline(cfg, output=out, host=host)
    t0 = time.perf_counter()
    result = run(cfg, pipeline=pipe)
    wall = time.perf_counter() - t0
    summary = json.loads((Path(out) / "summary.json").read_text())

    t = probe.t[: min(probe.n, len(probe.t))]
    n = len(t)
    w0 = min(a.warmup, max(n - 2, 0))
    windows = []
    for s in range(w0, n - 1, a.window):
        e = min(s + a.window, n - 1)
        if e - s >= max(10, a.window // 5):
            windows.append({"first": s, "last": e, "fps": (e - s) / (t[e] - t[s])})
    fps_w = np.array([w["fps"] for w in windows]) if windows else np.array([np.nan])
    samp = probe.samples
    fr = np.array([s["frame"] for s in samp], np.float64)
    rss = np.array([s["rss_mb"] for s in samp], np.float64) * 1024  # KB
    half = slice(len(samp) // 2, None)
    ls, ts = slopes(fr[half], rss[half])
    gpu_peak = max((s.get("gpu_peak_gb", 0.0) for s in samp), default=0.0)
    gpu_res = max((s.get("gpu_reserved_gb", 0.0) for s in samp), default=0.0)
    res = {
        "frames": summary.get("frames"), "keyframes": summary.get("keyframes"), "wall_s": round(wall, 1),
        "fps_run": summary.get("fps"), "fps_after_warmup": (n - 1 - w0) / (t[-1] - t[w0]) if n > w0 + 1 else None,
        "fps_window_median": float(np.median(fps_w)), "fps_window_min": float(np.min(fps_w)),
        "fps_windows": windows, "gpu_peak_alloc_gb": gpu_peak, "gpu_peak_reserved_gb": gpu_res,
        "rss_mb_first_sample": float(rss[0] / 1024) if len(rss) else None,
        "rss_mb_end": float(rss[-1] / 1024) if len(rss) else None,
        "rss_kb_per_frame_second_half_ls": ls, "rss_kb_per_frame_second_half_theil_sen": ts,
        "timing": summary.get("timing"), "frontend_stats": summary.get("frontend_stats"),
        "metrics": summary.get("metrics"), "plugin_errors": result.plugin_errors, "samples": samp,
        "overrides": overrides, "config": a.config, "viewer": a.viewer, "run_folder": out,
        "commit": git_commit(short=True) or os.environ.get("SLAM3R_COMMIT", ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "env": env,
    }
    tm = summary.get("timing") or {}
    print(f"=== app_gpu_bench {a.config} viewer={'on' if a.viewer else 'off'}: {res['frames']} frames "
          f"({res['keyframes']} keyframes) in {wall:.0f} s")
    def num(x: Any, fmt: str = ".1f") -> str:
        return "n/a" if x is None or not np.isfinite(x) else format(x, fmt)

    print(f"fps: run {res['fps_run']}, after warm-up {num(res['fps_after_warmup'])}, windows of {a.window}: "
          f"median {num(res['fps_window_median'])}, min {num(res['fps_window_min'])}")
    print(f"GPU: peak allocated {gpu_peak:.2f} GB, reserved {gpu_res:.2f} GB; host RSS {num(res['rss_mb_first_sample'], '.0f')}"
          f" -> {num(res['rss_mb_end'], '.0f')} MB, slope over the second half {num(ls, '.2f')} KB/frame (LS),"
          f" {num(ts, '.2f')} (Theil-Sen)")
    print("stages (median ms):", json.dumps(tm.get("median_ms", tm))[:1500])
    print("frontend_stats:", json.dumps(summary.get("frontend_stats")))
    if result.plugin_errors:
        print("plugin errors:", result.plugin_errors)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
