"""TSDF fusion and the point-cloud map against exact ground truth (tests/test_fusion_scene.py)."""
from __future__ import annotations

import json

import numpy as np
import open3d as o3d
import pytest
from pydantic import ValidationError

from slam3r_app.errors import ConfigError
from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.trajectory import read_tum
from tests.test_fusion_scene import ScenePlugin, get_scene, make_pipeline


def _mesh(path):
    m = o3d.io.read_triangle_mesh(str(path))
    assert len(m.vertices) > 500, f"{path}: only {len(m.vertices)} vertices"
    return m


def test_gt_depth_at_gt_poses_reconstructs_the_surfaces(tmp_path):
    sc = get_scene()
    voxel = 0.04
    plug = ScenePlugin(sc)
    pipe = make_pipeline(tmp_path / "run", {"scene": plug},
                         {"fusion": {"voxel_size": voxel, "frames": "all", "device": "cpu"}},
                         backends=["fusion", "trajectory"])
    result = run(pipe.config, pipeline=pipe)
    assert result.frames_seen == sc.frames and not result.plugin_errors
    mesh = _mesh(tmp_path / "run" / "mesh.ply")
    v = np.asarray(mesh.vertices)
    d = sc.distance(v)
    # the vertices lie on the true surfaces: mean under half a voxel (measured ~0.37 voxel at 96x72, where a
    # pixel covers ~5 cm of wall: most of the error is the depth images' own discretisation)
    assert d.mean() < 0.5 * voxel, d.mean()
    assert np.quantile(d, 0.9) < voxel
    assert mesh.has_vertex_colors() and np.asarray(mesh.vertex_colors).std() > 0.01
    # completeness: the true surface points seen by the first frame are close to the mesh
    from slam3r_plugins.maps.common import unproject

    _, depth = sc.render(0)
    seen, _ = unproject(depth, sc.K, sc.pose(0), stride=4)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(v))
    tree = o3d.geometry.KDTreeFlann(pcd)
    near = [tree.search_knn_vector_3d(p, 1)[2][0] for p in seen]
    assert np.mean(np.sqrt(near) < 2 * voxel) > 0.9
    pts = o3d.io.read_point_cloud(str(tmp_path / "run" / "points.ply"))
    assert len(pts.points) > 500 and sc.distance(np.asarray(pts.points)).mean() < 0.5 * voxel
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion_voxel_size"] == pytest.approx(voxel) and metrics["fusion_frames"] == sc.frames
    assert "metric_scale" not in metrics  # a metric frontend: nothing to estimate


def test_rgbd_up_to_scale_frontend_is_brought_to_metric(tmp_path):
    """Frontend predicts depth and translation in units of 2.5 m, with 2 % noise and 20 % outliers."""
    sc = get_scene()
    s_true = 2.5
    plug = ScenePlugin(sc, scale=s_true, depth_noise=0.02, outliers=0.2, seed=3)
    voxel = 0.04
    pipe = make_pipeline(tmp_path / "run", {"scene": plug},
                         {"fusion": {"voxel_size": voxel, "frames": "all", "conf_quantile": 0.0}},
                         backends=["fusion", "trajectory"])
    result = run(pipe.config, pipeline=pipe)
    assert not result.plugin_errors
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["metric_scale"] == pytest.approx(s_true, rel=0.01)
    assert metrics["metric_scale_frames"] == sc.frames
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["info"]["metric_scale"] == pytest.approx(s_true, rel=0.01)
    scale = pipe.trajectory.world_scale  # the store owns the world's scale, proposed by fusion as a correction
    assert scale.value == pytest.approx(s_true, rel=0.01) and scale.provenance == "sensor_depth" and scale.metric
    assert json.loads((tmp_path / "run" / "scale.json").read_text())["scale"] == scale.value
    # the fused sensor depth sits on the true surfaces: the poses were scaled to metres
    v = np.asarray(_mesh(tmp_path / "run" / "mesh.ply").vertices)
    assert sc.distance(v).mean() < 0.5 * voxel
    # the trajectory file is metric and says so
    text = (tmp_path / "run" / "trajectory.txt").read_text()
    assert "scale: metric" in text.splitlines()[0]
    stamps, poses = read_tum(tmp_path / "run" / "trajectory.txt")
    gt = np.stack([sc.pose(i) for i in range(sc.frames)])
    assert np.abs(poses[:, :3, 3] - gt[:, :3, 3]).max() < 0.01 * np.abs(gt[:, :3, 3]).max() + 1e-9


def test_scale_converging_late_triggers_a_rebuild(tmp_path, caplog):
    """Integrating with an early scale and rebuilding from the buffer ends on the true surfaces."""
    sc = get_scene()
    plug = ScenePlugin(sc, scale=2.0)
    voxel = 0.04
    # the first two frames see a 20 % wrong depth ratio: the live map is fused at a wrong scale at first
    pipe = make_pipeline(tmp_path / "run", {"scene": plug},
                         {"fusion": {"voxel_size": voxel, "frames": "all", "scale_mode": "auto", "buffer_stride": 1}},
                         backends=["fusion"])
    real_update = None

    def corrupt_first(st):
        nonlocal real_update
        real_update = st.estimator.update
        calls = {"n": 0}

        def update(sensor, pred, mask=None):
            calls["n"] += 1
            if calls["n"] <= 2:  # the first frames see a 20 % wrong ratio
                return real_update(sensor * 1.2, pred, mask)
            return real_update(sensor, pred, mask)

        st.estimator.update = update

    import slam3r_plugins.fusion.plugin as fusion

    class Hook:
        @hookimpl(trylast=True)
        def slam3r_run_start(self, context):
            corrupt_first(fusion._state(context))

    pipe.host.register(Hook(), "corrupt")
    caplog.set_level("INFO", logger="slam3r")
    run(pipe.config, pipeline=pipe)
    assert "rebuilding the map" in caplog.text
    assert pipe.trajectory.world_scale.value == pytest.approx(2.0, rel=0.01)
    v = np.asarray(_mesh(tmp_path / "run" / "mesh.ply").vertices)
    # rebuilt from the buffer (float16 depth) at the final scale: on the true surfaces again
    assert sc.distance(v).mean() < 0.5 * voxel


def test_monocular_predicted_depth_with_relative_voxel(tmp_path):
    sc = get_scene()
    s = 0.25  # prediction units = 4 x metres
    plug = ScenePlugin(sc, with_depth=False, scale=s)
    pipe = make_pipeline(tmp_path / "run", {"scene": plug},
                         {"fusion": {"frames": "all", "voxel_fraction": 0.02, "conf_quantile": 0.0}},
                         backends=["fusion", "pointcloud"])
    run(pipe.config, pipeline=pipe)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    _, depth0 = sc.render(0)
    expected_voxel = 0.02 * np.median(depth0[depth0 > 0]) / s
    assert metrics["fusion_voxel_size"] == pytest.approx(expected_voxel, rel=1e-3)
    assert "metric_scale" not in metrics and not pipe.trajectory.world_scale.metric
    v = np.asarray(_mesh(tmp_path / "run" / "mesh.ply").vertices)
    # the map is in prediction units: scale it back to metres to compare with the truth
    assert sc.distance(v * s).mean() < 0.3 * expected_voxel * s
    pc = o3d.io.read_point_cloud(str(tmp_path / "run" / "pointcloud.ply"))
    assert len(pc.points) > 200 and sc.distance(np.asarray(pc.points) * s).mean() < 0.01


def test_confidence_mask_drops_unconfident_predictions(tmp_path):
    """Outliers carry low confidence: the quantile mask keeps them out of the monocular map."""
    sc = get_scene()
    plug = ScenePlugin(sc, with_depth=False, outliers=0.3, seed=1)
    pipe = make_pipeline(tmp_path / "run", {"scene": plug},
                         {"fusion": {"frames": "all", "voxel_size": 0.04, "conf_quantile": 0.35},
                          "pointcloud": {"frames": "all", "conf_quantile": 0.35, "pixel_stride": 1}},
                         backends=["fusion", "pointcloud"])
    run(pipe.config, pipeline=pipe)
    v = np.asarray(_mesh(tmp_path / "run" / "mesh.ply").vertices)
    assert sc.distance(v).mean() < 0.02
    pc = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "run" / "pointcloud.ply")).points)
    assert np.quantile(sc.distance(pc), 0.95) < 0.02


def test_pointcloud_world_points_budget_and_metric_scale(tmp_path):
    sc = get_scene()
    plug = ScenePlugin(sc, scale=2.0, points=True)
    pipe = make_pipeline(tmp_path / "run", {"scene": plug},
                         {"pointcloud": {"frames": "all", "max_points": 1000, "pixel_stride": 1,
                                         "voxel_fraction": 0.001}},
                         backends=["fusion", "pointcloud"], overrides=["fusion.enabled=false"])
    run(pipe.config, pipeline=pipe)
    pc = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "run" / "pointcloud.ply")).points)
    # the budget holds over the points kept per keyframe (each frame its own chunk here, so that it can follow
    # its keyframe's corrections): the voxel grew, and the merged map has fewer points than the budget
    assert 50 < len(pc) <= 1000
    assert len(pipe.context.state["_pointcloud_state"].acc) <= 1000
    # fusion (disabled map) still estimated the scale from sensor depth; the cloud is exported in metres
    assert pipe.trajectory.world_scale.value == pytest.approx(2.0, rel=1e-3)
    assert sc.distance(pc).mean() < 0.05
    assert not (tmp_path / "run" / "mesh.ply").exists()


def test_voxel_accumulator_bounds_and_means():
    from slam3r_plugins.maps.common import VoxelAccumulator

    acc = VoxelAccumulator(0.1, max_points=50)
    rng = np.random.default_rng(0)
    for _ in range(5):
        acc.add(rng.uniform(0, 1, (400, 3)), rng.uniform(0, 255, (400, 3)))
    assert len(acc) <= 50 and acc.voxel_size > 0.1
    xyz, rgb = acc.points()
    assert xyz.min() >= 0 and xyz.max() <= 1 and rgb.max() <= 255
    acc2 = VoxelAccumulator(1.0, max_points=10)
    acc2.add(np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3]]), np.array([[0, 0, 0], [100, 100, 100]]))
    xyz, rgb = acc2.points()
    np.testing.assert_allclose(xyz, [[0.2, 0.2, 0.2]])
    np.testing.assert_allclose(rgb, [[50, 50, 50]])


def test_fusion_options_are_validated():
    from slam3r_plugins.fusion.plugin import FusionOptions

    with pytest.raises(ValidationError):
        FusionOptions(conf_quantile=1.5)
    with pytest.raises(ValidationError):
        FusionOptions(device="tpu")
    with pytest.raises(ValidationError):
        FusionOptions(voxel_sizee=0.1)
    with pytest.raises(ConfigError, match="fusion.voxel_size"):
        make_pipeline("/tmp/never", {}, {"fusion": {"voxel_size": -1}})


@pytest.mark.skipif(o3d.core.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_request_without_cuda_is_reported_by_name(tmp_path):
    plug = ScenePlugin(get_scene())
    pipe = make_pipeline(tmp_path / "run", {"scene": plug}, {"fusion": {"device": "cuda"}}, backends=["fusion"])
    result = run(pipe.config, pipeline=pipe)
    assert "fusion" in result.plugin_errors and "CUDA" in result.plugin_errors["fusion"]


def test_frames_before_the_first_scale_wait_and_are_fused_later(tmp_path, caplog):
    sc = get_scene()
    plug = ScenePlugin(sc, scale=2.0)
    pipe = make_pipeline(tmp_path / "run", {"scene": plug}, {"fusion": {"voxel_size": 0.04, "frames": "all"}},
                         backends=["fusion"])

    class Blind:  # the first three predictions are confident on 10 pixels only: too few to estimate a scale
        @hookimpl(tryfirst=True)  # from (fusion.scale_min_pixels), yet not lost (all-zero confidence is lost)
        def slam3r_process_frame(self, frame, estimate, context):
            if frame.index < 3:
                conf = np.zeros_like(estimate.confidence)
                conf[10, 10:20] = 1.0
                estimate.confidence = conf

    pipe.host.register(Blind(), "blind")  # registered after fusion: called before it
    caplog.set_level("INFO", logger="slam3r")
    run(pipe.config, pipeline=pipe)
    assert "integrating 3 frames that waited for the metric scale" in caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion_frames"] == sc.frames and metrics["metric_scale_frames"] == sc.frames - 3
    assert metrics["metric_scale"] == pytest.approx(2.0, rel=1e-3)
    assert sc.distance(np.asarray(_mesh(tmp_path / "run" / "mesh.ply").vertices)).mean() < 0.02


def test_live_mesh_for_the_viewer_is_in_frontend_units(tmp_path):
    """context.services.mesh() gives the current mesh in the frontend's (unscaled) units."""
    sc = get_scene()
    pipe = make_pipeline(tmp_path / "run", {"scene": ScenePlugin(sc, scale=2.0)},
                         {"fusion": {"voxel_size": 0.04, "frames": "all"}}, backends=["fusion"])
    run(pipe.config, pipeline=pipe)
    verts, faces, cols = pipe.context.services.mesh()
    assert verts.dtype == np.float32 and faces.dtype == np.int32 and cols.dtype == np.uint8
    assert len(verts) > 500 and faces.max() < len(verts)
    assert sc.distance(verts * 2.0).mean() < 0.02  # frontend units x metric scale = metres
