"""The frame loop and hook sequence, with fake source/frontend plugins (no model)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.trajectory import read_tum
from slam3r_app.types import KeyframeDecision, PoseUpdate
from tests.fakes import FakePlugin, Recorder, true_pose


def make_pipeline(tmp_path, plugins, overrides=(), **data):
    cfg = load_config(data={"source": {"type": "fake"}, "frontend": "fake", "progress": False, **data},
                      overrides=list(overrides))
    host = PluginHost(builtins=False, entry_points=False)
    for name, p in plugins.items():
        host.register(p, name)
    return Pipeline(cfg, output=str(tmp_path / "run"), host=host)


def test_hook_order_and_outputs(tmp_path):
    rec = Recorder()
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=3), "rec": rec})
    result = run(pipe.config, pipeline=pipe)
    assert rec.calls == ["run_start", "process_frame:0:kf", "process_frame:1:kf", "process_frame:2:kf",
                         "run_end", "export", "evaluate"]
    assert result.frames_seen == 3 and not result.stopped_early and result.ended_by == "end"
    out = tmp_path / "run"
    for name in ("config.yaml", "run.log", "summary.json", "metrics.json", "recorder.txt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == {"recorder_frames": 3}
    np.testing.assert_allclose(result.pose_array()[2], true_pose(2))


class KeepEveryOther:
    @hookimpl
    def slam3r_keyframe_decision(self, frame, estimate, context):
        return KeyframeDecision(is_keyframe=frame.index % 2 == 0, reason="even")


class AlwaysKeyframe:
    @hookimpl(trylast=True)
    def slam3r_keyframe_decision(self, frame, estimate, context):
        return KeyframeDecision(is_keyframe=True)


def test_keyframe_decision_first_result_wins_and_drops_from_cache(tmp_path):
    fake = FakePlugin(n=5)
    rec = Recorder()
    pipe = make_pipeline(tmp_path, {"fake": fake, "kf_last": AlwaysKeyframe(), "kf": KeepEveryOther(), "rec": rec})
    result = run(pipe.config, pipeline=pipe)
    assert result.keyframe_indices == [0, 2, 4]
    assert fake.frontend.forgotten == [1, 3]  # non-keyframes left the frontend's memory
    assert fake.frontend.cached == [0, 2, 4]
    assert fake.frontend.closed


class Exploding:
    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        if frame.index == 1:
            raise RuntimeError("boom")


def test_failing_plugin_is_reported_by_name_and_run_completes(tmp_path, caplog):
    rec = Recorder()
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=4), "exploding": Exploding(), "rec": rec})
    result = run(pipe.config, pipeline=pipe)
    assert result.frames_seen == 4
    assert "exploding" in result.plugin_errors and "boom" in result.plugin_errors["exploding"]
    assert "plugin 'exploding' failed in slam3r_process_frame" in caplog.text
    assert rec.calls[-3:] == ["run_end", "export", "evaluate"]  # the others still wrote everything
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "exploding" in summary["plugin_errors"]


def test_bad_frame_skip_or_stop(tmp_path):
    pipe = make_pipeline(tmp_path / "a", {"fake": FakePlugin(n=5, bad_at=2)}, ["source.on_bad_frame=skip"])
    r = run(pipe.config, pipeline=pipe)
    assert r.frames_seen == 4 and r.frames_skipped == 1 and r.ended_by == "end"

    rec = Recorder()
    pipe = make_pipeline(tmp_path / "b", {"fake": FakePlugin(n=5, bad_at=2), "rec": rec})
    r = run(pipe.config, pipeline=pipe)
    assert r.frames_seen == 2 and r.ended_by == "error"
    assert "frame_0002.png" in r.stop_reason and "on_bad_frame" in r.stop_reason
    assert rec.calls[-3:] == ["run_end", "export", "evaluate"]  # partial outputs kept


def test_frame_of_other_size_mid_stream(tmp_path):
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=5, resize_at=3)})
    r = run(pipe.config, pipeline=pipe)
    assert r.frames_seen == 3 and r.ended_by == "error"
    assert "64x40" in r.stop_reason and "64x48" in r.stop_reason


@pytest.mark.parametrize("prefetch", [0, 2])
def test_sigint_stops_cleanly_with_outputs(tmp_path, prefetch):
    rec = Recorder()
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=10, sigint_at=4), "rec": rec},
                         [f"source.prefetch={prefetch}"])
    r = run(pipe.config, pipeline=pipe)
    assert r.stopped_early and r.ended_by == "user" and "SIGINT" in r.stop_reason
    if prefetch == 0:  # the signal comes while frame 4 is read, after frames 0-3 were tracked
        assert r.frames_seen == 4
    else:  # read ahead: it comes while one of frames 0-3 is tracked; that frame is finished
        assert 1 <= r.frames_seen <= 4
    assert rec.calls[-3:] == ["run_end", "export", "evaluate"]


def test_stride_first_max_frames(tmp_path):
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=20)},
                         ["source.first=3", "source.stride=4", "source.max_frames=3"])
    r = run(pipe.config, pipeline=pipe)
    np.testing.assert_allclose(r.pose_array()[:, 0, 3], [0.15, 0.35, 0.55])


def test_controls_reset_and_save(tmp_path):
    rec = Recorder()

    class Controller:
        @hookimpl
        def slam3r_process_frame(self, frame, estimate, context):
            if frame.index == 1:
                context.control.request_save()
            if frame.index == 2:
                context.control.request_reset()
            if frame.index == 4:
                context.control.request_stop("stop button")

    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=10), "ctl": Controller(), "rec": rec})
    r = run(pipe.config, pipeline=pipe)
    assert rec.calls.count("export") == 2  # save-now + end of run
    assert r.ended_by == "user" and r.stop_reason == "stop button"
    assert [p.index for p in r.poses] == [3, 4]  # the reset cleared frames 0..2


def test_unknown_source_type_and_frontend(tmp_path):
    from slam3r_app.errors import ConfigError

    pipe = make_pipeline(tmp_path, {"fake": FakePlugin()}, ["source.type=nope"])
    with pytest.raises(ConfigError, match="--set source.type=nope: unknown source type 'nope'"):
        run(pipe.config, pipeline=pipe)
    pipe = make_pipeline(tmp_path / "b", {"fake": FakePlugin()}, ["frontend=nope"])
    r = run(pipe.config, pipeline=pipe)
    assert r.ended_by == "error" and "no plugin provides the frontend 'nope'" in r.stop_reason


class Refiner:
    """Records the end-of-run calls and refines frame 1 (a non-keyframe) by 5 cm along x."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def slam3r_propose_corrections(self, context, final):
        if final:
            self.calls.append("final_corrections")

    @hookimpl
    def slam3r_refine_trajectory(self, context):
        self.calls.append("refine")
        T = context.trajectory.pose(1).copy()
        T[0, 3] += 0.05
        return PoseUpdate(frames={1: T}, based_on_revision=context.trajectory.revision, reason="test refinement")

    @hookimpl
    def slam3r_run_end(self, result, context):
        self.calls.append("run_end")


def test_refinement_comes_after_the_final_corrections_and_reaches_the_files(tmp_path):
    refiner = Refiner()
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=3), "kf": KeepEveryOther(), "refiner": refiner})
    result = run(pipe.config, pipeline=pipe)
    assert refiner.calls == ["final_corrections", "refine", "run_end"]
    expected = true_pose(1)
    expected[0, 3] += 0.05
    np.testing.assert_allclose(result.pose_array()[1], expected, atol=1e-12)
    _, written = read_tum(tmp_path / "run" / "trajectory.txt")
    np.testing.assert_allclose(written[1][:3, 3], expected[:3, 3], atol=1e-6)  # the file has the refined pose
    assert pipe.context.trajectory.status(1) == "tracked"  # a refined frame is not "relocalised"


def test_no_refinement_after_an_error(tmp_path):
    refiner = Refiner()
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=5, bad_at=2), "refiner": refiner})
    r = run(pipe.config, pipeline=pipe)
    assert r.ended_by == "error" and refiner.calls == ["final_corrections", "run_end"]
