"""RGB-D bundle adjustment of a tracked trajectory, rolling shutter included (GTSAM).

Conventions: poses are ``[N, 4, 4]`` float64 camera-to-world matrices (OpenCV camera axes: x right,
y down, z forward), metres; ``K`` is ``[3, 3]`` in pixels of the images the keypoints came from.

The problem. A frame's ORB keypoints (``[M, 2]`` pixels) with the sensor depth at each of them
(``[M, 3]`` camera-frame points, NaN without depth) are matched to the keypoints of the frames
tracked just before it (and of a few earlier frames whose current poses look at the same place);
matches are kept when the current poses reproject them within ``max_reproj_px``. A match joins two
keypoints' tracks unless the track would then hold two keypoints of one frame; a track is one
landmark. Every observation with depth is a stereo measurement
``(u_left, u_right = u_left - bf / z, v)`` (the RGB-D "virtual stereo" of ORB-SLAM2, ``bf`` in
pixel-metres), one without depth a plain projection; each is robust (Huber) with ``sigma_px``.
Between-factors keep consecutive frames near their tracked relative pose (``odometry_sigma_deg`` /
``odometry_sigma_m``, robust: Huber at ``odometry_huber_k`` sigmas) so that a frame with few features
follows its neighbours and the adjusted motion keeps the dense tracker's frame-to-frame detail, while a
pair the tracker got wrong gives way to the features; the first frame is held fixed (the gauge).
Levenberg-Marquardt refines every pose and landmark.

Rolling shutter. A CMOS colour camera (the Kinect v1 of TUM RGB-D) exposes its rows one after the
other over ``readout`` seconds. A keypoint on row ``v`` was seen ``tau = (v - H / 2) / H * readout``
after the middle row; with the camera turning at ``omega`` (rad/s, camera frame) its bearing at the
middle row's time is ``exp(tau * omega) @ K^-1 [u, v, 1]`` (the translation over ``tau`` is
neglected: millimetres). :func:`rolling_shutter_correct` moves keypoints and their depth points to
that time before the adjustment, with ``omega`` from the tracked trajectory itself
(:func:`angular_velocities`), so every frame becomes a global-shutter image taken at its timestamp.
Measured on TUM freiburg1 (benchmarks/NOTES.md, "Rolling shutter"): without it
a global-shutter model explains a fast yaw partly as translation along the optical axis.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
from scipy.spatial.transform import Rotation

from slam3r_plugins import features as orb
from slam3r_plugins.features import FrameFeatures

log = logging.getLogger("slam3r.bundle_adjustment")


@dataclass
class AdjustmentOptions:
    """The solver's knobs (the plugin's ``bundle_adjustment:`` section fills them)."""

    window: int = 4                 # match each frame to this many frames tracked before it
    covisible: int = 2              # ... and to this many earlier frames whose current poses see the same place
    covisible_max_distance: float = 0.3   # metres between camera centres for a covisible frame
    covisible_max_angle_deg: float = 30.0  # degrees between viewing directions for a covisible frame
    max_reproj_px: float = 8.0      # a match is kept when the current poses reproject it within this
    bf: float = 40.0                # virtual stereo baseline x focal length (pixel-metres; ORB-SLAM2's TUM value)
    sigma_px: float = 1.0           # measurement noise of a keypoint
    huber_k: float = 1.345          # Huber threshold, in sigmas
    odometry_sigma_deg: float = 0.1  # tie of consecutive frames to their tracked relative pose ...
    odometry_sigma_m: float = 0.001
    odometry_huber_k: float = 3.0    # ... robust: Huber with this threshold, in sigmas (0: Gaussian)
    min_observations: int = 100     # a frame with fewer observations is adjusted through its neighbours only
    max_observations: int = 0       # landmarks a frame takes part in, at most (longest tracks first; 0: all)
    min_observed_fraction: float = 0.5  # fewer frames than this with enough observations: no adjustment
    readout: float = 0.0            # rolling-shutter readout time, seconds (0: global shutter)
    max_iterations: int = 100
    relative_error_tol: float = 1e-4  # stop when an iteration lowers the cost by less than this fraction


@dataclass
class AdjustmentResult:
    """What :func:`bundle_adjust` found.

    Attributes:
        poses: ``[N, 4, 4]`` refined camera-to-world poses (the input poses where ``applied`` is False).
        applied: False when the adjustment was skipped or rejected (``reason`` says why).
        reason: why it was skipped or rejected ("" when applied).
        stats: counts and costs (frames, tracks, observations, rms reprojection before / after ...).
    """

    poses: np.ndarray
    applied: bool
    reason: str = ""
    stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- rolling shutter
def angular_velocities(poses: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Angular velocity of each frame, ``[N, 3]`` rad/s in its own camera frame (central differences).

    ``omega_i = log(R_{i-1}^T R_{i+1}) / (t_{i+1} - t_{i-1})`` (one-sided at the ends; zero for a
    single frame or equal timestamps).
    """
    P = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    t = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    n = len(P)
    out = np.zeros((n, 3))
    for i in range(n):
        a, b = max(0, i - 1), min(n - 1, i + 1)
        dt = t[b] - t[a]
        if b == a or dt <= 0:
            continue
        out[i] = Rotation.from_matrix(P[a][:3, :3].T @ P[b][:3, :3]).as_rotvec() / dt
    return out


def rolling_shutter_correct(keypoints: np.ndarray, points: np.ndarray, K: np.ndarray, omega: np.ndarray,
                            readout: float, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints and depth points of a rolling-shutter frame, moved to its middle row's time.

    Args:
        keypoints: ``[M, 2]`` pixels (u, v).
        points: ``[M, 3]`` camera-frame points (NaN rows stay NaN).
        K: ``[3, 3]`` intrinsics.
        omega: ``[3]`` angular velocity, rad/s, camera frame.
        readout: seconds from the first row to the last (rows read top to bottom; 0: no change).
        height: image rows ``H``.

    Returns:
        ``([M, 2] float32, [M, 3] float32)``: row ``v`` was read ``tau = (v - H/2)/H * readout``
        after the middle row; its bearing and point are rotated by ``exp(tau * omega)``.
    """
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if readout == 0.0 or len(kp) == 0 or not np.any(omega):
        return kp.astype(np.float32), pts.astype(np.float32)
    K = np.asarray(K, dtype=np.float64)
    tau = (kp[:, 1] - height / 2.0) / height * float(readout)
    R = Rotation.from_rotvec(tau[:, None] * np.asarray(omega, dtype=np.float64)[None]).as_matrix()
    bearing = np.c_[kp, np.ones(len(kp))] @ np.linalg.inv(K).T
    moved = np.einsum("nij,nj->ni", R, bearing)
    uv = (moved / moved[:, 2:3]) @ K.T
    return uv[:, :2].astype(np.float32), np.einsum("nij,nj->ni", R, pts).astype(np.float32)


# ----------------------------------------------------------------------------- data association
def covisible_frames(pose: np.ndarray, earlier: np.ndarray, opts: AdjustmentOptions) -> np.ndarray:
    """Positions in ``earlier`` (``[M, 4, 4]`` poses) of at most ``opts.covisible`` frames that see the
    place ``pose`` (``[4, 4]``) sees: camera centres within ``covisible_max_distance``, viewing
    directions within ``covisible_max_angle_deg``; the nearest first."""
    if opts.covisible <= 0 or len(earlier) == 0:
        return np.zeros(0, np.int64)
    cos_max = np.cos(np.deg2rad(opts.covisible_max_angle_deg))
    d = np.linalg.norm(earlier[:, :3, 3] - pose[:3, 3], axis=1)
    ok = np.flatnonzero((d < opts.covisible_max_distance) & (earlier[:, :3, 2] @ pose[:3, 2] > cos_max))
    return ok[np.argsort(d[ok])][:opts.covisible]


def _pairs(poses: np.ndarray, opts: AdjustmentOptions) -> list[tuple[int, int]]:
    """Frame pairs ``(i, j)``, ``j < i``, to match: the temporal window plus covisible earlier frames."""
    out = []
    for i in range(len(poses)):
        lo = max(0, i - opts.window)
        out.extend((i, j) for j in range(lo, i))
        out.extend((i, int(j)) for j in covisible_frames(poses[i], poses[:lo], opts))
    return out


def _project(K: np.ndarray, pc: np.ndarray) -> np.ndarray:
    return np.stack([K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2], K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]], 1)


def gated_matches(a: FrameFeatures, b: FrameFeatures, T_ab: np.ndarray, K: np.ndarray, max_px: float,
                  descriptor_matches: Optional[np.ndarray] = None) -> np.ndarray:
    """Descriptor matches ``[M, 2]`` (keypoint of ``a``, keypoint of ``b``) that the poses agree with.

    ORB matching over the whole frames (mutual nearest neighbours with Lowe's ratio test,
    :func:`slam3r_plugins.features.match`: a descriptor must be distinctive in the whole image), then
    ``b``'s depth point, carried into ``a`` by ``T_ab`` (``[4, 4]``, ``b``'s camera frame to ``a``'s)
    and projected with ``K``, must land within ``max_px`` pixels of its match. (Matching only near the
    predicted position, with the ratio test among the nearby keypoints, was tried: 3x faster, but it
    accepts the near-duplicate corners ORB finds at several scales, and the adjustment was worse:
    benchmarks/NOTES.md, "Rolling shutter".) ``descriptor_matches``: the result of
    ``features.match(a.descriptors, b.descriptors)`` where it was computed already (in the background
    during the run); it depends on the descriptors alone.
    """
    if len(a.keypoints) < 2 or len(b.keypoints) < 2:
        return np.zeros((0, 2), np.int64)
    m = orb.match(a.descriptors, b.descriptors) if descriptor_matches is None else descriptor_matches
    if len(m) == 0:
        return m
    p = b.points[m[:, 1]].astype(np.float64) @ T_ab[:3, :3].T + T_ab[:3, 3]
    ok = np.isfinite(p).all(1) & (p[:, 2] > 0.1)
    err = np.full(len(m), np.inf)
    err[ok] = np.linalg.norm(_project(K, p[ok]) - a.keypoints[m[ok, 0]], axis=1)
    return m[err < max_px]


def build_tracks(frames: list[FrameFeatures], poses: np.ndarray, K: np.ndarray, opts: AdjustmentOptions,
                 descriptor_matches: Optional[Mapping[tuple[int, int], np.ndarray]] = None,
                 pairs: Optional[list[tuple[int, int]]] = None) -> list[np.ndarray]:
    """Tracks of matched keypoints: a list of ``[L, 2]`` int arrays of ``(frame position, keypoint)``.

    Each pair of frames is matched by :func:`gated_matches` (descriptors, then the current poses
    must carry one keypoint's depth point to within ``max_reproj_px`` of the other). A match joins the two keypoints'
    tracks unless that would put two keypoints of one frame in a track (ORB finds the same corner
    at several scales): then the match is left out, not the track. ``descriptor_matches``: descriptor
    matches computed already, by frame positions ``(i, j)``; the pairs it lacks are matched here.
    ``pairs``: the frame pairs to match (default: :func:`_pairs` of ``poses``).
    """
    offsets = np.cumsum([0] + [len(f.keypoints) for f in frames]).tolist()
    track_of = [-1] * offsets[-1]  # keypoint (offset of its frame + its index) -> track
    members: list[dict[int, int]] = []  # track -> {frame position: keypoint}
    known = descriptor_matches or {}
    for i, j in _pairs(poses, opts) if pairs is None else pairs:
        good = gated_matches(frames[i], frames[j], np.linalg.inv(poses[i]) @ poses[j], K, opts.max_reproj_px,
                             known.get((i, j)))
        oi, oj = offsets[i], offsets[j]
        for a, b in good.tolist():
            ta, tb = track_of[oi + a], track_of[oj + b]
            if ta < 0 and tb < 0:
                track_of[oi + a] = track_of[oj + b] = len(members)
                members.append({i: a, j: b})
            elif ta < 0:
                if i not in members[tb]:
                    members[tb][i] = a
                    track_of[oi + a] = tb
            elif tb < 0:
                if j not in members[ta]:
                    members[ta][j] = b
                    track_of[oj + b] = ta
            elif ta != tb and members[ta].keys().isdisjoint(members[tb].keys()):
                small, big = sorted((ta, tb), key=lambda t: len(members[t]))
                for f, k in members[small].items():
                    members[big][f] = k
                    track_of[offsets[f] + k] = big
                members[small] = {}
    return [np.array(sorted(m.items()), np.int64) for m in members if len(m) >= 2]


def cap_observations(tracks: list[np.ndarray], n_frames: int, cap: int) -> list[np.ndarray]:
    """The tracks to adjust when each frame may take part in at most ``cap`` of them: the longest
    tracks first (they tie the most frames together); a track is taken while every one of its frames
    still has room. Bounds the solver's cost (about linear in the observations) on richly textured
    scenes."""
    room = np.full(n_frames, cap, np.int64)
    out = []
    for t in sorted(tracks, key=len, reverse=True):
        if np.all(room[t[:, 0]] > 0):
            room[t[:, 0]] -= 1
            out.append(t)
    return out


# ----------------------------------------------------------------------------- the adjustment
def bundle_adjust(frames: list[FrameFeatures], poses: np.ndarray, timestamps: np.ndarray, K: np.ndarray,
                  height: int, opts: Optional[AdjustmentOptions] = None,
                  descriptor_matches: Optional[Mapping[tuple[int, int], np.ndarray]] = None) -> AdjustmentResult:
    """Refine ``poses`` (``[N, 4, 4]``, one per entry of ``frames``) by RGB-D bundle adjustment.

    Args:
        frames: the frames' ORB features (:class:`slam3r_plugins.features.FrameFeatures`), in stream
            order (raw keypoints: the rolling-shutter correction is applied here, with ``opts.readout``).
        poses: ``[N, 4, 4]`` their current camera-to-world poses (metres).
        timestamps: ``[N]`` seconds (for the angular velocities of the rolling-shutter correction).
        K: ``[3, 3]`` intrinsics shared by the frames.
        height: image rows (for the rolling-shutter row times).
        opts: :class:`AdjustmentOptions`.
        descriptor_matches: ``features.match`` of frame pairs ``(i, j)`` (positions in ``frames``)
            computed already; every other pair is matched here (:func:`build_tracks`).

    Returns:
        :class:`AdjustmentResult`; skipped (``applied=False``) when fewer than
        ``min_observed_fraction`` of the frames have ``min_observations`` observations (too little
        texture: the tracked poses are kept), or when the solver does not lower the cost.
    """
    import gtsam
    from gtsam.symbol_shorthand import L, X

    opts = opts or AdjustmentOptions()
    P = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    K = np.asarray(K, dtype=np.float64)
    n = len(frames)
    if n != len(P):
        raise ValueError(f"{n} frames but {len(P)} poses")
    stats: dict = {"frames": n, "readout_s": float(opts.readout)}
    if n < 3:
        return AdjustmentResult(P.copy(), False, f"{n} frame(s): nothing to adjust", stats)
    if opts.readout:
        omega = angular_velocities(P, timestamps)
        corrected = []
        for k, f in enumerate(frames):
            kp, pts = rolling_shutter_correct(f.keypoints, f.points, K, omega[k], opts.readout, height)
            corrected.append(FrameFeatures(kp, f.descriptors, pts))
        frames = corrected
    t0 = time.perf_counter()
    pairs = _pairs(P, opts)
    tracks = build_tracks(frames, P, K, opts, descriptor_matches, pairs)
    stats["seconds_matching"] = round(time.perf_counter() - t0, 3)
    stats["pairs"] = len(pairs)
    if opts.max_observations > 0:
        tracks = cap_observations(tracks, n, opts.max_observations)
    per_frame = np.zeros(n, np.int64)
    for t in tracks:
        per_frame[t[:, 0]] += 1
    observed = per_frame >= opts.min_observations
    stats.update(tracks=len(tracks), observations_median=int(np.median(per_frame)),
                 frames_observed=int(observed.sum()))
    if observed.mean() < opts.min_observed_fraction:
        return AdjustmentResult(P.copy(), False, (
            f"too little texture: {int(observed.sum())} of {n} frames have {opts.min_observations} or more matched "
            f"features (median {int(np.median(per_frame))})"), stats)

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    cal_stereo = gtsam.Cal3_S2Stereo(fx, fy, 0.0, cx, cy, opts.bf / fx)
    cal_mono = gtsam.Cal3_S2(fx, fy, 0.0, cx, cy)
    huber = gtsam.noiseModel.mEstimator.Huber.Create(opts.huber_k)
    noise_stereo = gtsam.noiseModel.Robust.Create(huber, gtsam.noiseModel.Isotropic.Sigma(3, opts.sigma_px))
    noise_mono = gtsam.noiseModel.Robust.Create(huber, gtsam.noiseModel.Isotropic.Sigma(2, opts.sigma_px))
    noise_odo = gtsam.noiseModel.Diagonal.Sigmas(np.array([np.deg2rad(opts.odometry_sigma_deg)] * 3
                                                          + [opts.odometry_sigma_m] * 3))
    if opts.odometry_huber_k > 0:
        noise_odo = gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Huber.Create(opts.odometry_huber_k),
                                                   noise_odo)
    graph = gtsam.NonlinearFactorGraph()
    values = gtsam.Values()
    for k in range(n):
        values.insert(X(k), gtsam.Pose3(P[k]))
    graph.add(gtsam.PriorFactorPose3(X(0), gtsam.Pose3(P[0]), gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)))
    for k in range(1, n):
        graph.add(gtsam.BetweenFactorPose3(X(k - 1), X(k), gtsam.Pose3(np.linalg.inv(P[k - 1]) @ P[k]), noise_odo))
    n_obs = n_landmarks = 0
    for t in tracks:
        t = t[observed[t[:, 0]]]
        if len(t) < 2:
            continue
        world = [P[k][:3, :3] @ frames[k].points[j] + P[k][:3, 3] for k, j in t if np.isfinite(frames[k].points[j]).all()]
        if not world:
            continue
        values.insert(L(n_landmarks), gtsam.Point3(*np.median(world, axis=0)))
        for k, j in t:
            u, v = (float(x) for x in frames[k].keypoints[j])
            z = float(frames[k].points[j][2])
            if np.isfinite(z) and z > 0.1:
                graph.add(gtsam.GenericStereoFactor3D(gtsam.StereoPoint2(u, u - opts.bf / z, v), noise_stereo,
                                                      X(k), L(n_landmarks), cal_stereo))
            else:
                graph.add(gtsam.GenericProjectionFactorCal3_S2(gtsam.Point2(u, v), noise_mono, X(k), L(n_landmarks),
                                                               cal_mono))
            n_obs += 1
        n_landmarks += 1
    stats.update(landmarks=n_landmarks, observations=n_obs)
    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(int(opts.max_iterations))
    params.setRelativeErrorTol(float(opts.relative_error_tol))
    before = graph.error(values)
    stats["seconds_graph"] = round(time.perf_counter() - t0 - stats["seconds_matching"], 3)
    optimizer = gtsam.LevenbergMarquardtOptimizer(graph, values, params)
    result = optimizer.optimize()
    after = graph.error(result)
    stats.update(cost_before=float(before), cost_after=float(after), iterations=int(optimizer.iterations()),
                 seconds_solve=round(time.perf_counter() - t0 - stats["seconds_matching"] - stats["seconds_graph"], 3))
    if not np.isfinite(after) or after >= before:
        return AdjustmentResult(P.copy(), False, f"the solver did not lower the cost ({before:.1f} -> {after:.1f})",
                                stats)
    out = np.stack([result.atPose3(X(k)).matrix() for k in range(n)])
    shift = np.linalg.norm(out[:, :3, 3] - P[:, :3, 3], axis=1)
    stats.update(max_shift_m=float(shift.max()), mean_shift_m=float(shift.mean()))
    return AdjustmentResult(out, True, "", stats)
