"""Calibration in the readers: undistortion onto the pinhole camera and depth registration, checked
against geometry written out here (the Brown-Conrady lens model and pinhole projection by hand)."""
from __future__ import annotations

import numpy as np
import pytest

from slam3r_app.errors import SourceError
from slam3r_app.types import Frame
from slam3r_datasets.calibration import TUM_DISTORTION, DepthRegistration, Undistorter, as_distortion, depth_registration
from slam3r_datasets.tum import TUM_INTRINSICS, TumSource

W, H = 640, 480
K1 = np.array([[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1.0]])  # TUM freiburg1
D1 = np.array(TUM_DISTORTION["freiburg1"])


def distort(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brown-Conrady on normalised coordinates (k1 k2 p1 p2 k3), written out independently of OpenCV."""
    k1, k2, p1, p2, k3 = d
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def _points(seed: int = 0) -> np.ndarray:
    """3D points in front of the camera, projecting (pinhole) onto a jittered grid well inside the image."""
    rng = np.random.default_rng(seed)
    gv, gu = np.mgrid[60:H - 59:90, 60:W - 59:86].astype(np.float64)
    u = gu.ravel() + rng.uniform(-10, 10, gu.size)
    v = gv.ravel() + rng.uniform(-10, 10, gv.size)
    z = rng.uniform(0.8, 3.0, u.size)
    return np.stack([(u - K1[0, 2]) / K1[0, 0] * z, (v - K1[1, 2]) / K1[1, 1] * z, z], 1)


def _distorted_view(P: np.ndarray, sigma: float = 1.5):
    """Colour with a Gaussian blob and depth with a disc of the point's z at each point's *distorted* projection."""
    x, y = P[:, 0] / P[:, 2], P[:, 1] / P[:, 2]
    xd, yd = distort(x, y, D1)
    ud, vd = K1[0, 0] * xd + K1[0, 2], K1[1, 1] * yd + K1[1, 2]
    vv, uu = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W), np.float64)
    depth = np.zeros((H, W), np.float32)
    for a, b, z in zip(ud, vd, P[:, 2]):
        img += np.exp(-((uu - a) ** 2 + (vv - b) ** 2) / (2 * sigma ** 2))
        depth[(uu - a) ** 2 + (vv - b) ** 2 <= 3.5 ** 2] = z
    rgb = np.repeat(np.clip(img * 250, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return rgb, depth


def test_undistorted_pixels_land_on_the_pinhole_projection():
    P = _points()
    rgb, depth = _distorted_view(P)
    frame = Frame(index=0, timestamp=0.0, rgb=rgb, depth=depth, intrinsics=K1.copy())
    out = Undistorter(K1, D1)(frame)
    np.testing.assert_array_equal(out.intrinsics, K1)  # the frame keeps K: it is now a pinhole camera with K
    u = K1[0, 0] * P[:, 0] / P[:, 2] + K1[0, 2]  # the pinhole projection: the truth
    v = K1[1, 1] * P[:, 1] / P[:, 2] + K1[1, 2]
    img = out.rgb[..., 0].astype(np.float64)
    errs = []
    for a, b, z in zip(u, v, P[:, 2]):
        i0, j0 = int(round(b)), int(round(a))
        win = img[i0 - 4:i0 + 5, j0 - 4:j0 + 5]
        vv, uu = np.mgrid[i0 - 4:i0 + 5, j0 - 4:j0 + 5]
        wgt = np.clip(win - 20, 0, None)
        errs.append(np.hypot((wgt * uu).sum() / wgt.sum() - a, (wgt * vv).sum() / wgt.sum() - b))
        assert out.depth[i0, j0] == pytest.approx(z, abs=1e-6)  # the point's own depth, not a blend
    assert max(errs) < 0.25, errs  # blobs (blurred by the lens: several px) land within a quarter pixel
    # a distorted image left as it is misplaces the same points by pixels near the edges
    shift = [np.hypot(*np.subtract(np.unravel_index(np.argmax(rgb[max(0, int(b) - 30):int(b) + 30,
                                                                       max(0, int(a) - 30):int(a) + 30, 0]), (60, 60)),
                                   (30, 30))) for a, b in zip(u, v) if 30 < a < W - 30 and 30 < b < H - 30]
    assert max(shift) > 3


def test_depth_is_never_blended_and_holes_stay_invalid():
    rng = np.random.default_rng(1)
    depth = rng.choice(np.array([0.0, 0.9, 1.7, 2.5], np.float32), size=(H, W))
    depth[200:260, 300:360] = 0  # a hole
    out = Undistorter(K1, D1).depth(depth)
    assert set(np.unique(out)) <= {0.0, 0.9, 1.7, 2.5} | {np.float32(v) for v in (0.9, 1.7, 2.5)}
    # the hole's centre is near the principal point, where the lens barely moves pixels: it stays a hole
    assert np.all(out[215:245, 315:345] == 0)
    # the corners sample outside the distorted image (k1 > 0 pushes them out): invalid, not invented
    assert out[0, 0] == 0 and out[-1, -1] == 0


def test_tum_reader_undistorts_freiburg1_and_keeps_freiburg3(tmp_path):
    import cv2

    P = _points(seed=2)
    rgb, depth = _distorted_view(P)
    for name in ("rgbd_dataset_freiburg1_desk", "rgbd_dataset_freiburg3_cabinet"):
        root = tmp_path / name
        (root / "rgb").mkdir(parents=True)
        (root / "depth").mkdir()
        cv2.imwrite(str(root / "rgb" / "1.000000.png"), rgb[..., ::-1])
        cv2.imwrite(str(root / "depth" / "1.000000.png"), np.round(depth * 5000).astype(np.uint16))
        (root / "rgb.txt").write_text("# colour\n1.000000 rgb/1.000000.png\n")
        (root / "depth.txt").write_text("# depth\n1.000000 depth/1.000000.png\n")
    f1 = next(iter(TumSource(tmp_path / "rgbd_dataset_freiburg1_desk").frames()))
    expect = Undistorter(np.array([[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1]]), D1)
    np.testing.assert_array_equal(f1.rgb, expect.color(rgb))
    np.testing.assert_array_equal(f1.depth, expect.depth(np.round(depth * 5000).astype(np.float32) / 5000))
    src3 = TumSource(tmp_path / "rgbd_dataset_freiburg3_cabinet")
    assert src3.distortion is None and "undistorted already" in src3.info()["distortion_from"]
    np.testing.assert_array_equal(next(iter(src3.frames())).rgb, rgb)
    # the user's own intrinsics: the dataset's distortion is not assumed; explicit coefficients are used
    src = TumSource(tmp_path / "rgbd_dataset_freiburg1_desk", intrinsics=list(TUM_INTRINSICS["freiburg1"]))
    assert src.distortion is None
    src = TumSource(tmp_path / "rgbd_dataset_freiburg1_desk", intrinsics=list(TUM_INTRINSICS["freiburg1"]),
                    distortion=list(D1))
    np.testing.assert_array_equal(next(iter(src.frames())).rgb, expect.color(rgb))
    assert TumSource(tmp_path / "rgbd_dataset_freiburg1_desk", distortion="none").distortion is None


def test_bad_distortion_is_named():
    with pytest.raises(SourceError, match=r"source.distortion: .*4, 5, 8, 12 or 14 coefficients.*got 3"):
        as_distortion([0.1, 0.2, 0.3])
    with pytest.raises(SourceError, match="source.distortion: expected 'none'"):
        as_distortion("fisheye")
    assert as_distortion([0, 0, 0, 0, 0]) is None and as_distortion("none") is None


def test_depth_registration_matches_the_colour_cameras_geometry():
    """A tilted plane seen by a depth camera 2.5 cm to the side: registered depth = the plane's depth in colour."""
    Kd = np.array([[580.0, 0, 314.0], [0, 578.0, 242.0], [0, 0, 1]])
    Kc = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    T = np.eye(4)
    a = np.radians(3.0)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = (-0.025, 0.002, 0.001)  # depth -> colour
    n, c = np.array([0.2, -0.1, 1.0]), 2.0  # plane n.X = c in colour coordinates
    n_d = T[:3, :3].T @ n  # the plane in depth coordinates: n_d.Y = c - n.t
    c_d = c - n @ T[:3, 3]
    vv, uu = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(uu - Kd[0, 2]) / Kd[0, 0], (vv - Kd[1, 2]) / Kd[1, 1], np.ones_like(uu)], -1)
    depth_d = (c_d / (rays @ n_d)).astype(np.float32)
    reg = DepthRegistration(Kd, None, T, Kc)(depth_d, W, H)
    rays_c = np.stack([(uu - Kc[0, 2]) / Kc[0, 0], (vv - Kc[1, 2]) / Kc[1, 1], np.ones_like(uu)], -1)
    truth = c / (rays_c @ n)
    ok = reg > 0
    assert ok.mean() > 0.8
    rel = np.abs(reg[ok] - truth[ok]) / truth[ok]
    assert np.median(rel) < 1e-3 and np.percentile(rel, 99) < 5e-3  # nearest-pixel splatting on a slanted plane
    with pytest.raises(SourceError, match="source.depth_camera.intrinsics"):
        depth_registration({"distortion": [0.1, 0, 0, 0]}, Kc)
    with pytest.raises(SourceError, match="source.depth_camera.T_color_depth: not a rigid transform"):
        depth_registration({"intrinsics": [580, 578, 314, 242], "T_color_depth": np.eye(4) * 2}, Kc)
