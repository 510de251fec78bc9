"""Keyframe selection: motion / overlap tests and control of the frontend's cache through the real Pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.errors import ConfigError
from slam3r_app.frame_loop import run
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.trajectory_store import TrajectoryStore
from slam3r_app.types import Estimate, Frame
from slam3r_plugins import keyframes
from slam3r_plugins.keyframes import KeyframeOptions, _KeyframeState, _remember, decide, overlap_fraction
from tests.fakes import FakePlugin, K


def make_pipeline(tmp_path, fake, **kf):
    cfg = load_config(data={"source": {"type": "fake"}, "frontend": "fake", "progress": False, "keyframes": kf})
    host = PluginHost(builtins=False, entry_points=False)
    host.register(fake, "fake")
    host.register(keyframes, "keyframes")
    return Pipeline(cfg, output=str(tmp_path / "run"), host=host)


def test_non_keyframes_are_dropped_from_the_frontend_cache(tmp_path):
    # tests/fakes.py: camera moves 0.05 m a frame along x, plane 2 m away -> 0.025 median depths a frame;
    # with min_translation 0.11 the 5th frame after a keyframe is the next one (0.125 > 0.11 > 0.1)
    fake = FakePlugin(n=23)
    pipe = make_pipeline(tmp_path, fake, min_translation=0.11, min_rotation_deg=10, mode="motion")
    result = run(pipe.config, pipeline=pipe)
    expected = [0, 5, 10, 15, 20]
    assert result.keyframe_indices == expected
    fe = fake.frontend
    assert fe.cached == expected  # only keyframes stay in the cache ...
    assert fe.forgotten == [i for i in range(23) if i not in expected]  # ... via forget_last, once per frame
    lines = [ln for ln in (tmp_path / "run" / "keyframes.txt").read_text().splitlines() if not ln.startswith("#")]
    assert [int(ln.split()[0]) for ln in lines] == expected
    assert [float(ln.split()[1]) for ln in lines] == pytest.approx([100.0 + 0.1 * i for i in expected])
    assert lines[0].split(None, 2)[2] == "first frame"
    assert "translation 0.125 > 0.11 of median depth" in lines[1]


def test_keyframes_file_is_current_mid_run(tmp_path):
    from slam3r_app.hookspecs import hookimpl

    seen = []

    class Watch:
        @hookimpl
        def slam3r_process_frame(self, frame, estimate, context):
            text = (tmp_path / "run" / "keyframes.txt").read_text()
            seen.append(sum(1 for ln in text.splitlines() if ln and not ln.startswith("#")))

    fake = FakePlugin(n=12)
    pipe = make_pipeline(tmp_path, fake, min_translation=0.11)
    pipe.host.register(Watch(), "watch")
    run(pipe.config, pipeline=pipe)
    assert seen == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]


def test_keep_all_in_cache_keeps_every_frame(tmp_path):
    fake = FakePlugin(n=12)
    pipe = make_pipeline(tmp_path, fake, min_translation=0.11, keep_all_in_cache=True)
    result = run(pipe.config, pipeline=pipe)
    assert result.keyframe_indices == [0, 5, 10]
    assert fake.frontend.forgotten == [] and fake.frontend.cached == list(range(12))


def test_disabled_or_mode_all_keeps_every_frame(tmp_path):
    fake = FakePlugin(n=4)
    p = make_pipeline(tmp_path / "a", fake, mode="all")
    result = run(p.config, pipeline=p)
    assert result.keyframe_indices == [0, 1, 2, 3] and fake.frontend.forgotten == []
    fake2 = FakePlugin(n=4)
    p2 = make_pipeline(tmp_path / "b", fake2, enabled=False)
    result = run(p2.config, pipeline=p2)
    assert result.keyframe_indices == [0, 1, 2, 3] and fake2.frontend.forgotten == []


def test_max_interval_forces_keyframes(tmp_path):
    fake = FakePlugin(n=10)
    pipe = make_pipeline(tmp_path, fake, min_translation=10.0, max_interval=3, mode="motion")
    result = run(pipe.config, pipeline=pipe)
    assert result.keyframe_indices == [0, 3, 6, 9]


def _est(pose, depth=None, idx=0):
    return Estimate(index=idx, timestamp=float(idx), pose=pose, intrinsics=K.copy(),
                    depth=depth if depth is not None else np.full((48, 64), 2.0, np.float32),
                    confidence=np.ones((48, 64), np.float32))


def _frame(idx=0):
    return Frame(index=idx, timestamp=float(idx), rgb=np.zeros((48, 64, 3), np.uint8))


def _first_keyframe(opts):
    """The state after frame 0 (identity pose) became a keyframe, and the store holding its pose."""
    st = _KeyframeState()
    traj = TrajectoryStore()
    assert decide(opts, st, _frame(), _est(np.eye(4)), traj) == (True, "first frame")
    _remember(st, opts, _frame(), _est(np.eye(4)), "first frame")
    traj.add(0, 0.0, np.eye(4), True)
    return st, traj


def test_rotation_threshold():
    opts = KeyframeOptions(min_rotation_deg=10, min_translation=0.5, mode="motion")
    st, traj = _first_keyframe(opts)
    for deg, expect in ((9.0, False), (11.0, True)):
        a = np.radians(deg)
        T = np.eye(4)
        T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        is_kf, reason = decide(opts, st, _frame(1), _est(T, idx=1), traj)
        assert is_kf is expect, (deg, reason)
    assert "rotation 11.0 deg > 10" in reason


def test_overlap_of_a_sideways_move_is_known():
    """Plane at 2 m, fx = 50, 64 px wide: moving 1.26 m sideways shifts the image by 31.5 px -> half overlaps."""
    T = np.eye(4)
    T[0, 3] = 1.26
    st, traj = _first_keyframe(KeyframeOptions(overlap_stride=1))
    kf = traj.transform(0)
    assert overlap_fraction(st.cam_points, kf, np.eye(4), K, 64, 48) == pytest.approx(1.0)
    assert overlap_fraction(st.cam_points, kf, T, K, 64, 48) == pytest.approx(0.5)
    back = np.eye(4)
    back[:3, :3] = np.diag([-1, 1, -1])  # turned around: nothing in front
    assert overlap_fraction(st.cam_points, kf, back, K, 64, 48) == 0.0
    # overlap mode: 0.5 < 0.7 is a keyframe even though translation alone would not trigger
    opts = KeyframeOptions(mode="overlap", min_overlap=0.7, min_translation=100)
    is_kf, reason = decide(opts, st, _frame(1), _est(T, idx=1), traj)
    assert is_kf and "overlap 0.50 < 0.7" in reason
    assert not decide(KeyframeOptions(mode="overlap", min_overlap=0.4), st, _frame(1), _est(T, idx=1), traj)[0]
    # both: needs motion and overlap
    assert not decide(KeyframeOptions(mode="both", min_overlap=0.7, min_translation=100, min_rotation_deg=90),
                      st, _frame(1), _est(T, idx=1), traj)[0]


def test_options_validated_with_key_names(tmp_path):
    with pytest.raises(ConfigError, match="keyframes.min_overlap"):
        make_pipeline(tmp_path, FakePlugin(n=2), min_overlap=1.5)
    with pytest.raises(ConfigError, match="keyframes.min_translaton.*unknown key"):
        make_pipeline(tmp_path, FakePlugin(n=2), min_translaton=0.1)
    with pytest.raises(ConfigError, match="keyframes.mode"):
        make_pipeline(tmp_path, FakePlugin(n=2), mode="sometimes")
