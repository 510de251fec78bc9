"""What the live viewer shows of the point map, and where (no viser here: tested alone).

* :class:`PointMap`: the points shown, one chunk per added frame **in that frame's camera
  frame** (:class:`~slam3r_plugins.maps.anchored.AnchoredPoints`), so that a pose correction
  moves them without re-sending them. Points that fall into voxels the last ``window``
  chunks already show (placed at their *current* poses) are left out: consecutive views
  overlap a lot, and their relative poses barely change under a correction, so this
  dedup stays valid after corrections (a dedup against the whole map would leave holes
  that no longer line up once a loop is closed). All chunks together stay under
  ``max_points``: when a new chunk would exceed it, the voxel grows by ``growth`` and every
  chunk is re-binned (the viewer then re-sends them all).
* :func:`node_transform`: a Sim(3) as viser's ``(wxyz, position, scale)``.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Optional

import numpy as np

from ..maps.anchored import AnchoredPoints, transform_chunk
from ..maps.common import voxel_keys


def node_transform(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(wxyz [4], position [3], scale)`` of a ``[4, 4]`` similarity ``[[s R, t], [0, 1]]``."""
    from scipy.spatial.transform import Rotation

    S = np.asarray(S, dtype=np.float64)
    s = float(np.cbrt(np.linalg.det(S[:3, :3])))
    U, _, Vt = np.linalg.svd(S[:3, :3] / s)
    x, y, z, w = Rotation.from_matrix(U @ Vt).as_quat()
    return np.array([w, x, y, z]), S[:3, 3].copy(), s


class PointMap:
    """Per-frame point chunks (camera frames) under a budget, deduplicated against recent chunks.

    Args:
        voxel: voxel edge (frontend units).
        max_points: most points shown over all chunks.
        growth: voxel growth when over budget.
        window: how many of the latest chunks a new one is deduplicated against (0: none).
    """

    def __init__(self, voxel: float, max_points: int, growth: float = 1.5, window: int = 8) -> None:
        self.points = AnchoredPoints(voxel, max_points, growth)
        self.recent: deque[int] = deque(maxlen=max(int(window), 1))
        self.window = int(window)

    @property
    def voxel(self) -> float:
        return self.points.voxel

    @property
    def max_points(self) -> int:
        return self.points.max_points

    def __len__(self) -> int:
        return len(self.points)

    @property
    def chunks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(xyz [N, 3] float32 camera frame, rgb [N, 3] uint8)]`` as shown, oldest first."""
        return [(c.xyz, c.rgb) for c in self.points.chunks.values()]

    def chunk(self, index: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        c = self.points.chunks.get(index)
        return None if c is None else (c.xyz, c.rgb)

    def indices(self) -> list[int]:
        return list(self.points.chunks)

    def add(self, index: int, xyz: np.ndarray, rgb: np.ndarray, T: np.ndarray,
            transform_of: Callable[[int], Optional[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, bool]:
        """Add frame ``index``'s points.

        Args:
            xyz: ``[N, 3]`` points in the frame's camera frame; rgb: ``[N, 3]`` uint8.
            T: ``[4, 4]`` the frame's current world transform.
            transform_of: frame index -> current world transform (for the recent chunks).

        Returns:
            ``(xyz, rgb, rebuilt)``: the chunk to send (camera frame), and whether every chunk was
            re-binned (then the caller re-sends them all).
        """
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(xyz) and self.window > 0 and self.recent:
            shown = []
            for j in self.recent:
                c, Tj = self.points.chunks.get(j), transform_of(j)
                if c is not None and Tj is not None and len(c):
                    shown.append(voxel_keys(transform_chunk(Tj, c.xyz), self.voxel))
            if shown:
                new = ~np.isin(voxel_keys(transform_chunk(T, xyz), self.voxel), np.concatenate(shown))
                xyz, rgb = xyz[new], rgb[new]
        self.recent.append(index)
        if len(xyz) == 0:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), False
        rebuilt = self.points.add(index, xyz, rgb)
        c = self.points.chunks[index]
        return c.xyz, c.rgb, rebuilt

    def clear(self) -> None:
        self.points.clear()
        self.recent.clear()
