"""COLMAP tracks for the map's points: which frames see which point, from their depth maps.

slam3r's map points are voxel averages, not triangulated features, so there are no feature
matches to take tracks from. A point is observed by a frame when it projects inside the image, in
front of the camera, and the frame's depth at that pixel agrees with the point's depth within
``tolerance`` (relative): the surface the camera saw there is the point's surface. Frames without
a depth map add no observations; points nobody sees keep an empty track.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Relative depth agreement for an observation (3 %: a few TSDF voxels at room scale).
DEFAULT_TOLERANCE = 0.03


def observe(points: np.ndarray, c2w: np.ndarray, K: np.ndarray, depth: np.ndarray,
            tolerance: float = DEFAULT_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """The points a depth map sees.

    Args:
        points: ``[N, 3]`` world points.
        c2w: ``[4, 4]`` camera-to-world pose (OpenCV axes) of the frame, in the points' units.
        K: ``[3, 3]`` intrinsics (OpenCV convention: pixel centres at integer coordinates).
        depth: ``[H, W]`` depth along z in the points' units, 0 = unknown.
        tolerance: largest ``|z_point - depth| / depth``.

    Returns:
        ``(indices [M] int64 into points, uv [M, 2] float64 projections, OpenCV pixel convention)``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    c2w = np.asarray(c2w, dtype=np.float64)
    d = np.asarray(depth)
    H, W = d.shape
    cam = (pts - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (p - t), row-wise
    z = cam[:, 2]
    front = np.flatnonzero(z > 1e-9)
    if front.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2))
    zf = z[front]
    u = K[0, 0] * cam[front, 0] / zf + K[0, 2]
    v = K[1, 1] * cam[front, 1] / zf + K[1, 2]
    ui, vi = np.rint(u), np.rint(v)
    inside = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
    front, zf, u, v = front[inside], zf[inside], u[inside], v[inside]
    ds = d[vi[inside].astype(np.int64), ui[inside].astype(np.int64)].astype(np.float64)
    ok = np.isfinite(ds) & (ds > 0) & (np.abs(zf - ds) <= tolerance * np.where(ds > 0, ds, 1.0))
    return front[ok].astype(np.int64), np.stack([u[ok], v[ok]], axis=1)


@dataclass
class TrackBuilder:
    """Collects observations frame by frame (one depth map at a time, none kept).

    Attributes:
        points: ``[N, 3]`` world points.
        tolerance: see :func:`observe`.
        max_observations: stop adding once this many are collected (memory bound).
        observations: ``{frame key: (point indices [M], uv [M, 2])}``.
    """

    points: np.ndarray
    tolerance: float = DEFAULT_TOLERANCE
    max_observations: int = 5_000_000
    observations: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    count: int = 0

    def add(self, key: int, c2w: np.ndarray, K: np.ndarray, depth: np.ndarray,
            K_image: "np.ndarray | None" = None) -> int:
        """Observe the points in one frame's depth; returns how many it sees (0 once the budget is spent).

        ``K_image``: the intrinsics of the exported image when the depth map is smaller (a keyframe
        thumbnail): visibility is decided on the depth map, the keypoints are projected with ``K_image``.
        """
        if self.count >= self.max_observations or len(self.points) == 0:
            return 0
        idx, uv = observe(self.points, c2w, K, depth, self.tolerance)
        if K_image is not None and len(idx):
            cam = (self.points[idx] - c2w[:3, 3]) @ c2w[:3, :3]
            uv = np.stack([K_image[0, 0] * cam[:, 0] / cam[:, 2] + K_image[0, 2],
                           K_image[1, 1] * cam[:, 1] / cam[:, 2] + K_image[1, 2]], axis=1)
        room = self.max_observations - self.count
        idx, uv = idx[:room], uv[:room]
        if len(idx):
            self.observations[key] = (idx, uv)
            self.count += len(idx)
        return int(len(idx))
