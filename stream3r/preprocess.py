"""Image preprocessing equivalent to the reference ``load_and_preprocess_images``, with geometry.

Modes (``size`` = 518 by default, ``p`` = patch size 14):

* ``"crop"``: resize to width ``size`` and height ``round(h * size / w / p) * p`` (PIL bicubic),
  then, if the height exceeds ``size``, keep the central ``size`` rows (top offset
  ``(new_h - size) // 2``).
* ``"pad"``: resize so that the longer side is ``size`` (the other ``round(... / p) * p``), then
  pad to ``size x size`` with white (1.0), ``pad // 2`` before and the rest after.

Pixels are converted like torchvision's ``ToTensor`` (uint8 / 255, float32, ``[3, H, W]``).
RGBA images are composited on white first; other modes are converted to RGB by PIL.

:class:`ImageGeometry` records the resize and crop/pad so that model-pixel quantities
(intrinsics, dense maps) can be mapped back to the source image.  Pixel convention: integer
coordinates are pixel centres in both images; a source pixel ``u`` and a model pixel ``x``
are related by ``u = (x + offset_x + 0.5) / scale_x - 0.5`` (same for y), where
``scale = resized / source`` size and ``offset`` is the crop start (or minus the padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

ImageLike = Union[str, Path, "PIL.Image.Image", np.ndarray]  # noqa: F821


@dataclass(frozen=True)
class ImageGeometry:
    """How a source image became the model input.

    Attributes:
        source_hw: (H, W) of the source image.
        resized_hw: (H, W) after the bicubic resize.
        model_hw: (H, W) of the model input (after crop / pad).
        offset_xy: model pixel (x, y) is resized pixel (x + ox, y + oy): the crop start, or
            minus the padding before the image.
        mode: "crop" or "pad".
    """

    source_hw: Tuple[int, int]
    resized_hw: Tuple[int, int]
    model_hw: Tuple[int, int]
    offset_xy: Tuple[int, int]
    mode: str

    @property
    def scale_xy(self) -> Tuple[float, float]:
        """(resized W / source W, resized H / source H)."""
        return self.resized_hw[1] / self.source_hw[1], self.resized_hw[0] / self.source_hw[0]

    # -------------------------------------------------------------- points
    def model_to_source_xy(self, xy: Any) -> np.ndarray:
        """Model pixel coordinates ``[..., 2]`` (x, y) -> source pixel coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        s = np.array(self.scale_xy)
        o = np.array(self.offset_xy, dtype=np.float64)
        return (xy + o + 0.5) / s - 0.5

    def source_to_model_xy(self, uv: Any) -> np.ndarray:
        """Source pixel coordinates ``[..., 2]`` -> model pixel coordinates."""
        uv = np.asarray(uv, dtype=np.float64)
        s = np.array(self.scale_xy)
        o = np.array(self.offset_xy, dtype=np.float64)
        return (uv + 0.5) * s - 0.5 - o

    # -------------------------------------------------------------- intrinsics
    def intrinsics_to_source(self, K: Any) -> np.ndarray:
        """Intrinsics ``[..., 3, 3]`` in model pixels -> in source pixels (float64)."""
        K = np.array(K, dtype=np.float64)
        sx, sy = self.scale_xy
        ox, oy = self.offset_xy
        out = K.copy()
        out[..., 0, 0] = K[..., 0, 0] / sx
        out[..., 0, 1] = K[..., 0, 1] / sx
        out[..., 1, 1] = K[..., 1, 1] / sy
        out[..., 0, 2] = (K[..., 0, 2] + ox + 0.5) / sx - 0.5
        out[..., 1, 2] = (K[..., 1, 2] + oy + 0.5) / sy - 0.5
        return out

    def intrinsics_to_model(self, K: Any) -> np.ndarray:
        """Intrinsics ``[..., 3, 3]`` in source pixels -> in model pixels (float64)."""
        K = np.array(K, dtype=np.float64)
        sx, sy = self.scale_xy
        ox, oy = self.offset_xy
        out = K.copy()
        out[..., 0, 0] = K[..., 0, 0] * sx
        out[..., 0, 1] = K[..., 0, 1] * sx
        out[..., 1, 1] = K[..., 1, 1] * sy
        out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5 - ox
        out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5 - oy
        return out

    # -------------------------------------------------------------- dense maps
    def source_index_maps(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Nearest model pixel of every source row / column: (rows [H0], cols [W0], row_ok, col_ok).

        ``row_ok`` / ``col_ok`` are False where the source pixel falls outside the model
        input (cropped away)."""
        H0, W0 = self.source_hw
        H, W = self.model_hw
        sx, sy = self.scale_xy
        ox, oy = self.offset_xy
        xs = np.floor((np.arange(W0) + 0.5) * sx - ox).astype(np.int64)  # model pixel containing the centre
        ys = np.floor((np.arange(H0) + 0.5) * sy - oy).astype(np.int64)
        col_ok = (xs >= 0) & (xs < W)
        row_ok = (ys >= 0) & (ys < H)
        return np.clip(ys, 0, H - 1), np.clip(xs, 0, W - 1), row_ok, col_ok

    def map_to_source(self, values: Any, fill: float = 0.0) -> np.ndarray:
        """Resample a model-resolution map ``[H, W, ...]`` to the source grid ``[H0, W0, ...]``
        (nearest model pixel; ``fill`` where the source pixel was cropped away)."""
        values = np.asarray(values)
        rows, cols, row_ok, col_ok = self.source_index_maps()
        out = values.take(rows, axis=0).take(cols, axis=1)  # = values[rows[:, None], cols[None, :]], ~3x faster
        ok = row_ok[:, None] & col_ok[None, :]
        if not ok.all():
            out = out.copy() if out.dtype.kind == "f" else out.astype(np.float32)
            out[~ok] = fill
        return out


def _to_pil(image: Any) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    if isinstance(image, (str, Path)):
        img = Image.open(image)
        img.load()
        return img
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        raise ValueError("preprocess_image takes paths, PIL images or uint8 numpy arrays [H, W, 3]; for a uint8 "
                         "tensor pass tensor.cpu().numpy() (channels last)")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (0-255), got dtype {image.dtype}")
        if image.ndim == 2:
            return Image.fromarray(image, mode="L")
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return Image.fromarray(np.ascontiguousarray(image), mode="RGB" if image.shape[2] == 3 else "RGBA")
        raise ValueError(f"image arrays must be [H, W], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    raise ValueError(f"unsupported image type {type(image).__name__} (path, PIL image or uint8 array)")


def target_size(width: int, height: int, mode: str = "crop", size: int = 518, patch_size: int = 14) -> Tuple[int, int]:
    """(new_w, new_h) of the resize step."""
    if mode == "pad" and height > width:
        new_h = size
        new_w = round(width * (new_h / height) / patch_size) * patch_size
    else:  # crop, or pad of a landscape / square image
        new_w = size
        new_h = round(height * (new_w / width) / patch_size) * patch_size
    return new_w, new_h


def preprocess_image(image: ImageLike, mode: str = "crop", size: int = 518, patch_size: int = 14) -> Tuple[Tensor, ImageGeometry]:
    """One image -> (``[3, H, W]`` float32 tensor in [0, 1], :class:`ImageGeometry`).

    ``image``: a file path, a PIL image, or a uint8 array ``[H, W, 3]`` (RGB), ``[H, W, 4]``
    (RGBA) or ``[H, W]`` (grey).  See the module docstring for the modes.
    """
    from PIL import Image

    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    if size < patch_size or size % patch_size:
        raise ValueError(f"size must be a positive multiple of {patch_size}, got {size}")
    img = _to_pil(image)
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    width, height = img.size
    new_w, new_h = target_size(width, height, mode, size, patch_size)
    if new_w < patch_size or new_h < patch_size:
        raise ValueError(f"image {width}x{height} is too elongated: it would be resized to {new_w}x{new_h}")
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    ox = oy = 0
    if mode == "crop":
        if new_h > size:
            oy = (new_h - size) // 2
            x = x[:, oy : oy + size, :]
    else:
        hp, wp = size - x.shape[1], size - x.shape[2]
        if hp > 0 or wp > 0:
            top, left = hp // 2, wp // 2
            x = torch.nn.functional.pad(x, (left, wp - left, top, hp - top), mode="constant", value=1.0)
            ox, oy = -left, -top
    geom = ImageGeometry((height, width), (new_h, new_w), (int(x.shape[1]), int(x.shape[2])), (ox, oy), mode)
    return x.contiguous(), geom


def load_and_preprocess_images(images: Sequence[ImageLike], mode: str = "crop", size: int = 518, patch_size: int = 14,
                               return_geometry: bool = False):
    """Several images -> ``[N, 3, H, W]`` (and, with ``return_geometry``, their geometries).

    Like the reference: images of different final sizes are padded with white (centred) to the
    largest height and width (their geometries' offsets include that padding).
    """
    if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3):
        images = [images]
    if len(images) == 0:
        raise ValueError("at least 1 image is required")
    out = [preprocess_image(im, mode, size, patch_size) for im in images]
    tensors: List[Tensor] = [t for t, _ in out]
    geoms: List[ImageGeometry] = [g for _, g in out]
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        mh = max(s[0] for s in shapes)
        mw = max(s[1] for s in shapes)
        for i, (t, g) in enumerate(zip(tensors, geoms)):
            hp, wp = mh - t.shape[1], mw - t.shape[2]
            if hp > 0 or wp > 0:
                top, left = hp // 2, wp // 2
                tensors[i] = torch.nn.functional.pad(t, (left, wp - left, top, hp - top), mode="constant", value=1.0)
                geoms[i] = ImageGeometry(g.source_hw, g.resized_hw, (mh, mw), (g.offset_xy[0] - left, g.offset_xy[1] - top),
                                         g.mode)
    batch = torch.stack(tensors)
    return (batch, geoms) if return_geometry else batch
