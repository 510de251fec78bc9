"""The map's 3D points for the exports: the run's point-cloud files, or depth unprojected frame by frame.

``points`` option: ``auto`` takes the fusion's ``points.ply`` (TSDF surface points), else the
``pointcloud`` plugin's ``pointcloud.ply``; ``fusion`` / ``pointcloud`` take that file only; ``depth``
unprojects the exported frames' depth (keyframes) into a voxel map; ``none`` exports no points.
``auto`` falls back to ``depth`` when the run wrote no point cloud. During a run the maps come in memory
from ``context.services.exported`` (:func:`handed_points`); the offline exporter reads a finished run's
files (:func:`map_points`). The files are already in the
trajectory's units (both plugins scale their map by the metric scale the trajectory uses).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .scene import ExportError

if TYPE_CHECKING:
    from slam3r_app.services import ExportedMaps

POINT_SOURCES = ("auto", "fusion", "pointcloud", "depth", "none")
PLY_FILES = {"fusion": "points.ply", "pointcloud": "pointcloud.ply"}


def read_ply_points(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(xyz [N, 3] float64, rgb [N, 3] uint8 or None)`` of a point-cloud ``.ply`` (Open3D)."""
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(pcd.points, dtype=np.float64)
    cols = np.asarray(pcd.colors)
    rgb = np.clip(np.rint(cols * 255), 0, 255).astype(np.uint8) if len(cols) == len(xyz) and len(xyz) else None
    return xyz, rgb


def _map_source(which: str) -> bool:
    """Whether ``which`` takes a map plugin's points (``auto``, ``fusion``, ``pointcloud``).

    Raises:
        ExportError: ``which`` is not one of :data:`POINT_SOURCES`.
    """
    if which not in POINT_SOURCES:
        raise ExportError(f"points must be one of {', '.join(POINT_SOURCES)}, got {which!r}")
    return which not in ("none", "depth")


def map_points(run_dir: Path, which: str = "auto") -> tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """The run folder's points for ``which`` (``auto``, ``fusion``, ``pointcloud``); ``(None, None, "")`` if none.

    Raises:
        ExportError: ``which`` names a plugin whose file the run did not write.
    """
    if not _map_source(which):
        return None, None, ""
    names = [PLY_FILES[which]] if which in PLY_FILES else list(PLY_FILES.values())
    for name in names:
        path = Path(run_dir) / name
        if path.is_file() and path.stat().st_size > 0:
            xyz, rgb = read_ply_points(path)
            if len(xyz):
                return xyz, rgb, name
    if which in PLY_FILES:
        raise ExportError(f"points: {which} asks for {PLY_FILES[which]}, but {run_dir} has no (non-empty) "
                          f"{PLY_FILES[which]} (was the {which} plugin enabled?)")
    return None, None, ""


def handed_points(maps: "ExportedMaps", which: str = "auto") -> tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """The points the map plugins handed over in memory this export pass (the run-time path).

    Same choice as :func:`map_points` (``auto``: the fusion's surface points, else the point map),
    from ``context.services.exported`` instead of the run folder's files; the label names the file
    the points were also written to.

    Raises:
        ExportError: ``which`` names a plugin that wrote no map in this run.
    """
    if not _map_source(which):
        return None, None, ""
    handed = {"fusion": maps.surface_points, "pointcloud": maps.pointcloud}
    for name in ([which] if which in handed else list(handed)):
        pts = handed[name]
        if pts is not None and len(pts.xyz):
            return pts.xyz, pts.rgb, PLY_FILES[name]
    if which in handed:
        raise ExportError(f"points: {which} asks for the {which} plugin's map, but it made none in this run "
                          f"(was the {which} plugin enabled, and did it see any frame?)")
    return None, None, ""


class DepthPoints:
    """A voxel map of unprojected depth, built one frame at a time (bounded: at most ``max_points`` voxels).

    Args:
        voxel_fraction: voxel edge as a fraction of the first frame's median depth.
        max_points: voxel budget (the voxel grows beyond it, see ``VoxelAccumulator``).
        stride: use every ``stride``-th pixel in both directions.
    """

    def __init__(self, voxel_fraction: float = 0.01, max_points: int = 200_000, stride: int = 2) -> None:
        self.voxel_fraction = voxel_fraction
        self.max_points = max_points
        self.stride = stride
        self.acc = None
        self.frames = 0

    def add(self, c2w: np.ndarray, K: np.ndarray, depth: np.ndarray, rgb: Optional[np.ndarray] = None) -> None:
        """Unproject ``depth`` ``[H, W]`` (export units) at pose ``c2w`` with colours from ``rgb`` ``[H, W, 3]``."""
        from slam3r_plugins.maps.common import VoxelAccumulator, median_depth, unproject

        if self.acc is None:
            med = median_depth(depth)
            if med is None:
                return
            self.acc = VoxelAccumulator(self.voxel_fraction * med, self.max_points)
        xyz, flat = unproject(depth, K, c2w, stride=self.stride)
        cols = None
        if rgb is not None:
            cols = np.asarray(rgb).reshape(-1, np.asarray(rgb).shape[-1])[flat, :3].astype(np.float64)
        self.acc.add(xyz, cols)
        self.frames += 1

    def points(self) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """``(xyz [N, 3] float64, rgb [N, 3] uint8)``, or ``(None, None)`` when nothing was added."""
        if self.acc is None or len(self.acc) == 0:
            return None, None
        xyz, rgb = self.acc.points()
        return xyz, np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
