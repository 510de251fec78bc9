"""Point chunks kept in the camera frame of the frame they are anchored to, under a point budget.

A map that must follow pose corrections (loop closure, relocalisation) cannot keep its
points in the world: the world position of a point depends on a pose that may still
change. :class:`AnchoredPoints` keeps each chunk of points in the camera frame of its
*anchor* (a frame index; usually a keyframe) and places them in the world only when
asked, with the anchor's *current* transform from the trajectory store::

    world = context.trajectory.transform(anchor) @ x        # x: the chunk's points

``transform`` is a Sim(3) once a monocular correction rescaled the anchor, so the
chunk's geometry is scaled with it; nothing is ever re-projected or re-binned because
of a correction.

Each chunk holds voxel means (voxel edge ``voxel`` in the anchor's camera-frame units):
``xyz [N, 3] float32``, ``rgb [N, 3] uint8`` and ``count [N] int32`` (raw points merged
into each voxel), so that merging chunks later weighs every raw point equally. Points
added to an existing chunk are merged into its voxels. All chunks together never hold
more than ``max_points`` voxels: when they would, the voxel grows by ``growth`` and
every chunk is re-binned (19 bytes per point kept, so ``max_points`` bounds the memory).

No plugin hooks here (a library for the ``pointcloud`` and ``viewer`` plugins).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from .common import voxel_keys

BYTES_PER_POINT = 12 + 3 + 4  # xyz float32, rgb uint8, count int32


@dataclass
class Chunk:
    """Voxel-mean points of one anchor, in the anchor's camera frame.

    Attributes:
        xyz: ``[N, 3]`` float32 camera-frame positions (the anchor's recorded units).
        rgb: ``[N, 3]`` uint8 mean colours.
        count: ``[N]`` int32 raw points per voxel.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.xyz.nbytes + self.rgb.nbytes + self.count.nbytes)


def voxel_means(xyz: np.ndarray, rgb: np.ndarray, count: np.ndarray, voxel: float) -> Chunk:
    """Count-weighted mean position and colour per voxel of edge ``voxel``.

    Args:
        xyz: ``[N, 3]`` positions; rgb: ``[N, 3]`` colours 0..255; count: ``[N]`` weights (>= 1).
        voxel: voxel edge in the units of ``xyz``.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        return Chunk(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.int32))
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(count, dtype=np.float64).reshape(-1)
    _, inv = np.unique(voxel_keys(xyz, voxel), return_inverse=True)
    inv = inv.reshape(-1)
    n = int(inv.max()) + 1
    tot = np.bincount(inv, weights=w, minlength=n)
    mx = np.stack([np.bincount(inv, weights=xyz[:, k] * w, minlength=n) for k in range(3)], 1) / tot[:, None]
    mc = np.stack([np.bincount(inv, weights=rgb[:, k] * w, minlength=n) for k in range(3)], 1) / tot[:, None]
    return Chunk(mx.astype(np.float32), np.clip(np.rint(mc), 0, 255).astype(np.uint8),
                 np.minimum(tot, np.iinfo(np.int32).max).astype(np.int32))


def transform_chunk(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """``[N, 3]`` float64 world points: the ``[4, 4]`` (Sim(3)) transform ``T`` applied to ``xyz``."""
    T = np.asarray(T, dtype=np.float64)
    return np.asarray(xyz, dtype=np.float64) @ T[:3, :3].T + T[:3, 3]



class AnchoredPoints:
    """Voxel-mean point chunks per anchor, in the anchor's camera frame, under a budget.

    Args:
        voxel: voxel edge (camera-frame units of the anchors).
        max_points: most voxels kept over all chunks together.
        growth: voxel growth factor when the budget is exceeded.
    """

    def __init__(self, voxel: float, max_points: int, growth: float = 1.25) -> None:
        if not voxel > 0:
            raise ValueError(f"voxel must be > 0, got {voxel}")
        if not growth > 1:
            raise ValueError(f"growth must be > 1, got {growth}")
        self.voxel = float(voxel)
        self.max_points = int(max_points)
        self.growth = float(growth)
        self.chunks: dict[int, Chunk] = {}
        self._total = 0
        self.rebins = 0

    def __len__(self) -> int:
        """Points kept over all chunks."""
        return self._total

    def __contains__(self, anchor: object) -> bool:
        return anchor in self.chunks

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.chunks))

    @property
    def nbytes(self) -> int:
        return int(sum(c.nbytes for c in self.chunks.values()))

    def add(self, anchor: int, xyz: np.ndarray, rgb: np.ndarray, count: Optional[np.ndarray] = None) -> bool:
        """Merge points (anchor camera frame) into ``anchor``'s chunk.

        Returns:
            True when the budget made every chunk re-bin at a larger voxel (a viewer re-sends them all).
        """
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        if len(xyz) == 0:
            return False
        rgb = np.asarray(rgb).reshape(-1, 3)
        cnt = np.ones(len(xyz), np.int32) if count is None else np.asarray(count).reshape(-1)
        old = self.chunks.get(anchor)
        if old is not None and len(old):
            xyz = np.concatenate([old.xyz.astype(np.float64), xyz])
            rgb = np.concatenate([old.rgb.astype(np.float64), rgb.astype(np.float64)])
            cnt = np.concatenate([old.count, cnt])
        self._set(anchor, voxel_means(xyz, rgb, cnt, self.voxel))
        rebinned = False
        while self._total > self.max_points:
            self.voxel *= self.growth
            for k in list(self.chunks):
                c = self.chunks[k]
                self._set(k, voxel_means(c.xyz, c.rgb, c.count, self.voxel))
            rebinned = True
        if rebinned:
            self.rebins += 1
        return rebinned

    def _set(self, anchor: int, chunk: Chunk) -> None:
        old = self.chunks.get(anchor)
        self._total += len(chunk) - (len(old) if old is not None else 0)
        self.chunks[anchor] = chunk

    def remove(self, anchor: int) -> None:
        old = self.chunks.pop(anchor, None)
        if old is not None:
            self._total -= len(old)

    def clear(self) -> None:
        self.chunks.clear()
        self._total = 0

    # ------------------------------------------------------------------ placing in the world
    def posed(self, transform_of: Callable[[int], Optional[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every chunk placed with its anchor's current transform.

        Args:
            transform_of: anchor -> ``[4, 4]`` current world transform (None: leave the chunk out).

        Returns:
            ``(xyz [M, 3] float64 world, rgb [M, 3] uint8, count [M] int32)``.
        """
        xs, cs, ns = [], [], []
        for anchor, c in self.chunks.items():
            T = transform_of(anchor)
            if T is None or not len(c):
                continue
            xs.append(transform_chunk(T, c.xyz))
            cs.append(c.rgb)
            ns.append(c.count)
        if not xs:
            return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0, np.int32)
        return np.concatenate(xs), np.concatenate(cs), np.concatenate(ns)

    def merged(self, transform_of: Callable[[int], Optional[np.ndarray]], voxel: Optional[float] = None,
               min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The posed chunks merged into one world voxel map (count-weighted means).

        Returns:
            ``(xyz [M, 3] float64, rgb [M, 3] float64 0..255)`` of voxels holding at least
            ``min_count`` raw points.
        """
        xyz, rgb, cnt = self.posed(transform_of)
        if len(xyz) == 0:
            return xyz, rgb.astype(np.float64)
        m = voxel_means(xyz, rgb, cnt, voxel or self.voxel)
        keep = m.count >= min_count
        return m.xyz[keep].astype(np.float64), m.rgb[keep].astype(np.float64)
