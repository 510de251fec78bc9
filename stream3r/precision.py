"""Measuring a precision recipe against float32: streaming runs and error metrics.

Used by ``tests/test_stream3r_precision.py`` (CPU, small images) and
``benchmarks/precision_bench.py`` (GPU, 392x518, against the upstream code as well).

Metrics (per output, over every streamed frame; ``ref`` = the float32 run):

* relative error ``max |out - ref| / max |ref|`` of ``pose_enc`` ``[B, S, 9]``, ``depth``,
  ``depth_conf``, ``world_points``, ``world_points_conf`` (the project's usual measure);
* camera rotation error: the angle (degrees) of ``R_ref^T R_out`` with ``R`` from each frame's
  quaternion (pose_enc[..., 3:7], xyzw, normalised), mean and max over frames.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Optional, Sequence

import torch
from torch import Tensor

from .geometry import quat_to_rotmat

OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def default_dtype(device) -> torch.dtype:
    """The compute dtype of the default inference recipe on ``device``: float16 on CUDA (the mixed
    recipe of :meth:`~stream3r.model.STream3R.to_inference`: 0.11x / 0.19x upstream's bf16
    autocast pose / depth error on an H200), float32 elsewhere (exact; half matmuls are slow on
    most CPUs)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def prepare(model, device, dtype: Optional[torch.dtype] = None):
    """Move ``model`` to ``device`` in the recipe of ``dtype`` (default :func:`default_dtype`):
    float32 = exact; a half dtype = the mixed recipe of :meth:`~stream3r.model.STream3R.to_inference`
    (half linear / conv weights, attention and KV cache; float32 norms and residual stream; the
    heads mixed like the trunk, except the DPT heads in float32 with bfloat16).
    The app's frontend, the precision test and the benchmarks all prepare the model here."""
    if dtype is None:
        dtype = default_dtype(device)
    return model.to_inference(device, dtype, heads_dtype="auto", mixed=True)


def stream(model, frames: Tensor, mode: str = "causal", window_size: int = 5, autocast: Optional[torch.dtype] = None,
           heads: Optional[Sequence[str]] = None, step: int = 1, **session_kw) -> Dict[str, Tensor]:
    """Feed ``frames`` ``[S, 3, H, W]`` through a fresh :class:`~stream3r.StreamSession`, ``step``
    frames per call (1: one at a time, as the app; more: the KV cache across calls and a
    block-causal mask within one, which a CPU pays for once per call instead of once per frame),
    and return every output concatenated over frames (``[1, S, ...]``, float32, on the CPU).

    ``autocast``: run each step under ``torch.autocast(device, dtype=autocast)`` (upstream's
    half-precision recipe: float32 weights, half matmuls; our heads then run outside autocast, as
    upstream's heads run in a float32 autocast region)."""
    from .session import StreamSession

    session = StreamSession(model, mode=mode, window_size=window_size, heads=heads, **session_kw)
    device = model.aggregator.camera_token.device
    ctx = (torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext())
    outs = []
    with torch.inference_mode():
        for i in range(0, frames.shape[0], step):
            with ctx:
                o = session.forward_stream(frames[i:i + step].to(device))
            outs.append({k: v.float().cpu() for k, v in o.items()})
    session.clear()
    return {k: torch.cat([o[k] for o in outs], dim=1) for k in outs[0]}


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``max |out - ref| / max |ref|`` in float64."""
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch {tuple(out.shape)} vs {tuple(ref.shape)}")
    ref = ref.double()
    return float((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def rotation_errors_deg(pose_enc: Tensor, ref_pose_enc: Tensor) -> Tensor:
    """Per-frame angle (degrees) between the rotations of two pose encodings ``[..., 9]``."""
    Ra = quat_to_rotmat(pose_enc[..., 3:7].double())
    Rb = quat_to_rotmat(ref_pose_enc[..., 3:7].double())
    cos = ((Rb.transpose(-1, -2) @ Ra).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).reshape(-1)


def prediction_errors(out: Dict[str, Tensor], ref: Dict[str, Tensor],
                      keys: Iterable[str] = OUTPUTS) -> Dict[str, float]:
    """``{output: relative error}`` for the outputs both hold, plus ``rot_mean_deg`` / ``rot_max_deg``."""
    errs = {k: relative_error(out[k], ref[k]) for k in keys if k in out and k in ref}
    if "pose_enc" in out and "pose_enc" in ref:
        ang = rotation_errors_deg(out["pose_enc"], ref["pose_enc"])
        errs["rot_mean_deg"] = float(ang.mean())
        errs["rot_max_deg"] = float(ang.max())
    return errs


def format_table(rows: Dict[str, Dict[str, float]], keys: Sequence[str] = ("pose_enc", "depth", "world_points")) -> str:
    """A Markdown table: one row per path, relative errors and rotation error mean / max."""
    head = "| path | " + " | ".join(f"{k} rel. error" for k in keys) + " | rotation error mean / max (deg) |"
    lines = [head, "|---|" + "---|" * (len(keys) + 1)]
    for name, e in rows.items():
        cells = [f"{e[k]:.2e}" if k in e else "-" for k in keys]
        rot = f"{e['rot_mean_deg']:.3f} / {e['rot_max_deg']:.3f}" if "rot_mean_deg" in e else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rot} |")
    return "\n".join(lines)
