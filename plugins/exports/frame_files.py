"""Per-frame files of an export folder: colour images and depth maps, each written atomically.

* ``images/<name>.png`` (or ``.jpg``): the colour frame, 8-bit RGB.
* ``depth/<name>.png``: 16-bit single-channel depth in millimetres (``round(depth * 1000)``, clipped
  to 65535 = 65.5 m; 0 = unknown), what nerfstudio reads with its default
  ``depth_unit_scale_factor`` of 1e-3 and what ROS calls ``16UC1``.
* ``depth/<name>.npz``: ``depth`` float32 ``[H, W]`` (0 = unknown), ``confidence`` float32
  ``[H, W]`` (larger is more confident; absent when the frame has none), ``K`` float64 ``[3, 3]``
  (OpenCV convention), ``timestamp`` float64.

Depth is in the export's units: metres when the run is metric, else the run's arbitrary units (the
millimetre PNG then holds thousandths of that unit; ``depth/frames.json`` says which).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from slam3r_app.io import atomic_path

from .scene import DEPTH_DIR, IMAGES_DIR, ExportError

IMAGE_FORMATS = ("png", "jpg")
JPEG_QUALITY = 95
MAX_MM = 65535


def _encode(path: Path, img: np.ndarray, params: Optional[list[int]] = None) -> None:
    import cv2

    ok, buf = cv2.imencode(path.suffix, img, params or [])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 / uint16 image
        raise ExportError(f"cannot encode {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())
            f.flush()
            os.fsync(f.fileno())


def write_color(root: Path, name: str, rgb: np.ndarray, fmt: str = "png") -> str:
    """Write ``rgb`` (``[H, W, 3]`` uint8) as ``images/<name>.<fmt>``; returns that path relative to ``root``."""
    import cv2

    if fmt not in IMAGE_FORMATS:
        raise ExportError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    rel = f"{IMAGES_DIR}/{name}.{fmt}"
    img = np.asarray(rgb)
    if img.ndim == 2:
        bgr = img
    else:
        bgr = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == "jpg" else None
    _encode(root / rel, bgr, params)
    return rel


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """``[H, W]`` depth (metres) -> uint16 millimetres; non-finite or <= 0 -> 0, beyond 65.535 m -> 65535."""
    d = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    mm = np.zeros(d.shape, np.uint16)
    mm[ok] = np.clip(np.rint(d[ok] * 1000.0), 0, MAX_MM).astype(np.uint16)
    return mm


def write_depth(root: Path, name: str, depth: np.ndarray, K: np.ndarray, timestamp: float,
                confidence: Optional[np.ndarray] = None) -> tuple[str, str]:
    """Write ``depth/<name>.png`` (mm) and ``depth/<name>.npz``; returns both paths relative to ``root``.

    Args:
        depth: ``[H, W]`` depth in the export's units (0 or non-finite = unknown).
        K: ``[3, 3]`` intrinsics of the depth map.
        timestamp: the frame's timestamp (seconds), stored in the ``.npz``.
        confidence: ``[H, W]`` confidence, or None.
    """
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise ExportError(f"depth of frame {name}: expected an [H, W] map, got shape {list(d.shape)}")
    d = np.where(np.isfinite(d) & (d > 0), d, np.float32(0)).astype(np.float32)
    png = f"{DEPTH_DIR}/{name}.png"
    npz = f"{DEPTH_DIR}/{name}.npz"
    _encode(root / png, depth_to_mm(d))
    arrays = {"depth": d, "K": np.asarray(K, dtype=np.float64), "timestamp": np.float64(timestamp)}
    if confidence is not None:
        c = np.asarray(confidence, dtype=np.float32)
        if c.shape != d.shape:
            raise ExportError(f"confidence of frame {name} is {list(c.shape)} but its depth is {list(d.shape)}")
        arrays["confidence"] = c
    with atomic_path(root / npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return png, npz


def read_depth(root: Path, npz: str) -> dict[str, np.ndarray]:
    """The arrays of ``depth/<name>.npz`` (``depth``, ``K``, ``timestamp``, optional ``confidence``)."""
    path = root / npz
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read depth file {path}: {e}") from None


def rescale_depth(root: Path, png: str, npz: str, factor: float) -> None:
    """Multiply a written depth frame by ``factor`` (the run's scale changed after it was written)."""
    arrays = read_depth(root, npz)
    d = arrays["depth"].astype(np.float64) * float(factor)
    write_depth(root, Path(npz).stem, d.astype(np.float32), arrays["K"], float(arrays["timestamp"]),
                arrays.get("confidence"))
