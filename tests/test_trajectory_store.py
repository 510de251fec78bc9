"""The app-owned trajectory and keyframe stores, and corrections applied through the pipeline.

Truth is analytic: poses built from known rotations / translations, corrections by known
deltas, a plane at a known depth.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.keyframe_store import KeyframeStore
from slam3r_app.sim3 import make_sim3, sim3_inverse, sim3_scale, strip_scale
from slam3r_app.trajectory import read_tum
from slam3r_app.trajectory_store import StaleCorrection, TrajectoryStore
from slam3r_app.types import Estimate, Frame, PoseUpdate, TrackingStatus
from tests.fakes import FakePlugin, K, true_pose
from tests.test_app_pipeline import make_pipeline


def rigid(rotvec, t) -> np.ndarray:
    return make_sim3(Rotation.from_rotvec(rotvec).as_matrix(), t)


def filled_store(n: int = 10, every: int = 3) -> tuple[TrajectoryStore, list[np.ndarray]]:
    """Frames 0..n-1 along a curve; keyframes every ``every`` frames."""
    st = TrajectoryStore(chunk=4)  # small chunks: growth is exercised
    poses = [rigid([0, 0.05 * i, 0.01 * i], [0.1 * i, 0.02 * i * i, 0.0]) for i in range(n)]
    for i, P in enumerate(poses):
        st.add(i, 10.0 + i, P, is_keyframe=i % every == 0, intrinsics=K, gt_pose=P)
    return st, poses


def test_store_round_trip_and_views():
    st, poses = filled_store()
    np.testing.assert_allclose(st.poses(), np.stack(poses), atol=1e-12)
    assert st.keyframe_indices() == [0, 3, 6, 9]
    assert st.reference_keyframe(5) == 3 and st.reference_keyframe(3) == 3
    assert st.frames_of(3) == [3, 4, 5]
    np.testing.assert_allclose(st.intrinsics(4), K)
    assert sorted(st.gt_poses()) == list(range(10))
    P = st.poses()
    P[:] = 0  # readers get copies
    np.testing.assert_allclose(st.pose(2), poses[2], atol=1e-12)
    with pytest.raises(ValueError, match="indices must increase"):
        st.add(5, 0.0, np.eye(4), False)
    with pytest.raises(ValueError, match="finite 4x4"):
        st.add(20, 0.0, np.full((4, 4), np.nan), False)


def test_correcting_a_keyframe_moves_its_frames_and_newer_keyframes():
    st, poses = filled_store()
    delta = rigid([0.1, -0.2, 0.05], [0.3, -0.1, 0.2])
    up = st.apply(PoseUpdate(keyframes={3: delta @ poses[3]}, reason="test"))
    assert up.revision == st.revision == 1
    for i in range(10):
        expect = poses[i] if i < 3 else delta @ poses[i]  # 3's frames and everything newer follow
        np.testing.assert_allclose(st.pose(i), expect, atol=1e-10)
    assert sorted(up.moved) == [3, 6, 9]
    np.testing.assert_allclose(up.delta(6), delta, atol=1e-10)
    np.testing.assert_allclose(up.delta(0), np.eye(4))


def test_no_propagation_moves_only_the_given_keyframes():
    st, poses = filled_store()
    delta = rigid([0, 0, 0.3], [1.0, 0, 0])
    st.apply(PoseUpdate(keyframes={3: delta @ poses[3]}, propagate=False))
    np.testing.assert_allclose(st.pose(4), delta @ poses[4], atol=1e-10)
    np.testing.assert_allclose(st.pose(6), poses[6], atol=1e-10)


def test_sim3_correction_scales_geometry_but_poses_stay_rigid():
    st, poses = filled_store()
    S = make_sim3(Rotation.from_rotvec([0, 0.2, 0]).as_matrix(), [0.5, 0, 0], 2.0)
    st.apply(PoseUpdate(keyframes={k: S @ poses[k] for k in (0, 3, 6, 9)}, kind="sim3"))
    for i in range(10):
        T = st.transform(i)
        np.testing.assert_allclose(T, S @ poses[i], atol=1e-10)
        assert st.scale(i) == pytest.approx(2.0)
        P = st.pose(i)
        np.testing.assert_allclose(P[:3, :3] @ P[:3, :3].T, np.eye(3), atol=1e-10)
        # a point 1 unit in front of camera i lands where S maps its old world position
        x = np.array([0.0, 0.0, 1.0, 1.0])
        np.testing.assert_allclose(T @ x, S @ (poses[i] @ x), atol=1e-10)
    # a new frame added in the scaled world is stored relative to keyframe 9
    new = S @ rigid([0, 0.5, 0], [1.0, 0.2, 0])
    st.add(10, 20.0, strip_scale(new), False)
    np.testing.assert_allclose(st.pose(10), strip_scale(new), atol=1e-10)


def test_relocalised_frame_and_rejected_updates():
    st, poses = filled_store()
    st.set_status(7, TrackingStatus.LOST)
    target = rigid([0, 0.3, 0], [0.7, 1.0, 0.0])
    st.apply(PoseUpdate(frames={7: target}))
    np.testing.assert_allclose(st.pose(7), target, atol=1e-10)
    assert st.status(7) == TrackingStatus.RELOCALIZED and st.status(8) == TrackingStatus.TRACKED
    rev = st.revision
    for bad, msg in ((PoseUpdate(keyframes={4: np.eye(4)}), "not a keyframe"),
                     (PoseUpdate(keyframes={99: np.eye(4)}), "not in the trajectory"),
                     (PoseUpdate(keyframes={3: make_sim3(np.eye(3), [0, 0, 0], 2.0)}), "se3 update carries a scale"),
                     (PoseUpdate(keyframes={3: np.full((4, 4), np.inf)}), "finite")):
        with pytest.raises((KeyError, ValueError), match=msg):
            st.apply(bad)
    assert st.revision == rev



def test_a_correction_computed_on_an_old_revision_is_checked():
    """based_on_revision is read: a correction that would undo a newer one is rejected (nothing changes);
    one that sets only what nothing moved since still applies; a future revision is an error."""
    st, poses = filled_store()
    base = st.revision
    first = rigid([0, 0, 0.2], [0.5, 0, 0])
    st.apply(PoseUpdate(keyframes={3: first @ poses[3]}, propagate=False, based_on_revision=base))
    before = st.poses()
    stale = PoseUpdate(keyframes={3: poses[3], 6: poses[6]}, propagate=False, based_on_revision=base)
    with pytest.raises(StaleCorrection, match=r"revision 0, it would undo a later correction of frames 3 "):
        st.apply(stale)
    np.testing.assert_array_equal(st.poses(), before)
    assert st.revision == base + 1
    second = rigid([0, 0, -0.1], [0, 0.4, 0])
    st.apply(PoseUpdate(keyframes={6: second @ poses[6]}, propagate=False, based_on_revision=base))
    np.testing.assert_allclose(st.pose(6), second @ poses[6], atol=1e-12)
    np.testing.assert_allclose(st.pose(3), first @ poses[3], atol=1e-12)  # the newer correction stays
    # a relocalised frame, moved at revision 3: a correction computed before that may not set it back
    st.apply(PoseUpdate(frames={7: np.eye(4)}, based_on_revision=st.revision))
    with pytest.raises(StaleCorrection, match="frames 7"):
        st.apply(PoseUpdate(frames={7: poses[7]}, based_on_revision=base + 2))
    with pytest.raises(StaleCorrection, match="revision 99"):
        st.apply(PoseUpdate(keyframes={9: poses[9]}, based_on_revision=99))


def test_store_memory_per_frame_is_small():
    st = TrajectoryStore()
    st.add(0, 0.0, np.eye(4), True, intrinsics=K, gt_pose=np.eye(4))
    before = st.nbytes()
    for i in range(1, 20001):
        st.add(i, float(i), true_pose(i), i % 100 == 0, intrinsics=K, gt_pose=true_pose(i))
    per_frame = (st.nbytes() - before) / 20000
    assert per_frame < 400  # bytes; the bound for all per-frame state is 2 KB
    assert len(st) == 20001 and st.num_keyframes == 201


def test_snapshot_is_consistent_copy():
    st, poses = filled_store()
    snap = st.snapshot()
    st.apply(PoseUpdate(keyframes={0: rigid([0, 0, 0], [5, 0, 0]) @ poses[0]}))
    assert snap.revision == 0 and st.revision == 1
    np.testing.assert_allclose(snap.poses, np.stack(poses), atol=1e-12)
    assert sorted(snap.keyframe_transforms()) == [0, 3, 6, 9]


def test_sim3_helpers():
    S = make_sim3(Rotation.from_rotvec([0.3, -0.1, 0.7]).as_matrix(), [1, 2, 3], 0.5)
    np.testing.assert_allclose(S @ sim3_inverse(S), np.eye(4), atol=1e-12)
    assert sim3_scale(S) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        make_sim3(np.eye(3), [0, 0, 0], 0.0)


# ----------------------------------------------------------------------------- keyframe store
def plane_keyframe(index: int, w: int = 640, h: int = 480, z: float = 2.0):
    Kf = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.arange(w)[None, :] * 255 // w
    frame = Frame(index=index, timestamp=float(index), rgb=rgb, intrinsics=Kf)
    est = Estimate(index=index, timestamp=float(index), pose=np.eye(4), intrinsics=Kf,
                   depth=np.full((h, w), z, np.float32), confidence=np.ones((h, w), np.float32), depth_is_metric=True)
    return frame, est


def test_keyframe_payload_geometry_matches_the_full_frame():
    store = KeyframeStore(max_side=160)
    frame, est = plane_keyframe(0)
    rec = store.add(frame, est)
    assert rec.rgb.shape == (120, 160, 3) and rec.depth.shape == (120, 160) and rec.depth.dtype == np.float16
    pts, _ = rec.camera_points()
    assert np.allclose(pts[:, 2], 2.0)
    # the thumbnail's rays are the full image's: pixel centres of the thumbnail cover the same field of view
    Kt = rec.intrinsics
    half_fov_full = np.arctan((640 / 2) / 500.0)
    half_fov_thumb = np.arctan((160 / 2) / Kt[0, 0])
    assert half_fov_thumb == pytest.approx(half_fov_full, rel=1e-9)
    assert Kt[0, 2] == pytest.approx(79.5) and Kt[1, 2] == pytest.approx(59.5)
    # the plane spans the whole view: x at the left edge = -z * 320 / 500
    assert pts[:, 0].min() == pytest.approx(-2.0 * (320 - 2) / 500, abs=0.01)


def test_keyframe_store_budget_drops_payloads_and_reports():
    frame, est = plane_keyframe(0)
    one = KeyframeStore(max_side=160).add(frame, est).nbytes()
    store = KeyframeStore(max_side=160, max_memory_mb=10 * one / 2**20)
    for i in range(40):
        f, e = plane_keyframe(i)
        store.add(f, e)
        store.update_features(i, "desc", np.zeros((500, 32), np.uint8))
        assert store.nbytes <= store.cap_bytes
    s = store.stats()
    assert s["keyframes"] == 40 and s["dense_dropped"] > 0 and s["bytes"] <= s["cap_bytes"]
    assert store[39].has_dense  # the newest keeps its payload
    assert 0 < s["bytes_per_keyframe"] <= one + 500 * 32


# ----------------------------------------------------------------------------- through the pipeline
class Corrector:
    """Proposes one rigid correction of every keyframe at frame ``at``; records the broadcast."""

    def __init__(self, at: int, delta: np.ndarray) -> None:
        self.at, self.delta = at, delta
        self.seen: list[PoseUpdate] = []
        self.final_calls = 0

    @hookimpl
    def slam3r_propose_corrections(self, context, final):
        if final:
            self.final_calls += 1
            return None
        traj = context.trajectory
        if traj.last_index() != self.at:
            return None
        return PoseUpdate(keyframes={k: self.delta @ T for k, T in traj.keyframe_transforms().items()},
                          reason="test correction", based_on_revision=traj.revision)

    @hookimpl
    def slam3r_poses_updated(self, update, context):
        self.seen.append(update)


def test_pipeline_applies_corrections_and_maps_later_estimates(tmp_path):
    delta = rigid([0, 0.3, 0], [0.5, 0.0, -0.2])
    corr = Corrector(at=4, delta=delta)
    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=10), "corr": corr})
    result = run(pipe.config, pipeline=pipe)
    assert len(corr.seen) == 1 and corr.seen[0].revision == 1 and corr.final_calls == 1
    assert corr.seen[0].source == "corr" and len(corr.seen[0].moved) == 5  # frames 0-4 are keyframes
    # frames 0-4 were corrected; the fake frontend does not follow corrections, so frames 5-9 are
    # mapped through the world correction: every pose is delta @ truth
    expect = np.stack([delta @ true_pose(i) for i in range(10)])
    np.testing.assert_allclose(result.pose_array(), expect, atol=1e-10)
    stamps, poses = read_tum(tmp_path / "run" / "trajectory.txt")
    np.testing.assert_allclose(poses, expect, atol=1e-6)
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["corrections"]["applied"] == 1 and summary["info"]["trajectory_revision"] == 1
    assert summary["info"]["keyframe_store"]["keyframes"] == 10


def test_a_bad_correction_is_rejected_and_the_run_goes_on(tmp_path):
    class Bad:
        @hookimpl
        def slam3r_propose_corrections(self, context, final):
            if context.trajectory.last_index() == 2 and not final:
                return [PoseUpdate(keyframes={77: np.eye(4)}, reason="unknown keyframe")]
            return None

    class Wrong:
        @hookimpl
        def slam3r_propose_corrections(self, context, final):
            return "not an update"

    pipe = make_pipeline(tmp_path, {"fake": FakePlugin(n=5), "bad": Bad(), "wrong": Wrong()})
    result = run(pipe.config, pipeline=pipe)
    assert result.frames_seen == 5
    assert list(result.plugin_errors) == ["wrong"] and "expected a slam3r_app.PoseUpdate" in result.plugin_errors["wrong"]
    assert pipe.corrections.rejected == 1 and pipe.trajectory.revision == 0
    np.testing.assert_allclose(result.pose_array(), np.stack([true_pose(i) for i in range(5)]), atol=1e-12)
