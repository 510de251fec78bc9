"""The end-of-run RGB-D bundle adjustment (plugins/bundle_adjustment) against synthetic ground truth.

The scenes are made here: landmarks in front of a camera that turns back and forth (a hand-held
rpy motion at about 60 deg/s, 30 frames a second), each landmark with its own ORB-like descriptor.
A rolling-shutter image is rendered by solving for the row each landmark is read on (the camera
turns while the rows are read), independently of the correction under test.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slam3r_plugins.bundle_adjustment.solver import (
    AdjustmentOptions,
    angular_velocities,
    bundle_adjust,
    rolling_shutter_correct,
)
from slam3r_plugins.features import FrameFeatures

pytest.importorskip("gtsam")

K = np.array([[520.0, 0.0, 320.0], [0.0, 520.0, 240.0], [0.0, 0.0, 1.0]])
W, H = 640, 480
FPS = 30.0
STAMPS = np.arange(100) / FPS  # frame i is taken at i / FPS seconds


def true_poses(n: int) -> np.ndarray:
    """``[n, 4, 4]`` camera-to-world: yaw swinging +-15 deg at ~1 Hz, a slow 1 cm-a-frame drift sideways."""
    out = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        t = i / FPS
        out[i, :3, :3] = Rotation.from_euler("yxz", [0.26 * np.sin(2 * np.pi * t), 0.05 * np.sin(np.pi * t), 0.0]
                                             ).as_matrix()
        out[i, :3, 3] = [0.01 * i, 0.002 * i, 0.0]
    return out


def landmarks(rng: np.random.Generator, m: int = 500) -> np.ndarray:
    """``[m, 3]`` world points 1.5-3 m in front of the start, spread over the view."""
    z = rng.uniform(1.5, 3.0, m)
    return np.stack([rng.uniform(-1.2, 1.2, m) * z / 1.5, rng.uniform(-0.8, 0.8, m) * z / 1.5, z], 1)


def render(X: np.ndarray, T: np.ndarray, readout: float = 0.0, omega: Optional[np.ndarray] = None):
    """Pixels ``[m, 2]`` and camera-frame points ``[m, 3]`` of world points ``X`` for a camera at ``T`` at its
    middle row's time, rows read top to bottom over ``readout`` s while it turns at ``omega`` (rad/s, camera
    frame): the row each point is read on is found by fixed-point iteration."""
    omega = np.zeros(3) if omega is None else omega
    tau = np.zeros(len(X))
    for _ in range(30):
        R = T[:3, :3] @ Rotation.from_rotvec(tau[:, None] * omega[None]).as_matrix()
        p = np.einsum("nji,nj->ni", R, X - T[:3, 3])
        uv = (p / p[:, 2:3]) @ K.T
        tau = (uv[:, 1] - H / 2) / H * readout
    return uv[:, :2], p


def make_frames(n: int, readout: float, rng: np.random.Generator, noise_px: float = 0.3):
    P = true_poses(n)
    X = landmarks(rng)
    desc = rng.integers(0, 256, (len(X), 32), dtype=np.uint8)
    omega = angular_velocities(P, np.arange(n) / FPS)
    frames = []
    for i in range(n):
        uv, p = render(X, P[i], readout, omega[i])
        ok = (p[:, 2] > 0.3) & (uv[:, 0] > 5) & (uv[:, 0] < W - 5) & (uv[:, 1] > 5) & (uv[:, 1] < H - 5)
        kp = uv[ok] + rng.normal(0, noise_px, (ok.sum(), 2))
        pts = p[ok] * (1 + rng.normal(0, 0.002, (ok.sum(), 1)))
        frames.append(FrameFeatures(kp.astype(np.float32), desc[ok].copy(), pts.astype(np.float32)))
    return P, frames


def perturb(P: np.ndarray, rng: np.random.Generator, metres: float = 0.01, degrees: float = 0.3) -> np.ndarray:
    out = P.copy()
    for i in range(1, len(P)):
        out[i, :3, :3] = Rotation.from_rotvec(rng.normal(0, np.deg2rad(degrees), 3)).as_matrix() @ P[i, :3, :3]
        out[i, :3, 3] += rng.normal(0, metres, 3)
    return out


def position_rmse(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.sqrt(((A[:, :3, 3] - B[:, :3, 3]) ** 2).sum(1).mean()))


def test_the_correction_gives_the_middle_rows_image():
    """A rolling-shutter rendering, corrected, is the global-shutter image at the middle row's time."""
    rng = np.random.default_rng(0)
    T = true_poses(1)[0]
    X = landmarks(rng, 50)
    omega = np.array([0.3, 1.2, -0.2])
    uv_rs, p_rs = render(X, T, 0.03, omega)
    uv_gs, p_gs = render(X, T)
    assert np.abs(uv_rs - uv_gs).max() > 3.0  # the readout moves points by pixels at this speed
    uv, p = rolling_shutter_correct(uv_rs, p_rs, K, omega, 0.03, H)
    np.testing.assert_allclose(uv, uv_gs, atol=1e-3)
    np.testing.assert_allclose(p, p_gs, atol=1e-5)
    same_uv, same_p = rolling_shutter_correct(uv_rs, p_rs, K, omega, 0.0, H)
    np.testing.assert_allclose(same_uv, uv_rs, atol=1e-4)


def test_angular_velocity_of_a_constant_turn():
    w = np.array([0.1, -0.8, 0.3])
    P = np.tile(np.eye(4), (5, 1, 1))
    for i in range(5):
        P[i, :3, :3] = Rotation.from_rotvec(w * i / FPS).as_matrix()
    np.testing.assert_allclose(angular_velocities(P, np.arange(5) / FPS), np.tile(w, (5, 1)), atol=1e-9)


def test_adjustment_recovers_perturbed_poses():
    rng = np.random.default_rng(1)
    P, frames = make_frames(20, 0.0, rng)
    start = perturb(P, rng)
    # the ties between consecutive frames carry the made-up tracker's noise (1 cm, 0.3 deg a frame, twice)
    res = bundle_adjust(frames, start, STAMPS[:20], K, H, AdjustmentOptions(max_reproj_px=40.0, odometry_sigma_m=0.014,
                                                                odometry_sigma_deg=0.42))
    assert res.applied, res.reason
    before, after = position_rmse(start, P), position_rmse(res.poses, P)
    assert before > 0.01 and after < 0.002, (before, after)
    angles = [np.degrees(np.linalg.norm(Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).as_rotvec()))
              for a, b in zip(res.poses, P)]
    assert max(angles) < 0.05
    assert res.stats["observations"] > 20 * 100 and res.stats["frames_observed"] == 20


def test_rolling_shutter_model_removes_the_bias_of_a_turning_camera():
    """Rendered with a 30 ms readout: adjusted as global-shutter images the poses keep a bias that
    follows the rotation; with the readout they come back to the truth."""
    rng = np.random.default_rng(2)
    P, frames = make_frames(24, 0.03, rng)
    start = perturb(P, rng, metres=0.003, degrees=0.1)
    # ties with the made-up tracker's pair noise (3 mm, 0.1 deg a frame, twice), Gaussian as it is
    opts = dict(max_reproj_px=40.0, odometry_sigma_m=0.0042, odometry_sigma_deg=0.14, odometry_huber_k=0.0)
    global_shutter = bundle_adjust(frames, start, STAMPS[:24], K, H, AdjustmentOptions(readout=0.0, **opts))
    rolling = bundle_adjust(frames, start, STAMPS[:24], K, H, AdjustmentOptions(readout=0.03, **opts))
    assert global_shutter.applied and rolling.applied
    err_gs, err_rs = position_rmse(global_shutter.poses, P), position_rmse(rolling.poses, P)
    assert err_rs < 0.002 and err_gs > 2 * err_rs, (err_gs, err_rs)
    assert rolling.stats["cost_after"] < global_shutter.stats["cost_after"]


def tracked_with_a_wrong_pair(P: np.ndarray, at: int, metres: float = 0.02, degrees: float = 1.0) -> np.ndarray:
    """``P`` as a tracker that got one pair wrong would give it: frame ``at`` and every later frame moved
    by ``metres`` sideways and ``degrees`` of yaw relative to frame ``at - 1``; every other pair exact."""
    J = np.eye(4)
    J[:3, :3] = Rotation.from_rotvec([0.0, np.deg2rad(degrees), 0.0]).as_matrix()
    J[:3, 3] = [metres, 0.0, 0.0]
    out = P.copy()
    out[at:] = P[at - 1] @ J @ np.linalg.inv(P[at - 1]) @ P[at:]
    return out


def max_pair_error(A: np.ndarray, B: np.ndarray) -> float:
    """The largest translation error (m) of the relative poses of consecutive frames, ``A`` against ``B``."""
    return max(float(np.linalg.norm((np.linalg.inv(np.linalg.inv(B[i]) @ B[i + 1]) @ np.linalg.inv(A[i]) @ A[i + 1])[:3, 3]))
               for i in range(len(A) - 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_pair_the_tracker_got_wrong_gives_way_to_the_features(seed):
    """The ties are robust (Huber): one tracked pair off by 2 cm and 1 deg, every other one exact. The
    adjusted motion puts that pair right (within 4 mm of the truth) instead of spreading its error over
    the frames around it as Gaussian ties of the same sigma do."""
    rng = np.random.default_rng(seed)
    P, frames = make_frames(20, 0.0, rng)
    start = tracked_with_a_wrong_pair(P, at=10)
    robust = bundle_adjust(frames, start, STAMPS[:20], K, H, AdjustmentOptions(max_reproj_px=40.0))
    gaussian = bundle_adjust(frames, start, STAMPS[:20], K, H, AdjustmentOptions(max_reproj_px=40.0,
                                                                                   odometry_huber_k=0.0))
    assert robust.applied and gaussian.applied
    assert max_pair_error(start, P) > 0.02
    assert max_pair_error(robust.poses, P) < 0.004 and position_rmse(robust.poses, P) < 0.0015
    assert max_pair_error(gaussian.poses, P) > 2 * max_pair_error(robust.poses, P)


def test_too_little_texture_keeps_the_tracked_poses():
    rng = np.random.default_rng(3)
    P, frames = make_frames(10, 0.0, rng)
    few = [FrameFeatures(f.keypoints[:20], f.descriptors[:20], f.points[:20]) for f in frames]
    start = perturb(P, rng)
    res = bundle_adjust(few, start, STAMPS[:10], K, H, AdjustmentOptions(max_reproj_px=40.0))
    assert not res.applied and "too little texture" in res.reason
    np.testing.assert_array_equal(res.poses, start)


def test_frames_and_poses_must_agree():
    rng = np.random.default_rng(4)
    P, frames = make_frames(5, 0.0, rng)
    with pytest.raises(ValueError, match="5 frames but 4 poses"):
        bundle_adjust(frames, P[:4], STAMPS[:5], K, H)


class _Context:
    def __init__(self, camera=None, **options):
        from slam3r_plugins.bundle_adjustment.plugin import BundleAdjustmentOptions

        self.source_info = {"camera": camera}
        self._opts = BundleAdjustmentOptions(**options)

    def options(self, section):
        return self._opts


def test_readout_comes_from_the_config_or_the_known_camera():
    from slam3r_plugins.bundle_adjustment.plugin import readout_for

    assert readout_for(_Context("tum:freiburg1")) == (0.025, "known for tum:freiburg1")
    assert readout_for(_Context("bonn:xtion"))[0] == 0.0
    assert readout_for(_Context(None))[0] == 0.0
    assert readout_for(_Context("tum:freiburg1", readout=0.0)) == (0.0, "bundle_adjustment.readout")


def test_the_tum_reader_names_its_camera(tmp_path):
    from slam3r_datasets.tum import TumSource

    src = TumSource("sample:tum_fr1_rpy", max_frames=2)
    assert src.info()["camera"] == "tum:freiburg1"


def test_kept_frames_are_thinned_evenly_past_the_budget(monkeypatch):
    """The plugin keeps at most ``max_frames`` frames, spread evenly over the run (fusion's FrameBuffer), and
    makes no features for a frame it will not keep."""
    from types import SimpleNamespace

    from slam3r_app.trajectory_store import TrajectoryStore
    from slam3r_plugins import features
    from slam3r_plugins.bundle_adjustment import plugin

    extracted = []
    real_extract = features.extract

    def counting_extract(rgb, depth, K, **kw):
        extracted.append(len(extracted))
        return real_extract(rgb, depth, K, **kw)

    monkeypatch.setattr(features, "extract", counting_extract)

    context = _Context("tum:freiburg1", max_frames=10)
    context.state, context.frontend, context.trajectory = {}, SimpleNamespace(name="rgbd"), TrajectoryStore()
    P = true_poses(100)
    for i in range(100):
        frame = SimpleNamespace(index=i, timestamp=i / FPS, rgb=np.zeros((48, 64, 3), np.uint8),
                                depth=np.ones((48, 64), np.float32))
        context.trajectory.add(i, i / FPS, P[i], is_keyframe=i % 10 == 0)
        plugin.slam3r_process_frame(frame, SimpleNamespace(lost=False, intrinsics=K, pose=P[i]), context)
    st = context.state["_bundle_adjustment_state"]
    kept = [f.index for f in st.frames.frames()]
    st.matcher.close()
    assert len(kept) <= 10 and kept[0] == 0 and kept[-1] >= 80
    assert len(set(np.diff(kept))) == 1  # evenly spaced: every stride-th frame
    # 11 frames at stride 1, then 5 at each of 2, 4, 8, and one at 16: 27 frames ever kept, 27 extractions
    assert len(extracted) == 27


def test_frames_left_out_move_with_the_nearest_adjusted_frame():
    from slam3r_app.trajectory_store import TrajectoryStore
    from slam3r_plugins.bundle_adjustment.plugin import corrected_poses

    traj = TrajectoryStore()
    P = true_poses(7)
    for i in range(7):
        traj.add(i, i / FPS, P[i], is_keyframe=i in (0, 4), status="lost" if i == 6 else "tracked")
    kept = [0, 2, 4]
    shift = [np.eye(4) for _ in kept]
    for k, D in enumerate(shift):
        D[0, 3] = 0.01 * (k + 1)  # 1, 2, 3 cm along x
    new = np.stack([D @ P[i] for D, i in zip(shift, kept)])
    out = corrected_poses(traj, kept, P[kept], new)
    assert sorted(out) == [0, 1, 2, 3, 4, 5]  # the lost frame keeps its placeholder
    for i, expect_cm in {0: 1, 1: 1, 2: 2, 3: 2, 4: 3, 5: 3}.items():  # ties go to the earlier frame
        np.testing.assert_allclose(out[i][:3, 3] - P[i][:3, 3], [0.01 * expect_cm, 0, 0], atol=1e-12)
        np.testing.assert_allclose(out[i][:3, :3], P[i][:3, :3], atol=1e-12)


def test_the_observation_cap_takes_the_longest_tracks_while_each_frame_has_room():
    from slam3r_plugins.bundle_adjustment.solver import cap_observations

    def track(*frames):
        return np.array([(f, 0) for f in frames], np.int64)

    long_, mid, short, other = track(0, 1, 2, 3), track(1, 2, 3), track(0, 1), track(4, 5)
    kept = cap_observations([short, mid, other, long_], 6, cap=1)
    assert [len(t) for t in kept] == [4, 2]  # the 4-frame track, then the only one with room left
    assert kept[1] is other
    assert len(cap_observations([short, mid, other, long_], 6, cap=2)) == 3  # mid joins; short finds frame 1 full


def test_a_readout_out_of_range_is_refused_by_name():
    from pydantic import ValidationError

    from slam3r_plugins.bundle_adjustment.plugin import BundleAdjustmentOptions

    with pytest.raises(ValidationError, match="readout"):
        BundleAdjustmentOptions(readout=5.0)
    assert BundleAdjustmentOptions(readout=-0.02).readout == -0.02  # rows read bottom to top
