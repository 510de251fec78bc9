"""Image preprocessing equivalent to the reference ``load_and_preprocess_images``, with geometry.

Modes (``size`` = 518 by default, ``p`` = patch size 14):

* ``"crop"``: resize to width ``size`` and height ``round(h * size / w / p) * p`` (PIL bicubic),
  then, if the height exceeds ``size``, keep the central ``size`` rows (top offset
  ``(new_h - size) // 2``).
* ``"pad"``: resize so that the longer side is ``size`` (the other ``round(... / p) * p``), then
  pad to ``size x size`` with white (1.0), ``pad // 2`` before and the rest after.
* ``"eval"``: upstream's evaluation loader (DUSt3R ``load_images_for_eval(size=518, crop=False,
  patch_size=14)``, what the paper's pose / depth numbers are computed on): resize so that the
  long side is ``size`` (each side ``int(round(side * size / long))``, Python rounding; PIL LANCZOS
  when shrinking, BICUBIC when the image is not larger), then *resize* (no crop) with LANCZOS to
  ``(2 * (W' // p) * (p // 2), 2 * (H' // p) * (p // 2))``: 640x480 -> 518x388 -> 518x378.
  Pixels go through DUSt3R's ``ToTensor`` + ``Normalize(0.5, 0.5)`` and STream3R's way back
  (``Normalize(-1, 2)``), i.e. ``((u / 255 - 0.5) / 0.5 + 1) / 2`` in float32.  EXIF orientation is
  applied to files and PIL images, and RGBA is converted by dropping alpha, as that loader does.

Pixels are converted like torchvision's ``ToTensor`` (uint8 / 255, float32, ``[3, H, W]``).
In crop / pad mode RGBA images are composited on white first; other modes are converted to RGB by PIL.

:class:`ImageGeometry` records the resize and crop/pad so that model-pixel quantities
(intrinsics, dense maps) can be mapped back to the source image.  Pixel convention: integer
coordinates are pixel centres in both images; a source pixel ``u`` and a model pixel ``x``
are related by ``u = (x + offset_x + 0.5) / scale_x - 0.5`` (same for y), where
``scale = resized / source`` size and ``offset`` is the crop start (or minus the padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import PIL.Image

ImageLike = Union[str, Path, "PIL.Image.Image", np.ndarray]


@dataclass(frozen=True)
class ImageGeometry:
    """How a source image became the model input.

    Attributes:
        source_hw: (H, W) of the source image.
        resized_hw: (H, W) after the bicubic resize.
        model_hw: (H, W) of the model input (after crop / pad).
        offset_xy: model pixel (x, y) is resized pixel (x + ox, y + oy): the crop start, or
            minus the padding before the image.
        mode: "crop", "pad" or "eval" (two resizes, no crop: ``resized_hw == model_hw``; the
            composition of two centre-aligned resizes is itself one, so the mapping below holds).
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


def _to_pil(image: Any) -> "PIL.Image.Image":
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


def eval_sizes(width: int, height: int, size: int = 518, patch_size: int = 14) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``((w1, h1), (w2, h2))``: the two resize targets of the ``"eval"`` mode (see module docstring).

    Square images: upstream's loader sets the height to 3/4 of the width (``halfh = 3 * halfw / 4``,
    which PIL rejects when it is not an integer); here that height is floored to a multiple of the
    patch size (518x518 -> 518x378)."""
    long_side = max(width, height)
    w1, h1 = (int(round(v * size / long_side)) for v in (width, height))
    half = patch_size // 2
    halfw, halfh = (w1 // patch_size) * half, (h1 // patch_size) * half
    w2, h2 = 2 * halfw, 2 * halfh
    if w1 == h1:
        h2 = int(2 * (3 * halfw / 4)) // patch_size * patch_size
    return (w1, h1), (w2, h2)


def _preprocess_eval(img: "PIL.Image.Image", size: int, patch_size: int) -> Tuple[Tensor, ImageGeometry]:
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img).convert("RGB")
    width, height = img.size
    (w1, h1), (w2, h2) = eval_sizes(width, height, size, patch_size)
    if min(w2, h2) < patch_size:
        raise ValueError(f"image {width}x{height} is too elongated: it would be resized to {w2}x{h2}")
    interp = Image.Resampling.LANCZOS if max(width, height) > size else Image.Resampling.BICUBIC
    img = img.resize((w1, h1), interp)
    img = img.resize((w2, h2), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    x = x.sub(0.5).div(0.5)  # DUSt3R's ImgNorm
    x = x.add(1.0).div(2.0)  # STream3R's ImgDust3r2Stream3r: Normalize(mean=-1, std=2)
    geom = ImageGeometry((height, width), (h2, w2), (h2, w2), (0, 0), "eval")
    return x.contiguous(), geom


def preprocess_image(image: ImageLike, mode: str = "crop", size: int = 518, patch_size: int = 14) -> Tuple[Tensor, ImageGeometry]:
    """One image -> (``[3, H, W]`` float32 tensor in [0, 1], :class:`ImageGeometry`).

    ``image``: a file path, a PIL image, or a uint8 array ``[H, W, 3]`` (RGB), ``[H, W, 4]``
    (RGBA) or ``[H, W]`` (grey).  See the module docstring for the modes ("crop", "pad", "eval").
    """
    from PIL import Image

    if mode not in ("crop", "pad", "eval"):
        raise ValueError(f"mode must be 'crop', 'pad' or 'eval', got {mode!r}")
    if size < patch_size or size % patch_size:
        raise ValueError(f"size must be a positive multiple of {patch_size}, got {size}")
    img = _to_pil(image)
    if mode == "eval":
        return _preprocess_eval(img, size, patch_size)
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
