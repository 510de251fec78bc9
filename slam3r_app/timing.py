"""Where a frame's time goes: wall-clock seconds per stage, per frame.

The loop, the pipeline and the frontend each time their own stages::

    timer = StageTimes()
    with timer.stage("frontend.model"):
        ...

Stage names are dotted (``frontend.model`` is a part of ``frontend``). Stages of the
background prefetch thread start with ``prefetch.``: they overlap the main thread's
work, so they do not add to ``frame``, the main loop's time per frame (whose inverse is
the frames/s a run sustains). Thread-safe. :meth:`summary` gives medians after the
first ``warmup`` frames (CUDA graph capture, kernel compilation, first allocations
happen there) and is written to ``summary.json`` under ``timing``.
"""
from __future__ import annotations

import contextlib
import threading
import time
from array import array
from typing import Any, Iterator, Optional

import numpy as np


class StageTimes:
    """Per-stage durations (seconds), one entry per frame that ran the stage.

    Stored as ``array('d')`` (8 bytes a sample, not a Python float object in a list: 32 bytes):
    a long live run keeps every sample for exact medians at about 8 bytes per stage per frame.

    Args:
        warmup: leading samples of each stage left out of the summary's statistics
            (kept in ``warmup_ms``: the first frames' cost is reported, not hidden).
    """

    def __init__(self, warmup: int = 5) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.warmup = int(warmup)
        self._samples: dict[str, array] = {}
        self._end: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as one sample of ``name`` (also when it raises)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            samples = self._samples.get(name)
            if samples is None:
                samples = self._samples[name] = array("d")
            samples.append(float(seconds))

    def add_end_of_run(self, name: str, seconds: float) -> None:
        """Time a plugin spent in the end-of-run hooks (run end, export, evaluation), once per run."""
        with self._lock:
            self._end[name] = self._end.get(name, 0.0) + float(seconds)

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()
            self._end.clear()

    def samples(self, name: str) -> list[float]:
        with self._lock:
            return list(self._samples.get(name, []))

    def summary(self) -> dict[str, Any]:
        """``{"warmup_frames": k, "stages": {name: {frames, median_ms, mean_ms, p90_ms, total_s,
        warmup_ms}}, "frame_median_ms": ..., "steady_fps": ...}``. Statistics use the samples
        after the first ``warmup`` (all samples when there are no more than ``warmup``)."""
        with self._lock:
            items = [(k, np.frombuffer(v, dtype=np.float64).copy()) for k, v in self._samples.items()]
            end = dict(self._end)
        stages: dict[str, Any] = {}
        for name, v in items:
            steady = v[self.warmup:] if len(v) > self.warmup else v
            a = steady * 1e3
            stages[name] = {
                "frames": len(v),
                "median_ms": round(float(np.median(a)), 3),
                "mean_ms": round(float(a.mean()), 3),
                "p90_ms": round(float(np.percentile(a, 90)), 3),
                "total_s": round(float(sum(v)), 3),
                "warmup_ms": round(float(sum(v[: self.warmup])) * 1e3, 1),
            }
        out: dict[str, Any] = {"warmup_frames": self.warmup, "stages": stages}
        if end:
            out["end_of_run_s"] = {k: round(v, 3) for k, v in end.items()}
        frame = stages.get("frame")
        if frame and frame["median_ms"] > 0:
            out["frame_median_ms"] = frame["median_ms"]
            out["steady_fps"] = round(1e3 / frame["median_ms"], 2)
        return out

    def format(self) -> Optional[str]:
        """One line: median milliseconds per stage, sub-stages in brackets (the backends by plugin);
        a second line with each plugin's end-of-run seconds when there are any; None without samples."""
        s = self.summary()
        stages = s["stages"]
        if not stages:
            return None
        end = s.get("end_of_run_s", {})
        tail = ""
        if end:
            shown = [(k, v) for k, v in sorted(end.items(), key=lambda kv: -kv[1]) if v >= 0.005]
            if shown:
                tail = "\nend of run, s: " + ", ".join(f"{k} {v:.2f}" for k, v in shown)
        tops = [k for k in stages if "." not in k and k != "frame"]
        parts = []
        for top in tops:
            text = f"{top} {stages[top]['median_ms']:.1f}"
            subs = [k for k in stages if k.startswith(top + ".")
                    and (top != "backends" or stages[k]["median_ms"] >= 0.05)]  # idle plugins left out
            if subs:
                text += " (" + ", ".join(f"{k[len(top) + 1:]} {stages[k]['median_ms']:.1f}" for k in subs) + ")"
            parts.append(text)
        bg = [k for k in stages if k.startswith("prefetch.")]
        if bg:
            parts.append("in the background: " + ", ".join(f"{k[9:]} {stages[k]['median_ms']:.1f}" for k in bg))
        head = "per frame, median ms"
        if "frame" in stages:
            head += f": {stages['frame']['median_ms']:.1f} ({s['steady_fps']:.1f} frames/s)"
        n = max(v["frames"] for v in stages.values())
        if n > self.warmup:
            head += f" after {self.warmup} warm-up frames"
        return (head + " = " + " | ".join(parts) if parts else head) + tail
