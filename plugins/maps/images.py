"""Images for display: a float map in false colour, a thumbnail (the live viewer and the rerun recorder).

Conventions: images ``[H, W, 3]`` uint8 RGB; float maps ``[H, W]`` (depth, confidence).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def colorize(values: Optional[np.ndarray], colormap: str = "turbo", lo_q: float = 2.0, hi_q: float = 98.0,
             valid: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """A float map -> ``[H, W, 3]`` uint8 RGB with an OpenCV colour map (invalid pixels black)."""
    if values is None:
        return None
    import cv2

    v = np.asarray(values, dtype=np.float32)
    ok = np.isfinite(v) if valid is None else (np.asarray(valid) & np.isfinite(v))
    out = np.zeros(v.shape + (3,), np.uint8)
    if not ok.any():
        return out
    lo, hi = np.percentile(v[ok], [lo_q, hi_q])
    scaled = np.clip((v - lo) / max(float(hi - lo), 1e-12), 0, 1)
    scaled = np.where(ok, scaled, 0)
    cmap = {"turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS}.get(colormap, cv2.COLORMAP_TURBO)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cmap)
    out = bgr[..., ::-1].copy()
    out[~ok] = 0
    return out


def thumbnail(img: Optional[np.ndarray], max_size: int, nearest: bool = False) -> Optional[np.ndarray]:
    """Shrink ``img`` so that its longest side is at most ``max_size`` pixels (``nearest``: never mix values)."""
    if img is None:
        return None
    import cv2

    h, w = img.shape[:2]
    s = max(h, w)
    if s <= max_size:
        return np.ascontiguousarray(img)
    f = max_size / s
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interp)
