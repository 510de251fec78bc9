"""COLMAP / nerfstudio / GLB / depth exports, checked with the readers of those ecosystems.

Truth from outside the code under test: pycolmap reads the COLMAP model back, trimesh loads the GLB,
``json`` the transforms, OpenCV the PNGs; poses are compared with the run's TUM ``trajectory.txt``
and intrinsics with the synthetic renderer's camera.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")
trimesh = pytest.importorskip("trimesh")

import cv2  # noqa: E402

from slam3r_app.cli import main  # noqa: E402
from slam3r_app.config import load_config  # noqa: E402
from slam3r_app.frame_loop import run  # noqa: E402
from slam3r_app.hookspecs import hookimpl  # noqa: E402
from slam3r_app.pipeline import Pipeline  # noqa: E402
from slam3r_app.plugin_host import PluginHost  # noqa: E402
from slam3r_app.trajectory import invert_pose, read_tum  # noqa: E402
from slam3r_app.types import PoseUpdate, ScaleProvenance, WorldScale  # noqa: E402
from slam3r_datasets.synthetic import SyntheticSequence  # noqa: E402
from slam3r_plugins import trajectory_export  # noqa: E402
from slam3r_plugins.exports import plugin as exports_plugin  # noqa: E402
from slam3r_plugins.exports.options import ExportOptions  # noqa: E402
from tests.fakes import FakeFrontend, FakePlugin, true_pose  # noqa: E402

N = 12
GL = np.diag([1.0, -1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """The rgbd frontend on 12 synthetic frames, every export written during the run."""
    out = tmp_path_factory.mktemp("exports") / "run"
    cfg = load_config("synthetic.yaml", overrides=[
        "progress=false", f"source.synthetic_frames={N}", "evaluation.enabled=false",
        "exports.formats=[colmap, nerfstudio, glb, depth]", "keyframes.max_interval=4"])
    result = run(cfg, output=str(out))
    assert not result.stopped_early and result.frames_seen == N
    return out, result


@pytest.fixture(scope="module")
def seq():
    return SyntheticSequence(seed=0, frames=N)


def _trajectory(run_dir: Path) -> dict[str, np.ndarray]:
    stamps, poses = read_tum(run_dir / "trajectory.txt")
    return {f"{t:.6f}": P for t, P in zip(stamps, poses)}


def _check_colmap(model: Path, traj: dict[str, np.ndarray], K: np.ndarray, n: int) -> "pycolmap.Reconstruction":
    rec = pycolmap.Reconstruction(str(model))
    assert rec.num_images() == n
    for image in rec.images.values():
        c2w = traj[Path(image.name).stem]
        cfw = image.cam_from_world()
        np.testing.assert_allclose(cfw.matrix(), invert_pose(c2w)[:3, :], atol=1e-6)
        # the quaternion COLMAP stores (scalar first in its text files) is the world-to-camera rotation
        from scipy.spatial.transform import Rotation

        q = cfw.rotation.quat  # x y z w
        np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), c2w[:3, :3].T, atol=1e-6)
        cam = rec.cameras[image.camera_id]
        assert cam.model_name == "PINHOLE"
        np.testing.assert_allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], atol=1e-9)
    return rec


# ----------------------------------------------------------------------------- written during the run
def test_colmap_in_run_reads_back_with_pycolmap(synthetic_run, seq):
    out, result = synthetic_run
    rec = _check_colmap(out / "exports" / "sparse" / "0", _trajectory(out), seq.K, N)
    assert rec.num_points3D() > 1000
    for image in rec.images.values():
        assert (out / "exports" / "images" / image.name).is_file()
    # tracks: each observation's keypoint is the point's projection (COLMAP pixel convention)
    n_obs = 0
    for pid, p in list(rec.points3D.items())[::50]:
        for el in p.track.elements:
            image = rec.images[el.image_id]
            uv = rec.cameras[image.camera_id].img_from_cam(image.cam_from_world() * p.xyz)
            np.testing.assert_allclose(uv, image.points2D[el.point2D_idx].xy, atol=1e-6)
            assert image.points2D[el.point2D_idx].point3D_id == pid
            n_obs += 1
    assert n_obs > 0


def test_colmap_tracks_without_depth_files_come_from_the_keyframe_store(tmp_path, seq):
    out = tmp_path / "run"
    cfg = load_config("synthetic.yaml", overrides=["progress=false", "source.synthetic_frames=8",
                                                   "evaluation.enabled=false", "exports.formats=[colmap]"])
    run(cfg, output=str(out))
    assert not (out / "exports" / "depth").exists()
    rec = _check_colmap(out / "exports" / "sparse" / "0", _trajectory(out), seq.K, 8)
    assert rec.compute_num_observations() > 100
    for _pid, p in list(rec.points3D.items())[::100]:
        for el in p.track.elements:  # keypoints in the full-size image, not the thumbnail
            image = rec.images[el.image_id]
            uv = rec.cameras[image.camera_id].img_from_cam(image.cam_from_world() * p.xyz)
            np.testing.assert_allclose(uv, image.points2D[el.point2D_idx].xy, atol=1e-6)


def test_nerfstudio_transforms_follow_the_schema(synthetic_run, seq):
    out, _ = synthetic_run
    root = out / "exports"
    data = json.loads((root / "transforms.json").read_text())
    assert data["camera_model"] == "OPENCV"
    K = seq.K
    assert (data["fl_x"], data["fl_y"], data["w"], data["h"]) == (K[0, 0], K[1, 1], 320, 240)
    assert (data["cx"], data["cy"]) == (K[0, 2] + 0.5, K[1, 2] + 0.5)
    assert (root / data["ply_file_path"]).is_file()
    traj = _trajectory(out)
    assert len(data["frames"]) == N
    for fr in data["frames"]:
        name = Path(fr["file_path"]).stem
        assert fr["file_path"] == f"images/{name}.png" and (root / fr["file_path"]).is_file()
        M = np.array(fr["transform_matrix"])
        np.testing.assert_allclose(M, traj[name] @ GL, atol=1e-6)
        # OpenGL camera axes: the camera looks down -z, its +y is the OpenCV camera's -y
        np.testing.assert_allclose(-M[:3, 2], traj[name][:3, 2], atol=1e-6)
        depth = cv2.imread(str(root / fr["depth_file_path"]), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and depth.shape == (240, 320)


def test_glb_has_points_and_one_frustum_per_camera(synthetic_run):
    out, _ = synthetic_run
    scene = trimesh.load(str(out / "exports" / "scene.glb"))
    meta = scene.metadata["slam3r"]
    W = np.array(meta["world_from_slam3r"])
    np.testing.assert_allclose(W, GL)
    points = scene.geometry["points"]
    assert isinstance(points, trimesh.PointCloud) and len(points.vertices) > 1000
    assert points.colors.shape == (len(points.vertices), 4) and points.colors[:, :3].std() > 0
    traj = _trajectory(out)
    cams = [n for n in scene.graph.nodes_geometry if n.startswith("camera_")]
    assert len(cams) == N
    for node in cams:
        T, geom = scene.graph.get(node)
        assert isinstance(scene.geometry[geom], trimesh.path.Path3D)
        np.testing.assert_allclose(T, W @ traj[node[len("camera_"):]], atol=1e-9)
    T, _ = scene.graph.get("points")
    np.testing.assert_allclose(T, W)


def test_depth_files_hold_the_frames_depth_and_the_final_poses(synthetic_run, seq):
    out, _ = synthetic_run
    root = out / "exports"
    index = json.loads((root / "depth" / "frames.json").read_text())
    assert index["metric"] is True and index["png_unit"] == "millimetres"
    traj = _trajectory(out)
    assert len(index["frames"]) == N
    for k, fr in enumerate(index["frames"]):
        name = f"{fr['timestamp']:.6f}"
        np.testing.assert_allclose(np.array(fr["pose"]), traj[name], atol=1e-6)
        with np.load(root / fr["depth_npz"]) as z:
            d, conf, K = z["depth"], z["confidence"], z["K"]
        np.testing.assert_allclose(K, seq.K)
        assert d.dtype == np.float32 and conf.shape == d.shape
        _, true_depth = seq.render(k)
        ok = d > 0
        assert ok.mean() > 0.5
        np.testing.assert_allclose(d[ok], true_depth[ok], rtol=1e-6)  # rgbd: the sensor depth, masked
        mm = cv2.imread(str(root / fr["depth_png"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mm, np.clip(np.rint(d.astype(np.float64) * 1000), 0, 65535).astype(np.uint16))
    stamps, poses = read_tum(root / "depth" / "trajectory.txt")
    assert len(stamps) == N


def test_cameras_json_holds_the_run_intrinsics(synthetic_run, seq):
    out, result = synthetic_run
    data = json.loads((out / "cameras.json").read_text())
    assert (data["width"], data["height"]) == (320, 240) and len(data["frames"]) == N
    f = data["frames"][0]
    assert [f["fx"], f["fy"], f["cx"], f["cy"]] == [seq.K[0, 0], seq.K[1, 1], seq.K[0, 2], seq.K[1, 2]]
    assert [g["index"] for g in data["frames"] if g["keyframe"]] == result.keyframe_indices


# ----------------------------------------------------------------------------- the export command
def test_export_command_colmap_matches_the_trajectory(synthetic_run, seq, tmp_path, capsys):
    out, _ = synthetic_run
    dest = tmp_path / "colmap"
    assert main(["export", str(out), "--format", "colmap", "--out", str(dest), "--frames", "keyframes"]) == 0
    kf = json.loads((out / "cameras.json").read_text())
    n_kf = sum(1 for f in kf["frames"] if f["keyframe"])
    rec = _check_colmap(dest / "sparse" / "0", _trajectory(out), seq.K, n_kf)
    assert rec.num_points3D() > 1000 and rec.compute_num_observations() > 0
    # the images were re-read from the source: the renderer's frames, bit for bit (PNG)
    name = sorted(p.name for p in (dest / "images").iterdir())[0]
    img = cv2.cvtColor(cv2.imread(str(dest / "images" / name)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img, seq.render(round(float(Path(name).stem) * seq.fps))[0])
    assert "colmap" in capsys.readouterr().out


def test_in_run_exports_take_the_maps_in_memory_and_never_read_another_plugins_files(tmp_path, monkeypatch):
    """fusion and pointcloud hand their maps over on ``context.services.exported``; the GLB's mesh and
    points equal what those plugins wrote (read back here by Open3D, the independent reader), while
    every way of reading a map file back is switched off during the run."""
    import open3d as o3d

    from slam3r_plugins.exports import points as export_points

    def refuse(*args, **kwargs):
        raise AssertionError(f"a map file was read back during the run: {args}")

    with monkeypatch.context() as m:
        m.setattr(export_points, "read_ply_points", refuse)
        m.setattr(o3d.io, "read_point_cloud", refuse)
        m.setattr(o3d.io, "read_triangle_mesh", refuse)
        m.setattr(trimesh, "load", refuse)
        cfg = load_config("synthetic.yaml", overrides=[
            "progress=false", "source.synthetic_frames=6", "evaluation.enabled=false",
            "exports.formats=[glb]", "exports.glb_geometry=both", "exports.points=pointcloud",
            "pointcloud.enabled=true", "fusion.enabled=true"])
        result = run(cfg, output=str(tmp_path / "run"))
    assert not result.plugin_errors and not result.stopped_early
    out = tmp_path / "run"
    scene = trimesh.load(str(out / "exports" / "scene.glb"))
    assert scene.metadata["slam3r"]["points_from"] == "pointcloud.ply"
    mesh = o3d.io.read_triangle_mesh(str(out / "mesh.ply"))
    glb_mesh = scene.geometry["mesh"]
    assert len(glb_mesh.vertices) == len(mesh.vertices) > 100 and len(glb_mesh.faces) == len(mesh.triangles)
    np.testing.assert_allclose(glb_mesh.vertices, np.asarray(mesh.vertices), atol=1e-5)  # ply holds float32
    np.testing.assert_array_equal(glb_mesh.faces, np.asarray(mesh.triangles))
    pcd = o3d.io.read_point_cloud(str(out / "pointcloud.ply"))
    glb_pts = np.asarray(scene.geometry["points"].vertices)
    ref = np.asarray(pcd.points)
    assert len(glb_pts) == len(ref) > 100
    np.testing.assert_allclose(np.sort(glb_pts, axis=0), np.sort(ref, axis=0), atol=1e-5)


def test_export_command_all_formats_agree_with_the_in_run_files(synthetic_run, tmp_path):
    out, _ = synthetic_run
    dest = tmp_path / "all"
    assert main(["export", str(out), "--format", "nerfstudio,glb", "--format", "depth", "--out", str(dest)]) == 0
    a = json.loads((dest / "transforms.json").read_text())
    b = json.loads((out / "exports" / "transforms.json").read_text())
    assert [f["file_path"] for f in a["frames"]] == [f["file_path"] for f in b["frames"]]
    np.testing.assert_allclose([f["transform_matrix"] for f in a["frames"]],
                               [f["transform_matrix"] for f in b["frames"]], atol=1e-6)
    assert all("depth_file_path" in f for f in a["frames"])  # the source's sensor depth
    assert (dest / "scene.glb").is_file() and (dest / "depth" / "frames.json").is_file()


def test_export_command_errors_name_the_problem(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "colmap", "--out", str(tmp_path / "o")]) == 1
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--format", "colmap"]) == 1
    assert "trajectory.txt" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--format", "ply"]) == 2
    assert "colmap, nerfstudio, glb, depth" in capsys.readouterr().err


def test_a_missing_library_is_named_with_its_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycolmap" else real(name, *a))
    with pytest.raises(Exception) as e:
        ExportOptions(formats=["colmap"])
    assert "pycolmap" in str(e.value) and "slam3r[export]" in str(e.value)
    assert ExportOptions(formats=["nerfstudio"]).formats == ["nerfstudio"]


# ----------------------------------------------------------------------------- poses at the end, depth at the final scale
class Corrector:
    """Changes the world's scale during the run (proposed to the store, as fusion does) and corrects every pose
    after the fact (like a loop closure), with the final scale."""

    correction = np.array([[0.0, -1.0, 0.0, 0.5], [1.0, 0.0, 0.0, -0.2], [0.0, 0.0, 1.0, 0.1], [0.0, 0.0, 0.0, 1.0]])

    @hookimpl
    def slam3r_propose_corrections(self, context, final):
        traj = context.trajectory
        if not final:
            s = 0.5 if traj.last_index() < 3 else 0.3  # still converging
            if traj.world_scale.value == s:
                return None
            return PoseUpdate(scale=WorldScale(s, ScaleProvenance.SENSOR_DEPTH), based_on_revision=traj.revision)
        # the final estimate (the fake frontend predicts 4x too large) with the correction of every pose
        return PoseUpdate(keyframes={k: self.correction @ T for k, T in traj.keyframe_transforms().items()},
                          scale=WorldScale(0.25, ScaleProvenance.SENSOR_DEPTH), based_on_revision=traj.revision,
                          reason="test: correct every pose at the end")


class FourTimesTooLarge(FakePlugin):
    """The fake frontend predicting depth 8 for the plane at 2 m and translations x4 (not metric)."""

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        self.frontend = FakeFrontend(scale=4.0)
        return self.frontend


def test_exports_take_the_final_poses_and_rescale_depth(tmp_path):
    cfg = load_config(data={"source": {"type": "fake"}, "frontend": "fake", "progress": False,
                            "exports": {"formats": ["colmap", "nerfstudio", "depth", "glb"]}})
    host = PluginHost(builtins=False, entry_points=False)
    for name, p in {"fake": FourTimesTooLarge(n=6), "trajectory": trajectory_export, "exports": exports_plugin,
                    "corrector": Corrector()}.items():
        host.register(p, name)
    run(cfg, pipeline=Pipeline(cfg, output=str(tmp_path / "run"), host=host))
    root = tmp_path / "run" / "exports"
    # the corrected predicted poses at the final scale: a rigid motion of the true ones
    C = Corrector.correction.copy()
    C[:3, 3] *= 0.25
    expected = [C @ true_pose(i) for i in range(6)]
    stamps, traj = read_tum(tmp_path / "run" / "trajectory.txt")
    np.testing.assert_allclose(traj, expected, atol=1e-6)
    index = json.loads((root / "depth" / "frames.json").read_text())
    assert index["metric"] is True
    for fr, want in zip(index["frames"], expected):
        np.testing.assert_allclose(np.array(fr["pose"]), want, atol=1e-9)
        with np.load(root / fr["depth_npz"]) as z:
            np.testing.assert_allclose(z["depth"], 2.0, rtol=1e-6)  # 8 x the final 0.25, not 0.5 or 0.3
        assert (cv2.imread(str(root / fr["depth_png"]), cv2.IMREAD_UNCHANGED) == 2000).all()
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    for image in rec.images.values():
        i = int(round((float(Path(image.name).stem) - 100.0) / 0.1))
        np.testing.assert_allclose(image.cam_from_world().matrix(), invert_pose(expected[i])[:3, :], atol=1e-9)
    assert rec.num_points3D() > 0  # unprojected depth (the fake run has no map plugin)
    pts = np.array([p.xyz for p in rec.points3D.values()])
    # the plane z = 2 in every camera, seen from the corrected poses: world points lie on it
    cam0 = (pts - expected[0][:3, 3]) @ expected[0][:3, :3]
    np.testing.assert_allclose(cam0[:, 2], 2.0, atol=1e-6)


class LosesFrameTwo(FakePlugin):
    """The fake frontend, with frame 2's tracking lost (its pose a placeholder)."""

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        from slam3r_app.types import TrackingStatus

        class Lossy(FakeFrontend):
            def track(self, frame):
                est = super().track(frame)
                if frame.index == 2:
                    est.status = TrackingStatus.LOST
                    est.pose = np.eye(4)
                return est

        self.frontend = Lossy()
        return self.frontend


def test_lost_frames_are_left_out_of_the_exports(tmp_path):
    cfg = load_config(data={"source": {"type": "fake"}, "frontend": "fake", "progress": False,
                            "exports": {"formats": ["colmap", "nerfstudio"]}})
    host = PluginHost(builtins=False, entry_points=False)
    for name, p in {"fake": LosesFrameTwo(n=5), "trajectory": trajectory_export, "exports": exports_plugin}.items():
        host.register(p, name)
    run(cfg, pipeline=Pipeline(cfg, output=str(tmp_path / "run"), host=host))
    cams = json.loads((tmp_path / "run" / "cameras.json").read_text())
    assert [f["status"] for f in cams["frames"]] == ["tracked", "tracked", "lost", "tracked", "tracked"]
    rec = pycolmap.Reconstruction(str(tmp_path / "run" / "exports" / "sparse" / "0"))
    assert sorted(round((float(Path(im.name).stem) - 100.0) / 0.1) for im in rec.images.values()) == [0, 1, 3, 4]
    ns = json.loads((tmp_path / "run" / "exports" / "transforms.json").read_text())
    assert len(ns["frames"]) == 4
