"""Small helpers shared by the built-in backends (not a plugin: no hooks here).

Only numpy (and Open3D, imported lazily where a function needs it): the geometry
every backend repeats -- unprojecting depth, confidence masks, lost-tracking tests,
scaling poses, voxel downsampling and writing ``.ply`` files atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from slam3r_app.io import atomic_path, quiet_library_stderr, verify_ply


def valid_depth_mask(depth: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Finite, strictly positive depth."""
    if depth is None:
        return None
    d = np.asarray(depth)
    return np.isfinite(d) & (d > 0)


def confidence_mask(confidence: Optional[np.ndarray], quantile: float, valid: Optional[np.ndarray] = None) -> np.ndarray | None:
    """Pixels whose confidence is at least the ``quantile`` of the valid pixels' confidence.

    ``quantile`` 0 keeps every valid pixel with confidence > 0; 0.3 drops the 30 %
    least confident. Returns None when there is no confidence map (caller keeps all).
    """
    if confidence is None:
        return valid
    c = np.asarray(confidence, dtype=np.float32)
    ok = np.isfinite(c) & (c > 0)
    if valid is not None:
        ok &= valid
    if quantile > 0 and ok.any():
        thr = np.quantile(c[ok], quantile)
        ok &= c >= thr
    return ok


def median_depth(depth: Optional[np.ndarray], mask: Optional[np.ndarray] = None) -> Optional[float]:
    """Median of the valid depth values (None when there are none)."""
    if depth is None:
        return None
    ok = valid_depth_mask(depth)
    if mask is not None:
        ok &= mask
    if not ok.any():
        return None
    return float(np.median(np.asarray(depth)[ok]))


def scale_pose(pose: np.ndarray, scale: float) -> np.ndarray:
    """A camera-to-world pose with its translation multiplied by ``scale`` (world scaled about the origin)."""
    out = np.array(pose, dtype=np.float64, copy=True)
    out[..., :3, 3] *= scale
    return out


def unproject(depth: np.ndarray, K: np.ndarray, c2w: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None,
              stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a depth map (z along the optical axis) to 3D points.

    Args:
        depth: ``[H, W]`` depth.
        K: ``[3, 3]`` intrinsics of ``depth``.
        c2w: camera-to-world pose; None returns camera-frame points.
        mask: ``[H, W]`` bool, pixels to use (in addition to valid depth).
        stride: use every ``stride``-th pixel in both directions.

    Returns:
        ``(points [N, 3] float64, flat pixel indices [N] into the H*W image)``.
    """
    d = np.asarray(depth, dtype=np.float64)
    H, W = d.shape
    vv, uu = np.mgrid[0:H:stride, 0:W:stride]
    ok = valid_depth_mask(d[vv, uu])
    if mask is not None:
        ok &= np.asarray(mask)[vv, uu]
    v, u = vv[ok], uu[ok]
    z = d[v, u]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    pts = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)
    if c2w is not None:
        c2w = np.asarray(c2w, dtype=np.float64)
        pts = pts @ c2w[:3, :3].T + c2w[:3, 3]
    return pts, v * W + u


def resize_nearest(img: np.ndarray, factor: int) -> np.ndarray:
    """Every ``factor``-th pixel (nearest-neighbour downsampling that never mixes depths)."""
    if factor <= 1:
        return img
    return np.ascontiguousarray(img[::factor, ::factor])


def scale_intrinsics(K: np.ndarray, factor: int) -> np.ndarray:
    """Intrinsics for an image subsampled by taking every ``factor``-th pixel."""
    if factor <= 1:
        return np.asarray(K, dtype=np.float64)
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, 0] /= factor
    K2[1, 1] /= factor
    K2[0, 2] /= factor
    K2[1, 2] /= factor
    return K2


def voxel_keys(xyz: np.ndarray, voxel: float) -> np.ndarray:
    """One int64 key per point: its voxel of edge ``voxel`` (+-1M voxels per axis, clipped beyond)."""
    k = np.floor(np.asarray(xyz, dtype=np.float64) / voxel).astype(np.int64) + (1 << 20)
    k = np.clip(k, 0, (1 << 21) - 1)
    return (k[:, 0] << 42) | (k[:, 1] << 21) | k[:, 2]


class VoxelAccumulator:
    """Points averaged per voxel, with a hard budget on the number of voxels kept.

    New points are merged into the voxels (running sums of position and colour and
    a count per voxel). When more than ``max_points`` voxels are occupied the voxel
    size grows by ``growth`` and the map is re-binned, so memory stays bounded
    whatever the length of the run.
    """

    def __init__(self, voxel_size: float, max_points: int, growth: float = 1.25) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        self.voxel_size = float(voxel_size)
        self.max_points = int(max_points)
        self.growth = float(growth)
        self.sum_xyz = np.zeros((0, 3), np.float64)
        self.sum_rgb = np.zeros((0, 3), np.float64)
        self.count = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.count.shape[0])

    def add(self, xyz: np.ndarray, rgb: Optional[np.ndarray] = None) -> None:
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        if xyz.shape[0] == 0:
            return
        rgb = np.zeros_like(xyz) if rgb is None else np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
        self._merge(np.concatenate([self.sum_xyz, xyz]), np.concatenate([self.sum_rgb, rgb]),
                    np.concatenate([self.count, np.ones(len(xyz), np.int64)]))
        while len(self) > self.max_points:
            self.voxel_size *= self.growth
            self._merge(self.sum_xyz, self.sum_rgb, self.count)

    def _merge(self, sxyz: np.ndarray, srgb: np.ndarray, cnt: np.ndarray) -> None:
        keys = voxel_keys(sxyz / cnt[:, None], self.voxel_size)
        _, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(-1)
        n = int(inv.max()) + 1 if len(inv) else 0
        self.count = np.bincount(inv, weights=cnt, minlength=n).astype(np.int64)
        self.sum_xyz = np.stack([np.bincount(inv, weights=sxyz[:, k], minlength=n) for k in range(3)], axis=1)
        self.sum_rgb = np.stack([np.bincount(inv, weights=srgb[:, k], minlength=n) for k in range(3)], axis=1)

    def points(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(xyz [N,3], rgb [N,3])`` voxel means of voxels seen at least ``min_count`` times."""
        keep = self.count >= min_count
        c = self.count[keep][:, None].astype(np.float64)
        return self.sum_xyz[keep] / c, self.sum_rgb[keep] / c

    def clear(self) -> None:
        self.__init__(self.voxel_size, self.max_points, self.growth)  # type: ignore[misc]


def write_point_cloud(path: str | os.PathLike, xyz: np.ndarray, rgb01: Optional[np.ndarray] = None) -> Path:
    """Write a coloured point cloud (``.ply``) atomically; colours in [0, 1]."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(np.asarray(xyz, dtype=np.float64).reshape(-1, 3))
    if rgb01 is not None and len(rgb01):
        pcd.colors = o3d.utility.Vector3dVector(np.clip(np.asarray(rgb01, dtype=np.float64).reshape(-1, 3), 0, 1))
    path = Path(path)
    n = len(pcd.points)
    with atomic_path(path, verify=lambda p: verify_ply(p, {"vertex": n})) as tmp:
        with quiet_library_stderr():  # RPly's line per element on a full disk: verify_ply reports it once
            ok = o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False)
        if not ok:
            raise OSError(f"Open3D could not write {path}")
    return path


def write_triangle_mesh(path: str | os.PathLike, mesh) -> Path:
    """Write an Open3D legacy ``TriangleMesh`` (``.ply``) atomically."""
    import open3d as o3d

    if mesh.has_vertex_colors():  # TSDF colour averages can overshoot [0, 1] by rounding
        mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(np.asarray(mesh.vertex_colors), 0.0, 1.0))
    path = Path(path)
    expect = {"vertex": len(mesh.vertices), "face": len(mesh.triangles)}
    with atomic_path(path, verify=lambda p: verify_ply(p, expect)) as tmp:
        with quiet_library_stderr():
            ok = o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False)
        if not ok:
            raise OSError(f"Open3D could not write {path}")
    return path
