"""A third-party map plugin written only against documented modules follows a loop correction in metres.

The plugin (``AnchoredMap`` below) imports ``slam3r_app`` (hooks, types) and ``slam3r_plugins.maps``
(the public map API; ``slam3r_app.sim3`` for one inverse) and nothing else of slam3r -- the test
harness imports the rest. It keeps each keyframe's points in that keyframe's
camera frame (:class:`~slam3r_plugins.maps.AnchoredPoints`), poses them with the trajectory store's
current transforms and reads metres from the store's world scale.

The run (truth: the synthetic room of tests/test_fusion_scene.py): the frontend predicts in units of
2 m (not metric) and, from frame SWITCH on, in a wrong world (a rigid error); fusion fits the world's
scale from the sensor depth and proposes it to the store; a test plugin proposes the exact correction
of every keyframe after frame CORRECT_AT (what a perfect loop closure gives). After the run, the
plugin's map lies on the true surfaces in metres and the metric poses it reads are the true ones;
without the correction its map is doubled (the premise).
"""
from __future__ import annotations

import numpy as np

from slam3r_app import PoseUpdate, hookimpl
from slam3r_app.frame_loop import run
from slam3r_app.sim3 import sim3_inverse
from slam3r_plugins.maps import AnchoredPoints, anchor_of, frame_points, transform_chunk
from tests.test_fusion_scene import ScenePlugin, get_scene, make_pipeline
from tests.test_maps_follow_corrections import CORRECT_AT, KEYFRAMES, SWITCH, DriftFrontend, N, error_transform

UNITS = 2.0  # metres per predicted unit


class _Selection:
    """What :func:`frame_points` reads (the :class:`~slam3r_plugins.maps.PointSelection` protocol)."""

    points, conf_quantile, depth_max_factor, pixel_stride = "auto", 0.0, None, 1


class AnchoredMap:
    """A third-party point map: anchored to keyframes, exported in metres at the corrected poses."""

    def __init__(self, voxel: float) -> None:
        self.voxel = voxel
        self.acc = None
        self.corrections = 0
        self.xyz = np.zeros((0, 3))
        self.metric_poses = None

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        if estimate.lost:
            return
        pts, col, _ = frame_points(frame, estimate, _Selection())  # world points at the estimate's pose
        if not len(pts):
            return
        if self.acc is None:
            self.acc = AnchoredPoints(self.voxel, max_points=200_000)
        traj = context.trajectory
        k = anchor_of(traj, frame.index)
        self.acc.add(k, transform_chunk(sim3_inverse(traj.transform(k)), pts), col)  # into the anchor's frame

    @hookimpl
    def slam3r_poses_updated(self, update, context):
        self.corrections += bool(update.moved)  # nothing to do: the anchors' transforms are read when needed

    @hookimpl
    def slam3r_run_end(self, result, context):
        traj = context.trajectory
        xyz, _ = self.acc.merged(lambda k: traj.transform(k) if k in traj else None)
        scale = traj.world_scale
        self.xyz = xyz * (scale.value if scale.metric else 1.0)
        self.metric_poses = traj.metric_poses()


class NotMetricDrift(DriftFrontend):
    """Predicts in units of UNITS metres (never metric), in the wrong world E from SWITCH on."""

    def track(self, frame):
        est = super().track(frame)
        est.depth_is_metric = False
        return est


class DriftInUnits(ScenePlugin):
    def __init__(self, scene, E):
        super().__init__(scene, scale=UNITS)
        self.E = E

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        if name != "scene":
            return None
        self.frontend = NotMetricDrift(self.scene, self.E, scale=UNITS)
        return self.frontend


class TrueKeyframes:
    """After CORRECT_AT: every keyframe's true transform in the predicted units (a perfect loop closure)."""

    def __init__(self, sc) -> None:
        self.sc = sc

    @hookimpl
    def slam3r_propose_corrections(self, context, final):
        traj = context.trajectory
        if final or traj.last_index() != CORRECT_AT:
            return None
        truth = {}
        for k in traj.keyframe_indices():
            T = self.sc.pose(k).copy()
            T[:3, 3] /= UNITS
            truth[k] = T
        return PoseUpdate(keyframes=truth, reason="test: the true keyframe poses", based_on_revision=traj.revision)


def _run(tmp_path, name, correct: bool):
    sc = get_scene(frames=N)
    E = error_transform(sc)
    E[:3, 3] /= UNITS  # the rigid error, in the predicted units
    amap = AnchoredMap(voxel=0.02 / UNITS)
    plugins = {"scene": DriftInUnits(sc, E), "amap": amap}
    if correct:
        plugins["corr"] = TrueKeyframes(sc)
    pipe = make_pipeline(tmp_path / name, plugins,
                         {"keyframes": dict(KEYFRAMES), "fusion": {"enabled": False}},
                         backends=["keyframes", "fusion"])
    result = run(pipe.config, pipeline=pipe)
    assert not result.plugin_errors and result.frames_seen == N
    return sc, amap, pipe


def test_a_third_party_map_follows_a_loop_correction_and_reads_metric_poses(tmp_path):
    sc, amap, pipe = _run(tmp_path, "corrected", correct=True)
    assert amap.corrections == 1
    scale = pipe.trajectory.world_scale
    assert scale.metric and scale.provenance == "sensor_depth" and abs(scale.value - UNITS) < 1e-3
    gt = np.stack([sc.pose(i) for i in range(N)])
    np.testing.assert_allclose(amap.metric_poses[:, :3, 3], gt[:, :3, 3], atol=2e-3)  # metres
    np.testing.assert_allclose(amap.metric_poses[:, :3, :3], gt[:, :3, :3], atol=1e-9)
    d = sc.distance(amap.xyz)
    assert len(amap.xyz) > 300 and d.mean() < 0.01 and np.quantile(d, 0.99) < 0.03, (d.mean(), np.quantile(d, 0.99))
    # the premise: without the correction, the frames after SWITCH put a second, displaced room in the map
    sc, drifting, _ = _run(tmp_path, "drifting", correct=False)
    assert drifting.corrections == 0 and np.quantile(sc.distance(drifting.xyz), 0.9) > 0.05
    assert SWITCH < CORRECT_AT
