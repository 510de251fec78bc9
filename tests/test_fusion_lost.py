"""Frames whose tracking is lost never enter the TSDF or the point-cloud map.

Truth is the scene's own geometry (``tests/test_fusion_scene.py``: exact surfaces and
poses) and, for the real ``rgbd`` frontend, its own count of lost frames. A lost
frame carries a wrong pose (the rgbd frontend keeps the last good one), so fusing
its depth would put surfaces where there are none.
"""
from __future__ import annotations

import json

import numpy as np
import open3d as o3d
import pytest

from slam3r_app.frame_loop import format_summary, run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.types import Estimate, TrackingStatus, settle_status
from slam3r_plugins.maps.common import unproject
from tests.test_fusion_scene import SceneFrontend, ScenePlugin, get_scene, make_pipeline

VOXEL = 0.04
LOST = (4, 7, 8)


def _wrong_pose(pose: np.ndarray) -> np.ndarray:
    """What a lost tracker may hand out: 0.6 m off and turned 40 degrees."""
    a = np.deg2rad(40.0)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    out = np.array(pose, dtype=np.float64, copy=True)
    out[:3, :3] = out[:3, :3] @ R
    out[:3, 3] += [0.6, 0.0, -0.3]
    return out


class LosingFrontend(SceneFrontend):
    """The true pose and depth, except for the frames in ``lost``: a wrong pose, marked lost.

    ``how``: "status" marks them as the rgbd frontend does (``status = LOST`` with a reason)
    and leaves the confidence as it is; "confidence" only zeroes the confidence map.
    """

    def __init__(self, scene, lost, how: str) -> None:
        super().__init__(scene)
        self.lost, self.how = set(lost), how

    def track(self, frame) -> Estimate:
        est = super().track(frame)
        if frame.index in self.lost:
            est.pose = _wrong_pose(est.pose)
            if self.how == "status":
                est.status, est.status_reason = TrackingStatus.LOST, "test: registration failed"
            else:
                est.confidence = np.zeros_like(est.confidence)
        return est


class LosingPlugin(ScenePlugin):
    def __init__(self, scene, lost, how: str) -> None:
        super().__init__(scene)
        self.lost, self.how = lost, how

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        if name != "scene":
            return None
        self.frontend = LosingFrontend(self.scene, self.lost, self.how)
        return self.frontend


def _run(tmp_path, lost, how, fusion_depth="sensor"):
    sc = get_scene()
    pipe = make_pipeline(tmp_path / "run", {"scene": LosingPlugin(sc, lost, how)},
                         {"fusion": {"voxel_size": VOXEL, "frames": "all", "device": "cpu", "depth": fusion_depth,
                                     "conf_quantile": 0.0},
                          "pointcloud": {"frames": "all", "conf_quantile": 0.0, "voxel_size": 0.02}},
                         backends=["fusion", "pointcloud", "trajectory"])
    result = run(pipe.config, pipeline=pipe)
    assert not result.plugin_errors and result.frames_seen == sc.frames
    return sc, result


def test_a_lost_frame_fused_at_its_pose_would_be_far_from_the_surfaces():
    """The premise of the tests below: the lost frames' depth at their (wrong) poses is a ghost."""
    sc = get_scene()
    for i in LOST:
        _, depth = sc.render(i)
        pts, _ = unproject(depth, sc.K, _wrong_pose(sc.pose(i)), stride=2)
        assert np.median(sc.distance(pts)) > 3 * VOXEL


@pytest.mark.parametrize("how", ["status", "confidence"])
def test_lost_frames_are_not_fused_and_are_counted(tmp_path, how):
    sc, result = _run(tmp_path, LOST, how)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fusion_skipped_lost"] == len(LOST)
    assert metrics["fusion_frames"] == sc.frames - len(LOST)
    assert metrics["pointcloud_skipped_lost"] == len(LOST)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["info"]["fusion_skipped_lost"] == len(LOST)
    assert "3 lost frames not fused" in format_summary(result, str(out))
    # the map holds only the true surfaces: no ghost from the lost frames' wrong poses
    v = np.asarray(o3d.io.read_triangle_mesh(str(out / "mesh.ply")).vertices)
    assert len(v) > 500
    d = sc.distance(v)
    # measured: mean 0.37 voxel, 0.8 % of the vertices beyond 2.5 voxels (TSDF edges), the same as a run
    # without lost frames; fusing the lost frames gave 3.7 voxels and 35 %
    far = float((d > 2.5 * VOXEL).mean())
    assert d.mean() < 0.5 * VOXEL and far < 0.02, (d.mean(), far)
    pc = np.asarray(o3d.io.read_point_cloud(str(out / "pointcloud.ply")).points)
    dp = sc.distance(pc)
    assert len(pc) > 500 and np.quantile(dp, 0.99) < 0.02, np.quantile(dp, 0.99)


def test_without_lost_frames_nothing_is_skipped(tmp_path):
    sc, result = _run(tmp_path, (), "status")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion_skipped_lost"] == 0 and metrics["fusion_frames"] == sc.frames
    assert metrics["pointcloud_skipped_lost"] == 0
    assert "not fused" not in format_summary(result, str(tmp_path / "run"))


def test_settle_status_is_the_one_rule_of_lost():
    K, pose = np.eye(3), np.eye(4)
    ok = Estimate(0, 0.0, pose, K, confidence=np.ones((4, 4), np.float32))
    assert not settle_status(ok).lost and ok.status_reason == ""
    assert not settle_status(Estimate(0, 0.0, pose, K)).lost  # no confidence, no status: trusted
    said = settle_status(Estimate(0, 0.0, pose, K, status=TrackingStatus.LOST, status_reason="overlap 0.1 < 0.3"))
    assert said.lost and said.status_reason == "overlap 0.1 < 0.3"
    for conf in (np.zeros((4, 4), np.float32), np.full((4, 4), np.nan, np.float32)):
        e = settle_status(Estimate(0, 0.0, pose, K, confidence=conf))
        assert e.lost and e.status == "lost" and "confidence" in e.status_reason
    relocalized_but_empty = Estimate(0, 0.0, pose, K, confidence=np.zeros((4, 4), np.float32),
                                     status=TrackingStatus.RELOCALIZED)
    assert settle_status(relocalized_but_empty).lost  # no usable output: lost, whatever the frontend said
    one = np.zeros((4, 4), np.float32)
    one[2, 3] = 0.5
    assert not settle_status(Estimate(0, 0.0, pose, K, confidence=one)).lost


class _Spy:
    """Records, per frame, what a plugin sees: ``estimate.lost`` and the trajectory store's status."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[bool, str]] = {}

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        self.seen[frame.index] = (estimate.lost, context.trajectory.status(frame.index).value)


def test_a_zero_confidence_frame_is_lost_for_every_consumer(tmp_path):
    """A frontend that says "tracked" but gives a confidence map of zeros: the core marks the frame lost
    once, and every consumer agrees -- plugins (estimate.lost), the trajectory store and its files, the
    keyframe store (which loop closure and relocalisation read), fusion and the point map."""
    sc = get_scene()
    spy = _Spy()
    pipe = make_pipeline(tmp_path / "run", {"scene": LosingPlugin(sc, LOST, "confidence"), "spy": spy},
                         {"fusion": {"voxel_size": VOXEL, "frames": "all", "device": "cpu", "depth": "sensor",
                                     "conf_quantile": 0.0},
                          "pointcloud": {"frames": "all", "conf_quantile": 0.0, "voxel_size": 0.02}},
                         backends=["fusion", "pointcloud", "trajectory"])
    run(pipe.config, pipeline=pipe)
    for i in range(sc.frames):
        lost = i in LOST
        assert spy.seen[i] == (lost, "lost" if lost else "tracked"), i
        assert pipe.trajectory.status(i) == ("lost" if lost else "tracked")
        assert (i in pipe.keyframes) == (not lost), i  # every frame is a keyframe here, but a lost one holds nothing
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion_skipped_lost"] == len(LOST) and metrics["pointcloud_skipped_lost"] == len(LOST)

def test_rgbd_frontend_lost_frames_are_left_out_of_the_sensor_depth_map(tmp_path):
    """The real rgbd frontend loses frames 13 and 15 (views of another room) and keeps the last good pose
    for them; fusing sensor depth, the map leaves them out and counts what the frontend counted."""
    from slam3r_app.config import load_config
    from slam3r_app.pipeline import Pipeline
    from tests.test_frontend_rgbd import _ListSourcePlugin, _with_bad_frame, synthetic

    seq = synthetic.SyntheticSequence(seed=0, frames=22)
    frames = [seq.frame(i) for i in range(22)]
    for at in (13, 15):
        frames = _with_bad_frame(seq, frames, "other_scene", at=at)
    voxel = 0.03
    cfg = load_config(data={"frontend": "rgbd", "progress": False, "source": {"type": "list"},
                            "viewer": {"enabled": False}, "evaluation": {"enabled": False},
                            "pointcloud": {"frames": "all"},
                            "fusion": {"frames": "all", "depth": "sensor", "voxel_size": voxel, "device": "cpu"}})
    pipe = Pipeline(cfg, output=str(tmp_path / "run"))
    pipe.host.pm.register(_ListSourcePlugin(frames), name="listsource")
    result = run(cfg, pipeline=pipe)
    assert not result.plugin_errors and result.frames_seen == 22
    lost = pipe.context.frontend.stats()["lost"]
    assert lost == 2  # the frontend's own count
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion_skipped_lost"] == lost and metrics["fusion_frames"] == 22 - lost
    assert metrics["pointcloud_skipped_lost"] == lost
    v = np.asarray(o3d.io.read_triangle_mesh(str(tmp_path / "run" / "mesh.ply")).vertices)
    world = v @ seq.pose(0)[:3, :3].T + seq.pose(0)[:3, 3]  # the map's world is the first camera
    d = seq.scene.distance_to_surface(world)
    # measured: mean 0.12 voxel and 0.35 % of the vertices beyond 3 voxels; with the lost frames fused
    # at the poses the frontend gave them: 2.9 voxels and 40 %
    far = float((d > 3 * voxel).mean())
    assert len(v) > 1000 and np.mean(d) < 0.5 * voxel and far < 0.02, (np.mean(d), far)
