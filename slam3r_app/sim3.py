"""Small Sim(3) / SE(3) algebra on 4x4 matrices (numpy, float64).

A similarity ``S = [[s R, t], [0, 1]]`` maps a point ``x`` to ``s R x + t``
(``s > 0``, ``R`` a rotation). Rigid transforms are the special case ``s = 1``.
Camera-to-world poses in slam3r are rigid; a keyframe's *transform* in the
trajectory store may carry a scale once a monocular (Sim(3)) correction was
applied: it maps the keyframe's camera-frame geometry, in the units it was
recorded in, to the current world.

Every function accepts a single ``[4, 4]`` matrix or a stack ``[..., 4, 4]``.
"""
from __future__ import annotations

import numpy as np


def make_sim3(R: np.ndarray, t: np.ndarray, s: float = 1.0) -> np.ndarray:
    """``[4, 4]`` similarity from a rotation ``R [3, 3]``, translation ``t [3]`` and scale ``s > 0``."""
    if not s > 0:
        raise ValueError(f"Sim(3) scale must be > 0, got {s}")
    S = np.eye(4)
    S[:3, :3] = float(s) * np.asarray(R, dtype=np.float64)
    S[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return S


def sim3_scale(S: np.ndarray) -> np.ndarray:
    """The scale ``s`` of ``[..., 4, 4]`` similarities (cube root of ``det(sR)``); a float for one matrix."""
    S = np.asarray(S, dtype=np.float64)
    s = np.cbrt(np.linalg.det(S[..., :3, :3]))
    return float(s) if np.ndim(s) == 0 else s


def sim3_inverse(S: np.ndarray) -> np.ndarray:
    """Inverse of ``[..., 4, 4]`` similarities: ``[[R^T / s, -R^T t / s], [0, 1]]``."""
    S = np.asarray(S, dtype=np.float64)
    s = np.cbrt(np.linalg.det(S[..., :3, :3]))[..., None, None]
    A = S[..., :3, :3]
    Ainv = np.swapaxes(A, -1, -2) / (s * s)  # (sR)^-1 = R^T / s
    out = np.zeros_like(S)
    out[..., :3, :3] = Ainv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Ainv, S[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def strip_scale(S: np.ndarray) -> np.ndarray:
    """The rigid part ``[[R, t], [0, 1]]`` of ``[..., 4, 4]`` similarities (the camera pose they place).

    The rotation is re-orthonormalised (SVD), so accumulated round-off never leaves
    a pose that fails :func:`slam3r_app.trajectory.check_poses`.
    """
    S = np.asarray(S, dtype=np.float64)
    out = np.array(S, copy=True)
    U, _, Vt = np.linalg.svd(S[..., :3, :3])
    R = U @ Vt
    neg = np.linalg.det(R) < 0
    if np.any(neg):
        U = U.copy()
        U[..., :, -1] = np.where(neg[..., None], -U[..., :, -1], U[..., :, -1])
        R = U @ Vt
    out[..., :3, :3] = R
    out[..., 3, :] = (0.0, 0.0, 0.0, 1.0)
    return out


def transform_points(S: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply one ``[4, 4]`` similarity to points ``[..., 3]`` (same dtype as ``points``)."""
    S = np.asarray(S, dtype=np.float64)
    p = np.asarray(points)
    flat = p.reshape(-1, 3).astype(np.float64, copy=False)
    out = flat @ S[:3, :3].T + S[:3, 3]
    return out.reshape(p.shape).astype(p.dtype if p.dtype.kind == "f" else np.float64, copy=False)
