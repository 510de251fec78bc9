"""Camera geometry: pose encodings, extrinsics / intrinsics, depth unprojection.

Conventions:

* Extrinsics are **world-to-camera** ``[R | t]`` (``[..., 3, 4]``), OpenCV camera axes (x right,
  y down, z forward); STream3R's world frame is the first frame's camera (its extrinsics are
  ~identity).  ``cam_to_world`` is the inverse, ``[..., 4, 4]``.
* Pose encoding ``[..., 9]`` ("absT_quaR_FoV"): ``t`` (3), quaternion of ``R`` in **xyzw**
  order (scalar last, w >= 0), ``fov_h``, ``fov_w`` (radians).
* Intrinsics from the encoding: ``fy = (H / 2) / tan(fov_h / 2)``, ``fx = (W / 2) / tan(fov_w / 2)``,
  principal point ``(W / 2, H / 2)``; pixel ``(u, v)`` with integer coordinates at pixel
  centres: ``u = fx * X / Z + cx``.

All functions take torch tensors (any float dtype/device) or numpy arrays (returned as numpy).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor


def _numpy_io(fn):
    """Let a torch function accept numpy arrays (results converted back to numpy)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_np = any(isinstance(a, np.ndarray) for a in list(args) + list(kwargs.values()))
        args = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args]
        kwargs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        out = fn(*args, **kwargs)
        if not was_np:
            return out
        if isinstance(out, tuple):
            return tuple(o.numpy() if isinstance(o, Tensor) else o for o in out)
        return out.numpy()

    return wrapper


# ------------------------------------------------------------------------------------ rotations
@_numpy_io
def quat_to_rotmat(quat: Tensor) -> Tensor:
    """Quaternions ``[..., 4]`` (xyzw, need not be unit) -> rotation matrices ``[..., 3, 3]``."""
    x, y, z, w = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1)
    m = torch.stack(
        [
            1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
            s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
            s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(quat.shape[:-1] + (3, 3))


@_numpy_io
def rotmat_to_quat(R: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` (xyzw, w >= 0).

    Uses the best-conditioned of the four closed-form candidates (largest ``|q_i|``).
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must be [..., 3, 3], got {tuple(R.shape)}")
    m = R.reshape(R.shape[:-2] + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    # 4 * q_i^2 for i = w, x, y, z
    q2 = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    qa = torch.sqrt(torch.clamp(q2, min=0))  # 2|q_i|
    # candidate quaternions (w, x, y, z) scaled by 2 q_i for each choice of i
    cands = torch.stack(
        [
            torch.stack([qa[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, qa[..., 1] ** 2, m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, qa[..., 2] ** 2, m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, qa[..., 3] ** 2], -1),
        ],
        -2,
    )
    cands = cands / (2.0 * torch.clamp(qa, min=0.1))[..., None]
    best = qa.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = q[..., [1, 2, 3, 0]]  # -> xyzw
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., 3:4] < 0, -q, q)


# ------------------------------------------------------------------------------------ encodings
@_numpy_io
def pose_encoding_to_extri_intri(pose_enc: Tensor, image_hw: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """Pose encoding ``[..., 9]`` -> (extrinsics ``[..., 3, 4]`` world-to-camera, intrinsics ``[..., 3, 3]``)
    for an image of ``image_hw = (H, W)`` pixels (the model input size)."""
    t = pose_enc[..., :3]
    R = quat_to_rotmat(pose_enc[..., 3:7])
    extrinsics = torch.cat([R, t[..., None]], dim=-1)
    H, W = image_hw
    fy = (H / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    fx = (W / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    K = torch.zeros(pose_enc.shape[:-1] + (3, 3), dtype=pose_enc.dtype, device=pose_enc.device)
    K[..., 0, 0] = fx
    K[..., 1, 1] = fy
    K[..., 0, 2] = W / 2.0
    K[..., 1, 2] = H / 2.0
    K[..., 2, 2] = 1.0
    return extrinsics, K


@_numpy_io
def extri_intri_to_pose_encoding(extrinsics: Tensor, intrinsics: Tensor, image_hw: Tuple[int, int]) -> Tensor:
    """(extrinsics ``[..., 3, 4]`` world-to-camera, intrinsics ``[..., 3, 3]``) -> pose encoding ``[..., 9]``."""
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3]
    H, W = image_hw
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    return torch.cat([t, rotmat_to_quat(R), fov_h[..., None], fov_w[..., None]], dim=-1)


@_numpy_io
def se3_inverse(T: Tensor) -> Tensor:
    """Inverse of rigid transforms ``[..., 3, 4]`` or ``[..., 4, 4]`` -> ``[..., 4, 4]``."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros(T.shape[:-2] + (4, 4), dtype=T.dtype, device=T.device)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


@_numpy_io
def pose_encoding_to_cam_to_world(pose_enc: Tensor) -> Tensor:
    """Pose encoding ``[..., 9]`` -> camera-to-world ``[..., 4, 4]`` (OpenCV axes, the first frame = world)."""
    R = quat_to_rotmat(pose_enc[..., 3:7])
    return se3_inverse(torch.cat([R, pose_enc[..., :3, None]], dim=-1))


# ------------------------------------------------------------------------------------ depth
@_numpy_io
def depth_to_cam_points(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Depth ``[..., H, W]`` (or ``[..., H, W, 1]``) and intrinsics ``[..., 3, 3]`` -> camera
    points ``[..., H, W, 3]``: ``X = (u - cx) Z / fx``, ``Y = (v - cy) Z / fy``, ``Z = depth``, with
    ``u, v`` the integer pixel coordinates."""
    if depth.shape[-1] == 1 and depth.dim() >= 3:
        depth = depth[..., 0]
    H, W = depth.shape[-2:]
    K = intrinsics[..., None, None, :, :]
    v, u = torch.meshgrid(torch.arange(H, dtype=depth.dtype, device=depth.device),
                          torch.arange(W, dtype=depth.dtype, device=depth.device), indexing="ij")
    x = (u - K[..., 0, 2]) * depth / K[..., 0, 0]
    y = (v - K[..., 1, 2]) * depth / K[..., 1, 1]
    return torch.stack([x, y, depth], dim=-1)


@_numpy_io
def depth_to_world_points(depth: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> Tensor:
    """Depth ``[..., H, W(, 1)]``, world-to-camera extrinsics ``[..., 3, 4]``, intrinsics ``[..., 3, 3]``
    -> world points ``[..., H, W, 3]`` (``X_w = R^T (X_c - t)``)."""
    pc = depth_to_cam_points(depth, intrinsics)
    c2w = se3_inverse(extrinsics)
    R = c2w[..., None, None, :3, :3]
    t = c2w[..., None, None, :3, 3]
    return (R @ pc[..., None])[..., 0] + t


# ------------------------------------------------------------------------------------ predictions
DENSE_FILL = {"depth": 0.0, "depth_conf": 0.0, "world_points": float("nan"), "world_points_conf": 0.0}


@functools.lru_cache(maxsize=8)
def _source_index_tensors(geometry: Any, device: torch.device) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``geometry.source_index_maps()`` as tensors on ``device`` (rows [H0], cols [W0], and the
    [H0, W0] mask of source pixels cropped away, None when there are none), made once per
    geometry and device: a stream's frames share one geometry."""
    rows, cols, row_ok, col_ok = geometry.source_index_maps()
    outside = None
    if not (row_ok.all() and col_ok.all()):
        outside = torch.from_numpy(~(row_ok[:, None] & col_ok[None, :])).to(device)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device), outside


def dense_to_source(pred: Dict[str, Tensor], geometry: Any, index: int = -1, batch: int = 0) -> Dict[str, Tensor]:
    """One frame's dense maps resampled to the source image's grid, in torch, on their device.

    Args:
        pred: model / session outputs (dense ``[B, S, H, W, ...]``; other keys ignored).
        geometry: the frame's :class:`~stream3r.preprocess.ImageGeometry`.
        index, batch: which frame (default the last) and batch element.
    Returns:
        float32 tensors ``depth`` [H0, W0], ``depth_conf`` [H0, W0], ``world_points`` [H0, W0, 3],
        ``world_points_conf`` [H0, W0], for the heads that ran: each source pixel takes the model
        pixel containing its centre (nearest; as :meth:`ImageGeometry.map_to_source`), and pixels
        cropped away get 0 (NaN for points).  On a GPU this is a gather, and the host copy that
        follows moves only the source-resolution maps.
    """
    present = [k for k in DENSE_FILL if k in pred]
    if not present:
        return {}
    r, c, outside = _source_index_tensors(geometry, pred[present[0]].device)
    out: Dict[str, Tensor] = {}
    for k in present:
        v = pred[k][batch, index].detach()
        if k == "depth" and v.ndim == 3:
            v = v[..., 0]
        v = v.float().index_select(0, r).index_select(1, c)
        if outside is not None:
            v = v.masked_fill(outside[..., None] if v.ndim == 3 else outside, DENSE_FILL[k])
        out[k] = v
    return out


def frame_pose_to_source(pose_enc: Tensor, geometry: Any) -> Dict[str, np.ndarray]:
    """One frame's pose encoding ``[9]`` -> ``cam_to_world`` [4, 4] float64, ``world_to_cam``,
    ``intrinsics`` [3, 3] (source pixels), ``intrinsics_model`` (model pixels), ``pose_enc`` [9]."""
    H, W = geometry.model_hw
    pe = torch.as_tensor(pose_enc).detach().double().cpu()
    ext, K = pose_encoding_to_extri_intri(pe, (H, W))
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :] = ext
    return {
        "pose_enc": pe.numpy(),
        "world_to_cam": w2c.numpy(),
        "cam_to_world": se3_inverse(w2c).numpy(),
        "intrinsics_model": K.numpy(),
        "intrinsics": geometry.intrinsics_to_source(K.numpy()),
    }


def frame_predictions_to_source(pred: Dict[str, Tensor], geometry: Any, index: int = -1, batch: int = 0) -> Dict[str, np.ndarray]:
    """One frame's predictions -> numpy at the source image's resolution.

    Args:
        pred: model / session outputs (``pose_enc [B, S, 9]``, dense ``[B, S, H, W, ...]``).
        geometry: the frame's :class:`~stream3r.preprocess.ImageGeometry`.
        index, batch: which frame (default the last) and batch element.
    Returns:
        ``cam_to_world`` [4, 4] float64, ``world_to_cam`` [4, 4], ``intrinsics`` [3, 3] (source
        pixels), ``intrinsics_model`` [3, 3] (model pixels), ``pose_enc`` [9]; and, for the heads
        that ran, ``depth`` [H0, W0] float32 (0 where the source pixel was cropped away),
        ``depth_conf`` [H0, W0] (0 there), ``world_points`` [H0, W0, 3] (NaN there),
        ``world_points_conf`` [H0, W0] (0 there).  Dense maps use the nearest model pixel
        (:func:`dense_to_source`, computed on the predictions' device).
    """
    out: Dict[str, np.ndarray] = {}
    if "pose_enc" in pred:
        out.update(frame_pose_to_source(pred["pose_enc"][batch, index], geometry))
    for k, v in dense_to_source(pred, geometry, index, batch).items():
        out[k] = v.cpu().numpy()
    return out
