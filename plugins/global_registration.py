"""Global registration of two depth views: FPFH features + RANSAC, refined by ICP, gated on overlap.

The geometric path of recovery and loop verification, for when appearance fails (low
texture, motion blur, wide baselines: ORB finds no consistent matches but the depth still
shows the same surfaces). Everything that decides is Open3D's:

1. each view's depth is back-projected, voxel-downsampled (:func:`prepare`), given normals and
   FPFH descriptors (Rusu et al., "Fast Point Feature Histograms for 3D registration", ICRA 2009);
2. ``registration_ransac_based_on_feature_matching`` (mutual FPFH matches, 3-point samples,
   edge-length and distance checkers) finds a coarse rigid transform without any initial guess;
   when the caller has a pose prior (a motion prediction, the trajectory's estimate of where the
   view should be) ICP is started from the prior as well and the better of the two is kept;
3. point-to-plane ICP from coarse to fine correspondence distances refines it;
4. the gates: *overlap* (the fraction of the source's points with a target point within
   ``overlap_distance`` once aligned) at least ``min_overlap``, the inlier RMSE at most
   ``max_rmse``, and the geometry must *constrain* the solution (the smallest eigenvalue of the
   point-to-plane normal equations per correspondence, rotations measured at the median depth,
   at least ``min_constraint``): a single plane, or a corridor of parallel planes, lets ICP
   slide and is rejected rather than trusted.

What this cannot tell apart are two places of the same shape (two identical rooms): callers
keep their own plausibility checks (the rgbd frontend's motion guard, the loop closer's drift
gate).

Conventions: camera frames OpenCV (x right, y down, z forward); depth in metres (or the
map's units: every distance below is a fraction of the target's median depth, so the same
options serve a monocular prediction); a result's ``transform`` is ``T_ts``, the ``[4, 4]``
float64 rigid transform taking the *source* camera's points into the *target* camera's frame.

Determinism: RANSAC draws from Open3D's global generator, seeded before every call
(``o3d.utility.random.seed``); with Open3D limited to one thread (the rgbd frontend's
``deterministic`` mode) the same inputs give the same result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from slam3r_app.sim3 import strip_scale


@dataclass(frozen=True)
class GlobalRegistrationOptions:
    """Parameters of :func:`register` (distances are fractions of the target's median depth)."""

    voxel: float = 0.02  # downsampling voxel edge; grown until a view has at most max_points
    max_points: int = 1500
    normal_radius: float = 2.5  # voxels
    feature_radius: float = 5.0  # voxels (FPFH support)
    ransac_distance: float = 1.5  # voxels: inlier distance of RANSAC
    ransac_iterations: int = 10000
    ransac_confidence: float = 0.999
    edge_length_ratio: float = 0.9  # RANSAC checker: similar edge lengths in both views
    icp_distances: tuple[float, ...] = (3.0, 1.5, 0.75)  # voxels, coarse to fine
    icp_iterations: int = 30
    overlap_distance: float = 1.0  # voxels: a source point with a target point this close overlaps
    min_overlap: float = 0.3
    max_rmse: float = 0.5  # voxels: inlier RMSE of the final alignment
    min_constraint: float = 0.001  # smallest eigenvalue of the per-point point-to-plane normal equations
    seed: int = 0


@dataclass
class DepthCloud:
    """One view's depth, ready for registration (camera frame).

    Attributes:
        cloud: Open3D ``PointCloud`` (voxel-downsampled, with normals).
        fpfh: Open3D ``Feature`` (``[33, N]`` FPFH), or None when too few points.
        voxel: the voxel edge used (map units).
        median_depth: median z of the input points (map units).
    """

    cloud: Any
    fpfh: Any
    voxel: float
    median_depth: float

    def __len__(self) -> int:
        return len(self.cloud.points)

    @property
    def nbytes(self) -> int:
        n = len(self)
        return int(n * (3 + 3 + 33) * 8)


@dataclass
class GlobalRegistration:
    """Outcome of :func:`register`.

    Attributes:
        accepted: every gate passed.
        transform: ``[4, 4]`` ``T_ts`` (source camera -> target camera) of the best alignment found,
            also when rejected (None when nothing was found).
        reason: why it was rejected ("" when accepted), in words; ``code``: the same as a name
            (:data:`REJECTIONS`).
        stats: ``start`` (ransac / prior), ``ransac_correspondences``, ``ransac_fitness``, ``overlap``,
            ``rmse`` and ``constraint`` (fractions as in the options), point counts, ``seconds``.
    """

    accepted: bool
    transform: Optional[np.ndarray] = None
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    code: str = ""


#: what each rejection code of :func:`register` means
REJECTIONS = {
    "few_points": "a view has too few depth points after downsampling (or no valid depth)",
    "no_alignment": "RANSAC found no consistent FPFH correspondences and there was no prior to start from",
    "low_overlap": "after ICP, less of the query's depth overlaps the candidate's than min_overlap",
    "high_rmse": "after ICP, the inlier RMSE is above max_rmse voxels",
    "degenerate": "the overlapping geometry does not pin down every motion (a plane, parallel planes)",
}


def depth_points(depth: np.ndarray, K: np.ndarray, stride: int = 1, depth_min: float = 0.0,
                 depth_max: float = np.inf) -> np.ndarray:
    """Camera-frame points ``[N, 3]`` float64 of the pixels with depth in ``(depth_min, depth_max)``.

    ``depth`` ``[H, W]`` (0 / NaN = invalid), ``K`` ``[3, 3]`` its intrinsics, every ``stride``-th pixel.
    """
    d = np.asarray(depth, dtype=np.float64)[::stride, ::stride]
    ok = np.isfinite(d) & (d > max(depth_min, 0.0)) & (d < depth_max)
    v, u = np.nonzero(ok)
    z = d[v, u]
    K = np.asarray(K, dtype=np.float64)
    u = u * stride
    v = v * stride
    return np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=1)


def prepare(points: np.ndarray, opts: GlobalRegistrationOptions = GlobalRegistrationOptions(),
            unit: Optional[float] = None) -> DepthCloud:
    """Downsample ``points`` (``[N, 3]`` camera frame), estimate normals (facing the camera), compute FPFH.

    Args:
        unit: the length every relative option is a fraction of; default the points' median depth.
    """
    import open3d as o3d

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    md = float(np.median(pts[:, 2])) if len(pts) else 0.0
    u = float(unit) if unit else md
    voxel = max(opts.voxel * u, 1e-6)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    down = pc.voxel_down_sample(voxel)
    for _ in range(6):  # bound the cost: grow the voxel until the view has at most max_points
        if len(down.points) <= opts.max_points:
            break
        voxel *= float(np.sqrt(len(down.points) / opts.max_points)) * 1.05
        down = pc.voxel_down_sample(voxel)
    fpfh = None
    if len(down.points) >= 10:
        down.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=opts.normal_radius * voxel, max_nn=30))
        down.orient_normals_towards_camera_location(np.zeros(3))
        fpfh = o3d.pipelines.registration.compute_fpfh_feature(
            down, o3d.geometry.KDTreeSearchParamHybrid(radius=opts.feature_radius * voxel, max_nn=100))
    return DepthCloud(down, fpfh, voxel, md)


def _refine(reg, source, target, T: np.ndarray, distances: list[float], iterations: int) -> np.ndarray:
    for dist in distances:
        r = reg.registration_icp(source, target, dist, T, reg.TransformationEstimationPointToPlane(),
                                 reg.ICPConvergenceCriteria(max_iteration=iterations))
        T2 = np.asarray(r.transformation, dtype=np.float64)
        if not np.all(np.isfinite(T2)):
            break
        T = T2
    return strip_scale(T)


def constraint(points: np.ndarray, normals: np.ndarray, unit: float) -> float:
    """How well point-to-plane correspondences pin down a rigid motion: the smallest eigenvalue of
    ``H = mean_i J_i^T J_i`` with ``J_i = [(p_i x n_i) / unit, n_i]`` (rotations in radians at
    distance ``unit``, translations in units). 1/3 for points spread over three orthogonal planes
    around the camera's view, 0 when some motion slides along the surfaces (one plane, parallel planes,
    a cylinder along its axis). ``points``, ``normals``: ``[N, 3]`` in one frame; ``unit`` > 0.
    """
    p = np.asarray(points, dtype=np.float64)
    n = np.asarray(normals, dtype=np.float64)
    if len(p) < 6:
        return 0.0
    c = p - p.mean(axis=0)  # rotate about the points' centroid: the constraint does not depend on the frame
    J = np.concatenate([np.cross(c, n) / unit, n], axis=1)
    H = J.T @ J / len(p)
    return float(max(np.linalg.eigvalsh(H)[0], 0.0))


def register(source: DepthCloud, target: DepthCloud,
             opts: GlobalRegistrationOptions = GlobalRegistrationOptions(),
             prior: Optional[np.ndarray] = None, use_ransac: bool = True) -> GlobalRegistration:
    """Align ``source`` to ``target`` without (or with) a guess; see the module docstring.

    Args:
        source, target: prepared views (:func:`prepare`).
        prior: ``[4, 4]`` guess of ``T_ts``; ICP is also started from it, and the better start
            (by overlap after refinement) is kept.
        use_ransac: False: only refine from ``prior`` (a cheap check of a known guess).
    """
    import open3d as o3d

    reg = o3d.pipelines.registration
    t0 = time.perf_counter()
    unit = target.median_depth
    voxel = max(source.voxel, target.voxel)
    stats: dict[str, Any] = {"source_points": len(source), "target_points": len(target)}

    def done(ok: bool, T: Optional[np.ndarray], reason: str = "", code: str = "") -> GlobalRegistration:
        stats["seconds"] = round(time.perf_counter() - t0, 4)
        return GlobalRegistration(ok, T, reason, stats, code)

    if len(source) < 30 or len(target) < 30 or not unit > 0:
        return done(False, None, f"too few points ({len(source)} / {len(target)} after downsampling)", "few_points")
    if not target.cloud.has_normals():
        return done(False, None, "the target has no normals (too few points)", "few_points")
    starts: list[tuple[str, np.ndarray]] = []
    if use_ransac and source.fpfh is not None and target.fpfh is not None:
        o3d.utility.random.seed(int(opts.seed))
        dist = opts.ransac_distance * voxel
        r = reg.registration_ransac_based_on_feature_matching(
            source.cloud, target.cloud, source.fpfh, target.fpfh, True, dist,
            reg.TransformationEstimationPointToPoint(False), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(opts.edge_length_ratio),
             reg.CorrespondenceCheckerBasedOnDistance(dist)],
            reg.RANSACConvergenceCriteria(int(opts.ransac_iterations), float(opts.ransac_confidence)))
        stats.update(ransac_correspondences=len(r.correspondence_set), ransac_fitness=round(float(r.fitness), 4))
        if len(r.correspondence_set) >= 3:
            starts.append(("ransac", np.asarray(r.transformation, dtype=np.float64)))
    if prior is not None:
        starts.append(("prior", np.asarray(prior, dtype=np.float64)))
    if not starts:
        return done(False, None, "RANSAC found no consistent FPFH correspondences", "no_alignment")
    distances = [d * voxel for d in opts.icp_distances]
    best: Optional[tuple[float, str, np.ndarray, Any]] = None
    for name, T0 in starts:
        T = _refine(reg, source.cloud, target.cloud, T0, distances, opts.icp_iterations)
        ev = reg.evaluate_registration(source.cloud, target.cloud, opts.overlap_distance * voxel, T)
        if best is None or ev.fitness > best[0]:
            best = (float(ev.fitness), name, T, ev)
    assert best is not None
    overlap, name, T, ev = best
    corr = np.asarray(ev.correspondence_set)
    stats.update(start=name, overlap=round(overlap, 4), rmse=round(float(ev.inlier_rmse) / unit, 5),
                 voxel=round(voxel / unit, 5))
    cons = 0.0
    if len(corr):
        src = np.asarray(source.cloud.points)[corr[:, 0]] @ T[:3, :3].T + T[:3, 3]
        nrm = np.asarray(target.cloud.normals)[corr[:, 1]]
        cons = constraint(src, nrm, unit)
    stats["constraint"] = round(cons, 5)
    if overlap < opts.min_overlap:
        return done(False, T, f"overlap {overlap:.2f} < {opts.min_overlap}", "low_overlap")
    if ev.inlier_rmse > opts.max_rmse * voxel:
        return done(False, T, f"RMSE {ev.inlier_rmse / voxel:.2f} voxels > {opts.max_rmse}", "high_rmse")
    if cons < opts.min_constraint:
        return done(False, T, f"degenerate geometry (constraint {cons:.4f} < {opts.min_constraint})", "degenerate")
    return done(True, T)


def register_depth(source_depth: np.ndarray, source_K: np.ndarray, target_depth: np.ndarray,
                   target_K: np.ndarray, opts: GlobalRegistrationOptions = GlobalRegistrationOptions(),
                   prior: Optional[np.ndarray] = None, stride: int = 2, depth_max: float = np.inf,
                   target: Optional[DepthCloud] = None) -> GlobalRegistration:
    """:func:`register` straight from two depth maps (``[H, W]`` each, their ``[3, 3]`` intrinsics).

    ``target``: the target view already prepared (a keyframe's cached cloud), else it is built.
    """
    tgt = target if target is not None else prepare(depth_points(target_depth, target_K, stride,
                                                                 depth_max=depth_max), opts)
    src = prepare(depth_points(source_depth, source_K, stride, depth_max=depth_max), opts, unit=tgt.median_depth)
    return register(src, tgt, opts, prior=prior)


def _stride(shape: tuple[int, ...], side: int = 200) -> int:
    """Pixel step that leaves about ``side`` pixels along the longer image side (enough for a 2.5k-point cloud)."""
    return max(1, int(round(max(shape[:2]) / side)))


def recover_pose(depth: np.ndarray, K: np.ndarray, ref_depth: np.ndarray, ref_K: np.ndarray, ref_pose: np.ndarray,
                 predicted: Optional[np.ndarray] = None, cache: Any = None,
                 opts: GlobalRegistrationOptions = GlobalRegistrationOptions()) -> Optional[np.ndarray]:
    """Camera-to-world pose of a view whose tracking failed, from its depth and a reference view's.

    The tracker's fallback: no guess is needed (RANSAC on FPFH), ``predicted`` (the motion model's
    camera-to-world guess) is tried as a start too. The caller refines the result with its own dense
    registration and keeps its own plausibility gates (the motion guard).

    Args:
        depth: ``[H, W]`` depth of the view (metres, 0 = invalid) and ``K`` its ``[3, 3]`` intrinsics.
        ref_depth, ref_K, ref_pose: the reference view's depth, intrinsics and camera-to-world pose.
        predicted: ``[4, 4]`` camera-to-world guess, or None.
        cache: an object whose attribute ``cloud`` keeps the reference's prepared cloud between calls
            (None: prepared every time).

    Returns:
        ``[4, 4]`` camera-to-world pose, or None when the registration was rejected.
    """
    tgt = getattr(cache, "cloud", None) if cache is not None else None
    if tgt is None:
        tgt = prepare(depth_points(ref_depth, ref_K, _stride(np.shape(ref_depth))), opts)
        if cache is not None:
            cache.cloud = tgt
    src = prepare(depth_points(depth, K, _stride(np.shape(depth))), opts, unit=tgt.median_depth)
    ref_pose = np.asarray(ref_pose, dtype=np.float64)
    prior = None
    if predicted is not None:
        prior = np.linalg.inv(ref_pose) @ np.asarray(predicted, dtype=np.float64)
    res = register(src, tgt, opts, prior=prior)
    return ref_pose @ res.transform if res.accepted else None


def view_distance(a: np.ndarray, b: np.ndarray, depth: float) -> float:
    """How different two viewpoints are, in units of ``depth``: the distance between the camera centres plus
    the distance between the points each camera looks at ``depth`` ahead (camera-to-world ``[4, 4]`` poses,
    OpenCV axes, z forward). 0 for the same view; a pure turn of ``x`` radians scores about ``x``; a pure
    shift of ``s`` scores ``2 s / depth``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    centres = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    ahead = float(np.linalg.norm(a[:3, 3] + depth * a[:3, 2] - b[:3, 3] - depth * b[:3, 2]))
    return (centres + ahead) / max(float(depth), 1e-9)


def nearest_views(prior: np.ndarray, poses: dict[int, np.ndarray], depth: float, k: int,
                  max_distance: float = np.inf) -> list[tuple[int, float]]:
    """The ``k`` views of ``poses`` (``{index: [4, 4] camera-to-world}``) closest to ``prior`` by
    :func:`view_distance` (at most ``max_distance``), as ``[(index, distance)]``, closest first (ties: lower
    index first)."""
    scored = sorted(((view_distance(prior, T, depth), int(i)) for i, T in poses.items()), key=lambda x: (x[0], x[1]))
    return [(i, d) for d, i in scored if d <= max_distance][: max(int(k), 0)]


class CloudCache:
    """Prepared clouds (:class:`DepthCloud`) of keyframes, the ``max_items`` most recently used.

    ``get(index, make)`` returns the cached cloud or ``make()``'s (None is not cached); ``discard(index)``
    forgets one (a culled keyframe)."""

    def __init__(self, max_items: int = 64) -> None:
        from collections import OrderedDict

        self.max_items = int(max_items)
        self._items: "OrderedDict[int, DepthCloud]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, index: int, make) -> Optional[DepthCloud]:
        c = self._items.get(index)
        if c is not None:
            self._items.move_to_end(index)
            return c
        c = make()
        if c is not None:
            self._items[index] = c
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return c

    def discard(self, index: int) -> None:
        self._items.pop(index, None)

    def clear(self) -> None:
        self._items.clear()


def depth_agreement(points: np.ndarray, T_ts: np.ndarray, depth: np.ndarray, K: np.ndarray,
                    rel_tol: float = 0.05) -> tuple[float, float, int]:
    """How a view's depth agrees with another view's depth image under an alignment (a visibility check).

    The source's camera-frame ``points`` (``[N, 3]``) are moved by ``T_ts`` into the target camera and
    projected into its ``depth`` image (``[H, W]``, 0 = no depth; ``K`` its ``[3, 3]`` intrinsics). Of the
    points that land on a pixel with depth, a point *agrees* when its depth is within ``rel_tol`` of the
    pixel's, and *violates* free space when it lies more than ``rel_tol`` in front of it: the target
    camera saw through the place where the alignment puts that surface. A true alignment violates
    little (occlusion edges, sensor noise); a wrong one that still overlaps somewhere (a wall on a
    wall) puts the rest of the view in space the target saw empty.

    Returns:
        ``(agreeing fraction, violating fraction, points that landed)``; fractions of the points that
        landed on a pixel with depth (0, 0, 0 when none did).
    """
    p = np.asarray(points, dtype=np.float64) @ T_ts[:3, :3].T + T_ts[:3, 3]
    d = np.asarray(depth, dtype=np.float32)
    h, w = d.shape
    z = p[:, 2]
    ok = z > 1e-6
    zs = np.where(ok, z, 1.0)
    u = np.round(K[0, 0] * p[:, 0] / zs + K[0, 2]).astype(np.int64)
    v = np.round(K[1, 1] * p[:, 1] / zs + K[1, 2]).astype(np.int64)
    inside = ok & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    dd = np.zeros(len(p), np.float32)
    dd[inside] = d[v[inside], u[inside]]
    seen = inside & np.isfinite(dd) & (dd > 0)
    n = int(seen.sum())
    if n == 0:
        return 0.0, 0.0, 0
    zz, dz = z[seen], dd[seen].astype(np.float64)
    agree = np.abs(zz - dz) <= rel_tol * dz
    violate = zz < dz * (1.0 - rel_tol)
    return float(agree.mean()), float(violate.mean()), n
