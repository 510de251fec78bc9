"""Synthetic sequences: determinism, exact depth and poses, the written TUM / Sintel layouts, the synth command."""
from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest

from slam3r_app.trajectory import read_tum, rotation_angle_deg
from slam3r_datasets import SintelSource, SyntheticScene, SyntheticSequence, SyntheticSource, TumSource
from slam3r_datasets.synthetic import look_at

W, H = 80, 60  # small renders keep the tests fast


def _unproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    pc = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=1)
    return pc @ c2w[:3, :3].T + c2w[:3, 3]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_arrays_other_seed_differs():
    a = SyntheticSequence(seed=3, frames=10, width=W, height=H)
    b = SyntheticSequence(seed=3, frames=10, width=W, height=H)
    c = SyntheticSequence(seed=4, frames=10, width=W, height=H)
    ra, da = a.render(7)
    rb, db = b.render(7)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(a.poses(), b.poses())
    rc, dc = c.render(7)
    assert not np.array_equal(ra, rc) and not np.array_equal(da, dc)
    assert a.scene.size != c.scene.size


def test_same_seed_identical_files(tmp_path):
    for fmt in ("tum", "sintel"):
        p1 = SyntheticSequence(seed=5, frames=3, width=W, height=H, dynamic=True).write(tmp_path / f"a_{fmt}", fmt)
        p2 = SyntheticSequence(seed=5, frames=3, width=W, height=H, dynamic=True).write(tmp_path / f"b_{fmt}", fmt)
        files1 = sorted(x.relative_to(tmp_path / f"a_{fmt}") for x in (tmp_path / f"a_{fmt}").rglob("*") if x.is_file())
        files2 = sorted(x.relative_to(tmp_path / f"b_{fmt}") for x in (tmp_path / f"b_{fmt}").rglob("*") if x.is_file())
        assert files1 == files2 and len(files1) >= 9
        for f in files1:
            assert filecmp.cmp(tmp_path / f"a_{fmt}" / f, tmp_path / f"b_{fmt}" / f, shallow=False), f
        assert p1.relative_to(tmp_path / f"a_{fmt}") == p2.relative_to(tmp_path / f"b_{fmt}")
    p3 = SyntheticSequence(seed=6, frames=3, width=W, height=H).write(tmp_path / "c", "tum")
    assert (p3 / "groundtruth.txt").read_bytes() != (tmp_path / "a_tum" / "groundtruth.txt").read_bytes()


# ----------------------------------------------------------------------------- exact ground truth
def test_depth_equals_analytic_ray_plane_distance():
    scene = SyntheticScene(seed=2)
    Wr, Hr, Dr = scene.size
    eye = np.array([Wr / 2, 2.2, Dr / 2])  # above every object, looking up at the ceiling, tilted by 20 deg
    tilt = np.radians(20.0)
    c2w = look_at(eye, eye + np.array([np.sin(tilt), np.cos(tilt), 0.0]), up=(0.0, 0.0, 1.0))
    K = np.array([[70.0, 0.0, 40.0], [0.0, 72.0, 30.0], [0.0, 0.0, 1.0]])  # pixel (40, 30) is on the optical axis
    rgb, depth = scene.render(c2w, K, W, H)
    assert depth[30, 40] == pytest.approx((Hr - 2.2) / np.cos(tilt), abs=1e-5)
    # every pixel: z-depth of the ray's hit with the plane y = H, computed independently
    v, u = np.mgrid[0:H, 0:W]
    d = np.stack([(u - 40.0) / 70.0, (v - 30.0) / 72.0, np.ones_like(u, dtype=float)], -1) @ c2w[:3, :3].T
    t = (Hr - eye[1]) / d[..., 1]
    np.testing.assert_allclose(depth, t, atol=2e-5)
    assert rgb.std() > 5  # textured


def test_unprojected_depth_lies_on_the_true_surfaces():
    seq = SyntheticSequence(seed=1, frames=40, width=W, height=H)
    for i in (0, 20, 39):
        rgb, depth = seq.render(i)
        assert (depth > 0).all() and depth.max() < 13.0  # closed room, fits 16-bit at 5000/m
        pts = _unproject(depth, seq.K, seq.pose(i))
        dist = seq.scene.distance_to_surface(pts)
        assert dist.max() < 1e-4, dist.max()
        # and a wrong pose does not
        wrong = seq.pose(i).copy()
        wrong[:3, 3] += [0.02, 0.02, 0.02]
        assert np.median(seq.scene.distance_to_surface(_unproject(depth, seq.K, wrong))) > 5e-3


def test_mesh_is_the_rendered_geometry():
    scene = SyntheticScene(seed=1)
    m = scene.mesh()
    assert len(m.triangles) == sum(len(s.triangles) for s in scene.shapes if not s.dynamic)
    v = np.asarray(m.vertices)
    assert np.abs(scene.distance_to_surface(v)).max() < 1e-5
    assert v.min(axis=0) == pytest.approx([0, 0, 0], abs=1e-9)
    assert v.max(axis=0) == pytest.approx(scene.size, abs=1e-9)
    assert m.has_vertex_colors()


def test_camera_path_is_smooth_and_small_steps():
    seq = SyntheticSequence(seed=0, frames=120)
    P = seq.poses()
    steps = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    assert 0.005 < steps.min() and steps.max() < 0.02
    rel = np.einsum("nji,njk->nik", P[:-1, :3, :3], P[1:, :3, :3])
    assert rotation_angle_deg(rel).max() < 1.0
    for T in P:  # proper rotations, camera inside the room
        np.testing.assert_allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12)
        assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)
        assert (T[:3, 3] > 0).all() and (T[:3, 3] < seq.scene.size).all()


def test_dynamic_objects_move_and_gt_stays_the_cameras():
    seq = SyntheticSequence(seed=0, frames=60, width=W, height=H, dynamic=True)
    assert any(s.dynamic for s in seq.scene.shapes)
    moved = 0
    for i in (0, 15, 30, 45):
        t = seq.timestamp(i)
        rgb, depth = seq.render(i)
        pts = _unproject(depth, seq.K, seq.pose(i))
        assert seq.scene.distance_to_surface(pts, time=t, include_dynamic=True).max() < 1e-4
        off_static = seq.scene.distance_to_surface(pts) > 0.05
        moved += int(off_static.mean() > 0.01)  # a moving object covers part of the view
    assert moved >= 1
    static = SyntheticSequence(seed=0, frames=60, width=W, height=H)
    assert static.scene.size == seq.scene.size  # the room does not depend on the movers


# ----------------------------------------------------------------------------- written layouts
def test_tum_layout_reads_back_exactly(tmp_path):
    seq = SyntheticSequence(seed=7, frames=4, width=W, height=H)
    out = seq.write(tmp_path / "synth_tum", "tum")
    assert out == tmp_path / "synth_tum"
    for name in ("rgb.txt", "depth.txt", "groundtruth.txt", "intrinsics.txt", "synthetic.json"):
        assert (out / name).is_file()
    src = TumSource(out)
    assert len(src) == 4 and src.has_gt and src.info()["intrinsics_from"].endswith("intrinsics.txt")
    gt_t, gt = read_tum(out / "groundtruth.txt")
    np.testing.assert_allclose(gt, seq.poses(), atol=1e-8)
    for f in src.frames():
        rgb, depth = seq.render(f.index)
        np.testing.assert_array_equal(f.rgb, rgb)
        assert np.abs(f.depth - depth).max() <= 0.5 / 5000 + 1e-6  # 16-bit PNG at 5000 per metre
        np.testing.assert_allclose(f.gt_pose, seq.pose(f.index), atol=1e-8)
        np.testing.assert_allclose(f.intrinsics, seq.K, atol=1e-12)
        assert f.timestamp == pytest.approx(f.index / 30.0, abs=1e-6)
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["seed"] == 7 and meta["frames"] == 4


def test_sintel_layout_reads_back_exactly(tmp_path):
    seq = SyntheticSequence(seed=8, frames=3, width=W, height=H)
    img_dir = seq.write(tmp_path / "synth_sintel", "sintel", name="room")
    assert img_dir == tmp_path / "synth_sintel" / "training" / "final" / "room"
    assert (tmp_path / "synth_sintel" / "training" / "camdata_left" / "room" / "frame_0001.cam").is_file()
    for path in (img_dir, tmp_path / "synth_sintel"):
        frames = list(SintelSource(path).frames())
        assert len(frames) == 3
        for f in frames:
            rgb, depth = seq.render(int(f.timestamp))
            np.testing.assert_array_equal(f.rgb, rgb)
            np.testing.assert_array_equal(f.depth, depth)  # float32 .dpt: exact
            np.testing.assert_allclose(f.gt_pose, seq.pose(int(f.timestamp)), atol=1e-12)
            np.testing.assert_array_equal(f.intrinsics, seq.K)


def test_synthetic_source_on_the_fly():
    src = SyntheticSource(seed=2, frames=20, width=W, height=H, first=2, stride=5, max_frames=3)
    assert len(src) == 3 and src.has_depth and src.has_gt and not src.is_live
    frames = list(src.frames())
    seq = SyntheticSequence(seed=2, frames=20, width=W, height=H)
    assert [f.index for f in frames] == [0, 1, 2]
    for f, i in zip(frames, (2, 7, 12)):
        np.testing.assert_array_equal(f.gt_pose, seq.pose(i))
        assert f.timestamp == pytest.approx(i / 30.0)
        np.testing.assert_array_equal(f.depth, seq.render(i)[1])
    info = src.info()
    json.dumps(info)
    assert info["frames"] == 3 and info["frames_rendered"] == 20 and info["seed"] == 2


def test_synth_command(tmp_path, capsys):
    from slam3r_app.cli import main

    rc = main(["synth", "--out", str(tmp_path / "s"), "--frames", "3", "--format", "tum", "--seed", "4",
               "--width", "64", "--height", "48", "--quiet"])
    assert rc == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    src = TumSource(tmp_path / "s")
    assert len(src) == 3 and next(src.frames()).rgb.shape == (48, 64, 3)
    rc = main(["synth", "--out", str(tmp_path / "d"), "--frames", "2", "--format", "sintel", "--dynamic",
               "--width", "64", "--height", "48", "-q"])
    assert rc == 0 and len(SintelSource(tmp_path / "d")) == 2
    assert main(["synth", "--out", str(tmp_path / "x"), "--frames", "0", "-q"]) == 2
