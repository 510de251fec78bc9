"""Points of one frame: the confident, unprojected depth (or the frontend's world points) of an estimate.

Shared by the point-cloud map, the viewer and the rerun recorder; public (a third-party map may use it).
Conventions: poses camera-to-world ``[4, 4]`` float64 (OpenCV axes), points ``[N, 3]`` float64, colours
``[N, 3]`` float64 in 0..255.
"""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from slam3r_app.sim3 import sim3_inverse
from slam3r_app.trajectory_store import TrajectoryStore

from .anchored import transform_chunk
from .common import confidence_mask, median_depth, unproject, valid_depth_mask


class PointSelection(Protocol):
    """The options :func:`frame_points` reads. :class:`PointCloudOptions` and the viewer's options both
    declare them (same meaning and bounds, their own defaults: the viewer shows a sparser map)."""

    points: str
    conf_quantile: float
    depth_max_factor: Optional[float]
    pixel_stride: int


def anchor_of(trajectory: TrajectoryStore, index: int) -> int:
    """The keyframe a frame's points are kept with: its reference keyframe (itself for a keyframe),
    or the frame itself when it came before the first keyframe."""
    k = trajectory.reference_keyframe(index) if index in trajectory else None
    return int(index) if k is None else int(k)


def frame_points(frame, est, opts: PointSelection) -> tuple[np.ndarray, np.ndarray, Optional[float]]:
    """Confident world points of one estimate with their colours, and the frame's median depth.

    A lost frame (``est.lost``) has none.
    """
    if est.lost:
        return np.zeros((0, 3)), np.zeros((0, 3)), None
    depth = est.depth
    valid = valid_depth_mask(depth) if depth is not None else None
    mask = confidence_mask(est.confidence, opts.conf_quantile, valid)
    med = median_depth(depth, mask) if depth is not None else None
    if mask is not None and depth is not None and opts.depth_max_factor and med:
        mask = mask & (np.asarray(depth) <= opts.depth_max_factor * med)
    use_world = est.points is not None and opts.points in ("auto", "world")
    rgb = np.asarray(frame.rgb)
    if use_world:
        P = np.asarray(est.points)
        s = opts.pixel_stride
        sub = P[::s, ::s].reshape(-1, 3)
        ok = np.isfinite(sub).all(axis=1)
        if mask is not None:
            ok &= np.asarray(mask)[::s, ::s].reshape(-1)
        col = rgb[::s, ::s].reshape(-1, 3) if rgb.shape[:2] == P.shape[:2] else np.zeros_like(sub)
        if med is None:
            cam = (sub[ok] - est.pose[:3, 3]) @ np.asarray(est.pose)[:3, :3]
            med = float(np.median(cam[:, 2])) if len(cam) else None
        return sub[ok].astype(np.float64), col[ok].astype(np.float64), med
    if depth is None:
        return np.zeros((0, 3)), np.zeros((0, 3)), None
    pts, flat = unproject(depth, np.asarray(est.intrinsics, dtype=np.float64), np.asarray(est.pose, dtype=np.float64),
                          mask=mask, stride=opts.pixel_stride)
    d = np.asarray(depth)
    if rgb.shape[:2] == d.shape:
        col = rgb.reshape(-1, 3)[flat]
    else:
        col = np.zeros((len(pts), 3))
    return pts, col.astype(np.float64), med


def camera_points(frame, est, opts: PointSelection) -> tuple[np.ndarray, np.ndarray, Optional[float]]:
    """:func:`frame_points` in the camera frame of ``est.pose`` (``[N, 3]`` float64), colours, median depth."""
    pts, col, med = frame_points(frame, est, opts)
    if len(pts):
        pts = transform_chunk(sim3_inverse(np.asarray(est.pose, dtype=np.float64)), pts)
    return pts, col, med
