"""Ground truth for loop-closure tests: which frames of a synthetic sequence really see the same place.

The oracle is geometric, computed from the exact (noise-free) depth, the exact poses and
the intrinsics, never from appearance, so it is not fooled by the aliasing scene's identical
bays: two identical images of different bays have zero overlap.

``view_overlap(i, j)``: the fraction of frame ``i``'s valid depth pixels (depth > 0) whose 3-D
point, seen from frame ``j``'s pose, lies in front of the camera, projects inside frame ``j``'s
image, and agrees with frame ``j``'s depth at that pixel (nearest pixel; ``|z - z_j| <=
max(abs_tol, rel_tol * z_j)``) -- i.e. that frame ``j`` sees too, not hidden behind something.
It is 1 for a frame against itself and 0 against a view that looks the other way; it is not
symmetric (a wide view overlaps a close-up of part of it less than the close-up overlaps it).

Conventions: poses camera-to-world ``[4,4]`` (OpenCV axes: x right, y down, z forward),
z-depth in metres ``[H,W]`` (0 = none), intrinsics ``[3,3]`` with integer pixel coordinates at
pixel centres.

Typical use::

    seq = SyntheticSequence(seed=0, laps=2, noise="kinect")
    truth = SequenceTruth(seq)                      # exact depth at <= 80 px wide, cached
    truth.view_overlap(10, 10 + seq.frames_per_lap) # 1.0: the same pose one lap later
    truth.true_revisits(min_overlap=0.3, min_frame_gap=100)   # [(i, j, overlap), ...], i < j
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from slam3r_app.errors import SourceError

#: Overlap test defaults: depth agreement within 3 % or 2 cm, whichever is larger.
REL_TOL = 0.03
ABS_TOL = 0.02


def _unproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[M,3]`` world points of the pixels with depth > 0 (row-major order)."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    pc = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=1)
    return pc @ c2w[:3, :3].T + c2w[:3, 3]


def _consistent(points: np.ndarray, w2c: np.ndarray, K: np.ndarray, depths: np.ndarray, rel_tol: float,
                abs_tol: float) -> np.ndarray:
    """``[N]`` fraction of ``points`` (``[M,3]`` world) each of ``N`` views sees with consistent depth.

    ``w2c``: ``[N,4,4]`` world-to-camera; ``K``: ``[3,3]`` shared; ``depths``: ``[N,h,w]``.
    """
    n, h, w = depths.shape
    if len(points) == 0:
        return np.zeros(n)
    pc = np.einsum("nij,mj->nmi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    z = pc[..., 2]
    front = z > 1e-6
    zs = np.where(front, z, 1.0)
    u = np.rint(K[0, 0] * pc[..., 0] / zs + K[0, 2])
    v = np.rint(K[1, 1] * pc[..., 1] / zs + K[1, 2])
    inside = front & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    ui = np.clip(u, 0, w - 1).astype(np.int64)
    vi = np.clip(v, 0, h - 1).astype(np.int64)
    zj = depths[np.arange(n)[:, None], vi, ui].astype(np.float64)
    ok = inside & (zj > 0) & (np.abs(z - zj) <= np.maximum(abs_tol, rel_tol * zj))
    return ok.sum(axis=1) / float(len(points))


def depth_overlap(depth_i: np.ndarray, pose_i: np.ndarray, depth_j: np.ndarray, pose_j: np.ndarray,
                  K_i: np.ndarray, K_j: Optional[np.ndarray] = None, rel_tol: float = REL_TOL,
                  abs_tol: float = ABS_TOL) -> float:
    """Fraction of ``depth_i``'s valid pixels that view ``j`` sees with consistent depth (module docstring).

    Args:
        depth_i, depth_j: ``[H,W]`` z-depth, metres (0 = none); the sizes may differ.
        pose_i, pose_j: ``[4,4]`` camera-to-world.
        K_i, K_j: ``[3,3]`` intrinsics (``K_j`` defaults to ``K_i``).
        rel_tol, abs_tol: depth agreement tolerance, relative and metres.

    Returns:
        A fraction in [0, 1]; 0 when frame ``i`` has no valid pixel.
    """
    K_i = np.asarray(K_i, dtype=np.float64)
    K_j = K_i if K_j is None else np.asarray(K_j, dtype=np.float64)
    pts = _unproject(np.asarray(depth_i), K_i, np.asarray(pose_i, dtype=np.float64))
    w2c = np.linalg.inv(np.asarray(pose_j, dtype=np.float64))[None]
    return float(_consistent(pts, w2c, K_j, np.asarray(depth_j)[None], rel_tol, abs_tol)[0])


def scaled_intrinsics(K: np.ndarray, width: int, height: int, new_width: int, new_height: int) -> np.ndarray:
    """``K`` for the same camera rendered at ``new_width x new_height`` (pixel centres stay pixel centres)."""
    sx, sy = new_width / float(width), new_height / float(height)
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


class SequenceTruth:
    """The overlap oracle of a :class:`~slam3r_datasets.synthetic.SyntheticSequence`.

    Renders each frame's exact depth (no sensor noise; moving objects at the frame's time) at a
    reduced size (``max_width`` pixels wide, aspect kept) on first use and caches it.

    Args:
        sequence: the sequence (its scene, poses, intrinsics and timestamps).
        max_width: oracle image width in pixels (the sequence's own size when smaller).
        rel_tol, abs_tol: depth agreement tolerance (relative; metres).
    """

    def __init__(self, sequence, max_width: int = 80, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> None:
        if max_width < 8:
            raise SourceError(f"synthetic truth: max_width must be >= 8 pixels, got {max_width}")
        self.sequence = sequence
        self.width, self.height = self._size(min(int(max_width), sequence.width))
        self.K = self.intrinsics(self.width)
        self.rel_tol, self.abs_tol = float(rel_tol), float(abs_tol)
        self._depth: dict[tuple[int, int], np.ndarray] = {}
        self._poses = sequence.poses()

    def __len__(self) -> int:
        return len(self._poses)

    def pose(self, i: int) -> np.ndarray:
        return self._poses[self._check(i)]

    def _check(self, i: int) -> int:
        if not 0 <= int(i) < len(self._poses):
            raise IndexError(f"synthetic truth: frame {i} out of range (the sequence has {len(self._poses)} frames)")
        return int(i)

    def _size(self, width: int) -> tuple[int, int]:
        seq = self.sequence
        return int(width), max(2, int(round(seq.height * int(width) / seq.width)))

    def intrinsics(self, width: Optional[int] = None) -> np.ndarray:
        """``[3,3]`` intrinsics of the oracle's depth (``width`` pixels wide; default the oracle size)."""
        w, h = self._size(self.width if width is None else width)
        return scaled_intrinsics(self.sequence.K, self.sequence.width, self.sequence.height, w, h)

    def depth(self, i: int, width: Optional[int] = None) -> np.ndarray:
        """Exact z-depth of frame ``i`` (``[h,w]`` metres) at the oracle size, or ``width`` pixels wide."""
        i = self._check(i)
        w, h = self._size(self.width if width is None else width)
        if (i, w) not in self._depth:
            _, d = self.sequence.scene.render(self._poses[i], self.intrinsics(w), w, h,
                                              time=self.sequence.timestamp(i))
            self._depth[(i, w)] = d
        return self._depth[(i, w)]

    def view_overlap(self, i: int, j: int) -> float:
        """Fraction of frame ``i``'s valid depth pixels that frame ``j`` sees with consistent depth."""
        return depth_overlap(self.depth(i), self.pose(i), self.depth(j), self.pose(j), self.K,
                             rel_tol=self.rel_tol, abs_tol=self.abs_tol)

    def overlaps_with(self, j: int, frames: Sequence[int], width: Optional[int] = None) -> np.ndarray:
        """``[len(frames)]``: ``view_overlap(j, i)`` for every ``i`` in ``frames`` (vectorised)."""
        frames = [self._check(i) for i in frames]
        if not frames:
            return np.zeros(0)
        K = self.intrinsics(width)
        pts = _unproject(self.depth(j, width), K, self.pose(j))
        w2c = np.linalg.inv(self._poses[frames])
        depths = np.stack([self.depth(i, width) for i in frames])
        return _consistent(pts, w2c, K, depths, self.rel_tol, self.abs_tol)

    def true_revisits(self, min_overlap: float = 0.3, min_frame_gap: int = 30, step: int = 1,
                      symmetric: bool = False) -> list[tuple[int, int, float]]:
        """Frame pairs that really see the same place.

        Args:
            min_overlap: a pair counts when ``view_overlap(j, i)`` (the later frame's pixels seen by the
                earlier frame) is at least this.
            min_frame_gap: only pairs with ``j - i >= min_frame_gap`` (what a loop detector looks for).
            step: consider every ``step``-th frame only (for speed on long sequences).
            symmetric: require ``view_overlap(i, j) >= min_overlap`` too.

        Returns:
            ``[(i, j, overlap), ...]`` with ``i < j``, sorted by ``j`` then ``i``; ``overlap`` = ``view_overlap(j, i)``
            (the smaller of the two directions when ``symmetric``).

        Pairs are first screened at 16 pixels wide (a pair whose coarse overlap is below
        ``min_overlap - 0.2`` is dropped), then measured at the oracle size.
        """
        if not 0 < min_overlap <= 1:
            raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
        if min_frame_gap < 1 or step < 1:
            raise ValueError(f"min_frame_gap and step must be >= 1, got {min_frame_gap}, {step}")
        frames = list(range(0, len(self), int(step)))
        out: list[tuple[int, int, float]] = []
        coarse_w = min(16, self.width)
        for j in frames:
            earlier = [i for i in frames if i <= j - min_frame_gap]
            if not earlier:
                continue
            coarse = self.overlaps_with(j, earlier, width=coarse_w)
            cand = [i for i, c in zip(earlier, coarse) if c >= min_overlap - 0.2]
            if not cand:
                continue
            fine = self.overlaps_with(j, cand)
            for i, ov in zip(cand, fine):
                if ov < min_overlap:
                    continue
                if symmetric:
                    back = self.view_overlap(i, j)
                    if back < min_overlap:
                        continue
                    ov = min(ov, back)
                out.append((i, j, float(ov)))
        return out
