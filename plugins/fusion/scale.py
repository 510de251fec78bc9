"""Metric scale of an up-to-scale reconstruction from sensor depth (library, not a plugin).

STream3R predicts depth and camera translations in one common, unknown unit. With
an RGB-D source every frame gives independent evidence of that unit: the ratio
``sensor_depth / predicted_depth`` over pixels where both are valid and the
prediction is confident. Per frame the ratio is estimated robustly (median of the
log-ratios after rejecting pixels more than ``mad_k`` scaled MADs from the median:
moving people, depth holes, flying pixels); over time the per-frame values are
smoothed with a running median (of the last ``window`` frames, or all of them),
which converges to the global scale and ignores the occasional bad frame.

The fusion plugin runs the estimator and proposes the result to the core as a correction
of the world's scale; the trajectory store owns it (``context.trajectory.world_scale``) and
every other consumer (trajectory files, point-cloud map, exports, evaluation) reads it there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class FrameScale:
    """One frame's robust depth ratio."""

    scale: float
    inliers: int
    pixels: int

    @property
    def inlier_fraction(self) -> float:
        return self.inliers / self.pixels if self.pixels else 0.0


def robust_depth_ratio(
    sensor: np.ndarray,
    predicted: np.ndarray,
    mask: Optional[np.ndarray] = None,
    mad_k: float = 3.0,
    min_pixels: int = 100,
    iterations: int = 2,
) -> Optional[FrameScale]:
    """Robust ``median(sensor / predicted)`` over the pixels both know.

    Args:
        sensor, predicted: ``[H, W]`` depth maps of the same view and resolution.
        mask: extra pixels to use (e.g. confident predictions).
        mad_k: reject log-ratios further than ``mad_k`` * 1.4826 * MAD from the median.
        min_pixels: fewer usable pixels (before or after rejection) gives None.
        iterations: rounds of median / rejection.

    Returns:
        the frame's scale with its inlier count, or None when the frame says nothing.
    """
    s = np.asarray(sensor, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if s.shape != p.shape:
        raise ValueError(f"sensor depth {s.shape} and predicted depth {p.shape} differ in size")
    ok = np.isfinite(s) & np.isfinite(p) & (s > 0) & (p > 0)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    n = int(ok.sum())
    if n < min_pixels:
        return None
    logr = np.log(s[ok]) - np.log(p[ok])
    keep = np.ones(n, dtype=bool)
    for _ in range(max(1, iterations)):
        med = np.median(logr[keep])
        mad = MAD_TO_SIGMA * np.median(np.abs(logr[keep] - med))
        keep = np.abs(logr - med) <= mad_k * max(mad, 1e-4)
        if keep.sum() < min_pixels:
            return None
    return FrameScale(scale=float(np.exp(np.median(logr[keep]))), inliers=int(keep.sum()), pixels=n)


class ScaleEstimator:
    """Running robust estimate of one global scale from per-frame ratios.

    Args:
        window: running median over the last ``window`` frame estimates (None: all frames).
        mad_k, min_pixels: per-frame robust ratio settings (:func:`robust_depth_ratio`).
        min_inlier_fraction: a frame whose inliers are a smaller share of its pixels is ignored.
    """

    def __init__(self, window: Optional[int] = None, mad_k: float = 3.0, min_pixels: int = 100,
                 min_inlier_fraction: float = 0.3) -> None:
        self.window = window
        self.mad_k = mad_k
        self.min_pixels = min_pixels
        self.min_inlier_fraction = min_inlier_fraction
        self.log_scales: list[float] = []
        self.frames_used = 0
        self.frames_rejected = 0

    def update(self, sensor: np.ndarray, predicted: np.ndarray, mask: Optional[np.ndarray] = None) -> Optional[float]:
        """Add one frame; returns the smoothed scale (None while nothing was usable)."""
        fs = robust_depth_ratio(sensor, predicted, mask, mad_k=self.mad_k, min_pixels=self.min_pixels)
        if fs is None or fs.inlier_fraction < self.min_inlier_fraction:
            self.frames_rejected += 1
        else:
            self.log_scales.append(float(np.log(fs.scale)))
            self.frames_used += 1
            if self.window is not None and len(self.log_scales) > 4 * self.window:
                self.log_scales = self.log_scales[-self.window:]  # keep memory bounded
        return self.scale

    @property
    def scale(self) -> Optional[float]:
        if not self.log_scales:
            return None
        vals = self.log_scales if self.window is None else self.log_scales[-self.window:]
        return float(np.exp(np.median(vals)))

    @property
    def spread(self) -> Optional[float]:
        """Robust relative spread of the per-frame scales (1.4826 * MAD of their logs)."""
        if len(self.log_scales) < 2:
            return None
        vals = np.asarray(self.log_scales if self.window is None else self.log_scales[-self.window:])
        return float(MAD_TO_SIGMA * np.median(np.abs(vals - np.median(vals))))

    def info(self) -> dict:
        return {
            "scale": self.scale,
            "frames_used": self.frames_used,
            "frames_rejected": self.frames_rejected,
            "relative_spread": self.spread,
            "method": "running median of per-frame robust median(sensor/predicted depth)",
        }

    def reset(self) -> None:
        self.log_scales.clear()
        self.frames_used = 0
        self.frames_rejected = 0
