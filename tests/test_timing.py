"""Per-frame stage timing (summary.json ``timing`` and the printed line).

Independent truth: statistics recomputed with numpy from known durations, and a fake
frontend that sleeps known times in its sub-stages (a sleep lasts at least its duration).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.frame_loop import format_summary, run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.timing import StageTimes
from tests.fakes import FakeFrontend, FakePlugin


def test_statistics_leave_out_the_warmup_frames():
    t = StageTimes(warmup=2)
    values = [1.0, 0.5, 0.010, 0.020, 0.030, 0.040, 0.100]
    for v in values:
        t.add("frontend", v)
    s = t.summary()["stages"]["frontend"]
    steady = np.array(values[2:]) * 1e3
    assert s["frames"] == 7
    assert s["median_ms"] == pytest.approx(np.median(steady))
    assert s["mean_ms"] == pytest.approx(steady.mean())
    assert s["p90_ms"] == pytest.approx(np.percentile(steady, 90))
    assert s["total_s"] == pytest.approx(sum(values))
    assert s["warmup_ms"] == pytest.approx(1500.0)


def test_steady_fps_is_the_inverse_of_the_median_frame_time_and_few_samples_use_all():
    t = StageTimes(warmup=5)
    for v in (0.040, 0.050, 0.060):  # fewer samples than the warm-up: all are used
        t.add("frame", v)
    s = t.summary()
    assert s["frame_median_ms"] == pytest.approx(50.0) and s["steady_fps"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="warmup"):
        StageTimes(warmup=-1)


def test_format_nests_sub_stages_and_lists_background_work():
    t = StageTimes(warmup=0)
    for name, v in [("frame", 0.05), ("source", 0.001), ("frontend", 0.04), ("frontend.model", 0.03),
                    ("backends", 0.009), ("prefetch.read", 0.004)]:
        t.add(name, v)
    line = t.format()
    assert line.startswith("per frame, median ms: 50.0 (20.0 frames/s)")
    assert "frontend 40.0 (model 30.0)" in line and "backends 9.0" in line
    assert line.endswith("in the background: read 4.0")
    assert StageTimes().format() is None


class TimedFrontend(FakeFrontend):
    """Sleeps 20 ms in its ``model`` stage and 5 ms in ``postprocess``."""

    def track(self, frame):
        with self.stage("model"):
            time.sleep(0.020)
        with self.stage("postprocess"):
            time.sleep(0.005)
            return super().track(frame)


class TimedPlugin(FakePlugin):
    @hookimpl
    def slam3r_make_frontend(self, name, context):
        self.frontend = TimedFrontend()
        return self.frontend


class SlowBackend:
    """10 ms a frame, and 50 ms when the outputs are written."""

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        time.sleep(0.010)

    @hookimpl
    def slam3r_export(self, result, context):
        time.sleep(0.050)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_run_reports_where_each_frames_time_goes(tmp_path, prefetch):
    cfg = load_config(data={"source": {"type": "fake", "prefetch": prefetch}, "frontend": "fake", "progress": False})
    host = PluginHost(builtins=False, entry_points=False)
    host.register(TimedPlugin(n=9), "fake")
    host.register(SlowBackend(), "slow")
    pipe = Pipeline(cfg, output=str(tmp_path / "run"), host=host)
    result = run(cfg, pipeline=pipe)
    timing = json.loads((tmp_path / "run" / "summary.json").read_text())["timing"]
    st = timing["stages"]
    assert {k: st[k]["frames"] for k in ("source", "frontend", "frontend.model", "frontend.postprocess",
                                          "backends", "frame")} == {
        "source": 10, "frontend": 9, "frontend.model": 9, "frontend.postprocess": 9, "backends": 9, "frame": 9}
    # (source: 9 frames + the final wait that found the end of the stream)
    # lower bounds only (a sleep lasts at least its time; a loaded machine makes everything slower)
    assert 20.0 <= st["frontend.model"]["median_ms"] and 5.0 <= st["frontend.postprocess"]["median_ms"]
    assert st["frontend"]["median_ms"] >= 25.0 and st["backends"]["median_ms"] >= 10.0
    assert st["frame"]["median_ms"] >= st["frontend"]["median_ms"] + 10.0
    assert timing["steady_fps"] == pytest.approx(1e3 / st["frame"]["median_ms"], rel=1e-3)
    assert ("prefetch.read" in st) == (prefetch > 0)
    # the backends by plugin, per frame and at the end of the run
    assert st["backends.slow"]["frames"] == 9 and 10.0 <= st["backends.slow"]["median_ms"]
    assert st["backends"]["median_ms"] >= st["backends.slow"]["median_ms"]
    assert 0.05 <= timing["end_of_run_s"]["slow"]
    line = format_summary(result, str(tmp_path / "run"), timing=pipe.timer.format())
    assert "per frame, median ms" in line and "frontend" in line and "(model " in line
    assert f"backends {st['backends']['median_ms']:.1f}" in line and f"(slow {st['backends.slow']['median_ms']:.1f}" in line
    assert f"\nend of run, s: slow {timing['end_of_run_s']['slow']:.2f}" in line
