"""Trajectory math and file formats (core, no plugin or evo dependency).

Poses are ``[N, 4, 4]`` float64 camera-to-world matrices. TUM files hold one pose
per line, ``timestamp tx ty tz qx qy qz qw`` (quaternion scalar-last, as the TUM
benchmark and scipy use; evo stores w x y z internally).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from .errors import EvaluationError, SourceError
from .io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .trajectory_store import TrajectoryStore


# ----------------------------------------------------------------------------- conversions
def pose_from_tq(t: Sequence[float], q_xyzw: Sequence[float]) -> np.ndarray:
    """4x4 camera-to-world matrix from a translation and a unit quaternion (x, y, z, w)."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(np.asarray(q_xyzw, dtype=np.float64)).as_matrix()
    T[:3, 3] = np.asarray(t, dtype=np.float64)
    return T


def poses_to_tq(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``[N,4,4]`` poses into translations ``[N,3]`` and quaternions ``[N,4]`` (x y z w, w >= 0)."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    q = Rotation.from_matrix(poses[:, :3, :3]).as_quat()
    q[q[:, 3] < 0] *= -1.0
    return poses[:, :3, 3].copy(), q


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of one or many rigid transforms (``[...,4,4]``)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of ``[...,3,3]`` rotation matrices."""
    tr = np.trace(R, axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def check_poses(poses: np.ndarray, what: str, tol: float = 1e-3) -> np.ndarray:
    """Validate ``[N,4,4]`` poses: finite, orthonormal rotation with det +1, last row 0 0 0 1.

    Raises :class:`EvaluationError` naming ``what`` and the first bad index.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise EvaluationError(f"{what}: expected poses of shape [N,4,4], got {list(poses.shape)}")
    bad = ~np.isfinite(poses).all(axis=(1, 2))
    if bad.any():
        raise EvaluationError(f"{what}: pose {int(np.argmax(bad))} contains NaN or inf")
    R = poses[:, :3, :3]
    err = np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bad = (err > tol) | (det < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise EvaluationError(
            f"{what}: pose {i} has a rotation that is not orthonormal "
            f"(|R^T R - I| = {err[i]:.2e}, det = {det[i]:.3f})"
        )
    return poses


# ----------------------------------------------------------------------------- TUM files
def read_tum(path: str | os.PathLike, what: str = "trajectory") -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory file.

    Lines starting with ``#`` and blank lines are ignored; each other line must hold
    8 numbers ``timestamp tx ty tz qx qy qz qw`` (commas are accepted as separators).

    Returns:
        ``(timestamps [N] float64, poses [N,4,4] float64 camera-to-world)``.

    Raises:
        SourceError: the file is missing or a line is malformed (file and line number named).
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{what} file not found: {path}")
    stamps: list[float] = []
    rows: list[list[float]] = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.replace(",", " ").split()
            if len(parts) != 8:
                raise SourceError(
                    f"{path}:{lineno}: expected 8 values 'timestamp tx ty tz qx qy qz qw', "
                    f"got {len(parts)}: {s[:80]!r}"
                )
            try:
                vals = [float(p) for p in parts]
            except ValueError:
                raise SourceError(f"{path}:{lineno}: not a number in {s[:80]!r}") from None
            if not np.all(np.isfinite(vals)):
                raise SourceError(f"{path}:{lineno}: NaN or inf in {s[:80]!r}")
            q = np.asarray(vals[4:8])
            if np.linalg.norm(q) < 1e-8:
                raise SourceError(f"{path}:{lineno}: zero quaternion")
            stamps.append(vals[0])
            rows.append(vals[1:])
    if not rows:
        return np.zeros(0), np.zeros((0, 4, 4))
    arr = np.asarray(rows)
    poses = np.tile(np.eye(4), (len(arr), 1, 1))
    poses[:, :3, :3] = Rotation.from_quat(arr[:, 3:7]).as_matrix()
    poses[:, :3, 3] = arr[:, :3]
    return np.asarray(stamps, dtype=np.float64), poses


def format_tum(timestamps: Iterable[float], poses: np.ndarray) -> str:
    """TUM text for ``poses`` (``[N,4,4]``), full float precision."""
    t, q = poses_to_tq(np.asarray(poses))
    lines = []
    for ts, ti, qi in zip(timestamps, t, q):
        lines.append(
            f"{ts:.6f} {ti[0]:.9f} {ti[1]:.9f} {ti[2]:.9f} {qi[0]:.9f} {qi[1]:.9f} {qi[2]:.9f} {qi[3]:.9f}"
        )
    return "\n".join(lines) + ("\n" if lines else "")


def write_tum(path: str | os.PathLike, timestamps: Iterable[float], poses: np.ndarray, header: Optional[str] = None) -> Path:
    """Write a TUM trajectory atomically."""
    text = (f"# {header}\n" if header else "") + "# timestamp tx ty tz qx qy qz qw\n" + format_tum(timestamps, poses)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_kitti(path: str | os.PathLike, poses: np.ndarray) -> Path:
    """KITTI odometry format: the top 3x4 of each pose, row-major, 12 numbers a line."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    text = "".join(" ".join(f"{v:.9e}" for v in P[:3, :4].reshape(-1)) + "\n" for P in poses)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_matrices(path: str | os.PathLike, timestamps: Iterable[float], poses: np.ndarray,
                   header: Optional[str] = None) -> Path:
    """One pose a line: ``timestamp`` then the 16 entries of the 4x4 matrix, row-major."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    text = (f"# {header}\n" if header else "") + "# timestamp m00 m01 m02 m03 m10 ... m33 (camera-to-world, row-major)\n"
    text += "".join(
        f"{ts:.6f} " + " ".join(f"{v:.9e}" for v in P.reshape(-1)) + "\n" for ts, P in zip(timestamps, poses)
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- association
def associate(
    first: Sequence[float], second: Sequence[float], max_difference: float = 0.02, offset: float = 0.0
) -> list[tuple[int, int]]:
    """Match two timestamp lists as the TUM ``associate.py`` tool does.

    All pairs with ``|a - (b + offset)| < max_difference`` are candidates; the
    closest pairs are taken greedily, each timestamp at most once.

    Returns:
        ``[(i, j), ...]`` index pairs into ``first`` and ``second``, sorted by ``i``.
    """
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64) + offset
    if len(a) == 0 or len(b) == 0:
        return []
    order = np.argsort(b)
    bs = b[order]
    cands: list[tuple[float, int, int]] = []
    lo = np.searchsorted(bs, a - max_difference, side="left")
    hi = np.searchsorted(bs, a + max_difference, side="right")
    for i in range(len(a)):
        for k in range(lo[i], hi[i]):
            d = abs(a[i] - bs[k])
            if d < max_difference:
                cands.append((d, i, int(order[k])))
    cands.sort()
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs = []
    for _, i, j in cands:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j))
    pairs.sort()
    return pairs


# ----------------------------------------------------------------------------- the run's trajectory
TRAJECTORY_FILE = "trajectory.txt"
SCALE_FILE = "scale.json"


def write_world_trajectory(folder: str | os.PathLike, store: "TrajectoryStore") -> dict[str, str]:
    """The run's ``trajectory.txt`` and ``scale.json``, from the trajectory store; the core's files.

    ``trajectory.txt``: TUM, every frame, current (corrected) poses in the world's metric scale where
    it is known (``store.metric_poses()``); its header says which scale, for people. ``scale.json``:
    the same for programs (``{"scale", "metric", "provenance", "info", "revision", "frames"}``): the
    offline tools read this file, never the header.
    """
    from .io import write_json

    folder = Path(folder)
    scale = store.world_scale
    n = len(store)
    header = (f"slam3r estimated trajectory, {n} frames, camera-to-world (OpenCV axes), revision {store.revision}; "
              f"{scale.note()}")
    traj = write_tum(folder / TRAJECTORY_FILE, store.timestamps(), store.metric_poses(), header=header)
    info = write_json(folder / SCALE_FILE, {**scale.to_json(), "revision": store.revision, "frames": n,
                                            "trajectory": TRAJECTORY_FILE})
    return {"trajectory": str(traj), "scale": str(info)}


def read_scale_file(folder: str | os.PathLike) -> Optional[dict]:
    """``scale.json`` of a run folder (see :func:`write_world_trajectory`), or None if there is none."""
    import json

    path = Path(folder) / SCALE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: not a readable scale file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metric"), bool) or not (float(data.get("scale", 0)) > 0):
        raise SourceError(f"{path}: expected {{\"scale\": > 0, \"metric\": true/false, ...}}, got {data!r}")
    return data
