"""Geometric verification of a loop (or relocalisation) candidate.

Given the current view ``q`` and a candidate keyframe ``c`` -- their ORB features
lifted to 3D with depth, and their depth thumbnails from the keyframe store -- find
the relative transform ``T_cq`` (points of ``q``'s camera into ``c``'s camera) and
decide whether to trust it:

1. descriptor matches with a 3D point on both sides (mutual, ratio test);
2. 3D-3D RANSAC around Umeyama's closed form (rigid for metric RGB-D, with scale for
   monocular depth): at least ``min_inliers`` inliers and ``min_inlier_ratio`` of the matches;
3. ICP refinement on the depth thumbnails (Open3D: point-to-plane for rigid,
   point-to-point with scale for Sim(3)), started from the RANSAC result: overlap
   (ICP fitness) at least ``min_overlap``, inlier RMSE at most ``max_rmse`` (a fraction of the
   candidate's median depth), and ICP must agree with RANSAC (it refines, it does not
   jump elsewhere).

Every threshold that is a distance is a fraction of the candidate's median depth, so
the same settings work in metres and in a monocular prediction's units. A rejected
candidate comes back with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from slam3r_app.sim3 import sim3_inverse, sim3_scale

from ..features import FrameFeatures, align_features


@dataclass
class VerifyOptions:
    """Thresholds of :func:`verify` (see the module docstring)."""

    with_scale: bool = False
    ratio: float = 0.8
    ransac_threshold: float = 0.02  # x median depth
    ransac_iterations: int = 400
    min_matches: int = 20
    min_inliers: int = 25
    min_inlier_ratio: float = 0.3
    icp: bool = True
    icp_distance: float = 0.04  # x median depth, max correspondence distance
    icp_voxel: float = 0.01  # x median depth, downsampling
    min_overlap: float = 0.35
    max_rmse: float = 0.02  # x median depth
    max_icp_shift: float = 0.08  # x median depth: ICP may move the RANSAC pose this much
    max_icp_turn_deg: float = 5.0
    seed: int = 0


@dataclass
class Verification:
    """Outcome of :func:`verify`.

    Attributes:
        accepted: all gates passed.
        transform: ``[4, 4]`` ``T_cq`` (Sim(3) when ``with_scale``), or None.
        reason: why it was rejected ("" when accepted), in words.
        stats: matches, inliers, inlier_ratio, ransac_rmse, icp_fitness, icp_rmse (relative), scale.
        code: the rejection as a name (:data:`REJECTIONS`), "" when accepted.
    """

    accepted: bool
    transform: Optional[np.ndarray] = None
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    code: str = ""


#: what each rejection code of :func:`verify` means (loops.json lists the counts under these names)
REJECTIONS = {
    "no_depth": "the candidate keyframe has no valid depth",
    "few_matches": "fewer ORB matches with depth on both sides than min_matches",
    "few_inliers": "3D-3D RANSAC found fewer inliers than min_inliers (loop_closure.min_inliers / reloc_min_inliers)",
    "low_inlier_ratio": "RANSAC inliers / matches below loop_closure.min_inlier_ratio",
    "bad_scale": "the relative scale is outside 0.2-5 (sim3)",
    "icp_diverged": "ICP on the depth returned a non-finite transform",
    "low_overlap": "after ICP, less of the query's depth overlaps the candidate's than loop_closure.min_overlap",
    "high_rmse": "after ICP, the inlier RMSE is above loop_closure.max_rmse x median depth",
    "icp_disagrees": "ICP moved the RANSAC transform further than it may (a different alignment, not a refinement)",
}


def _rot_deg(R: np.ndarray) -> float:
    s = np.cbrt(np.linalg.det(R))
    Rn = R / s
    return float(np.degrees(np.arccos(np.clip((np.trace(Rn) - 1) / 2, -1, 1))))


def _cloud(points: np.ndarray, voxel: float, normals_radius: Optional[float]):
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    if voxel > 0:
        pc = pc.voxel_down_sample(voxel)
    if normals_radius:
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=normals_radius, max_nn=30))
    return pc


def verify(q: FrameFeatures, c: FrameFeatures, q_points: Optional[np.ndarray], c_points: Optional[np.ndarray],
           median_depth: float, opts: VerifyOptions) -> Verification:
    """Verify the candidate ``c`` for the query ``q`` (see the module docstring).

    Args:
        q, c: features of the query view and the candidate keyframe (camera-frame 3D points).
        q_points, c_points: ``[M, 3]`` camera-frame points of the two views' depth (for ICP),
            or None to skip ICP (then the RANSAC gates alone decide).
        median_depth: the candidate's median depth (the unit of the relative thresholds).
    """
    md = float(median_depth)
    if not md > 0:
        return Verification(False, reason="the candidate has no valid depth", code="no_depth")
    res, n = align_features(q, c, threshold=opts.ransac_threshold * md, with_scale=opts.with_scale,
                            ratio=opts.ratio, iterations=opts.ransac_iterations, seed=opts.seed,
                            min_inliers=opts.min_inliers)
    stats: dict[str, Any] = {"matches": n}
    if n < opts.min_matches:
        return Verification(False, reason=f"{n} 3D matches < {opts.min_matches}", stats=stats, code="few_matches")
    if res is None:
        return Verification(False, reason=f"RANSAC found fewer than {opts.min_inliers} inliers in {n} matches",
                            stats=stats, code="few_inliers")
    ratio = res.num_inliers / max(n, 1)
    stats.update(inliers=res.num_inliers, inlier_ratio=round(ratio, 4), ransac_rmse=round(res.rmse / md, 5))
    if res.num_inliers < opts.min_inliers:
        return Verification(False, reason=f"{res.num_inliers} inliers < {opts.min_inliers}", stats=stats,
                            code="few_inliers")
    if ratio < opts.min_inlier_ratio:
        return Verification(False, reason=f"inlier ratio {ratio:.2f} < {opts.min_inlier_ratio}", stats=stats,
                            code="low_inlier_ratio")
    T = res.transform
    s = sim3_scale(T)
    stats["scale"] = round(s, 6)
    if not (0.2 < s < 5.0):
        return Verification(False, reason=f"implausible relative scale {s:.3g}", stats=stats, code="bad_scale")
    if opts.icp and q_points is not None and c_points is not None and len(q_points) > 50 and len(c_points) > 50:
        import open3d as o3d

        reg = o3d.pipelines.registration
        voxel = opts.icp_voxel * md
        src = _cloud(q_points, voxel, None if opts.with_scale else 4 * voxel)
        tgt = _cloud(c_points, voxel, None if opts.with_scale else 4 * voxel)
        est = (reg.TransformationEstimationPointToPoint(with_scaling=True) if opts.with_scale
               else reg.TransformationEstimationPointToPlane())
        icp = reg.registration_icp(src, tgt, opts.icp_distance * md, T, est,
                                   reg.ICPConvergenceCriteria(max_iteration=30))
        T2 = np.asarray(icp.transformation, dtype=np.float64)
        stats.update(icp_fitness=round(float(icp.fitness), 4), icp_rmse=round(float(icp.inlier_rmse) / md, 5))
        if not np.all(np.isfinite(T2)):
            return Verification(False, reason="ICP diverged", stats=stats, code="icp_diverged")
        D = sim3_inverse(T) @ T2
        shift, turn = float(np.linalg.norm(D[:3, 3])), _rot_deg(D[:3, :3])
        stats.update(icp_shift=round(shift / md, 5), icp_turn_deg=round(turn, 3))
        if icp.fitness < opts.min_overlap:
            return Verification(False, reason=f"ICP overlap {icp.fitness:.2f} < {opts.min_overlap}", stats=stats,
                                code="low_overlap")
        if icp.inlier_rmse > opts.max_rmse * md:
            return Verification(False, reason=f"ICP RMSE {icp.inlier_rmse / md:.4f} x depth > {opts.max_rmse}",
                                stats=stats, code="high_rmse")
        if shift > opts.max_icp_shift * md or turn > opts.max_icp_turn_deg:
            return Verification(False, reason=f"ICP disagrees with RANSAC ({shift / md:.3f} x depth, {turn:.1f} deg)",
                                stats=stats, code="icp_disagrees")
        T = T2
        stats["scale"] = round(sim3_scale(T), 6)
    return Verification(True, transform=T, stats=stats)
