"""Helpers shared by the readers: paths (``sample:NAME``), frame selection, image decoding, size checks."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import select_indices

log = logging.getLogger("slam3r.source")

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SAMPLE_PREFIX = "sample:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- paths
def available_samples() -> list[str]:
    """Names of the samples shipped in ``slam3r_datasets/samples`` (usable as ``sample:NAME``)."""
    if not SAMPLES_DIR.is_dir():
        return []
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def resolve_path(path: PathLike) -> Path:
    """A dataset path: ``sample:NAME`` -> the shipped sample folder, ``~`` expanded.

    Raises:
        SourceError: ``sample:NAME`` names no shipped sample (the message lists them).
    """
    s = os.fspath(path)
    if s.startswith(SAMPLE_PREFIX):
        name = s[len(SAMPLE_PREFIX):].strip().strip("/")
        p = SAMPLES_DIR / name
        if not name or not p.is_dir():
            have = available_samples()
            raise SourceError(f"no shipped sample named {name!r} (in {SAMPLES_DIR}); "
                              f"available: {', '.join(have) if have else 'none'}")
        return p
    return Path(s).expanduser()


def natural_key(s: str) -> list:
    """Sort key: ``frame2.png`` before ``frame10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def outside_link(root: PathLike, path: PathLike) -> str:
    """``""`` unless the file ``path`` is itself a symbolic link that leads out of the sequence folder
    ``root`` (and out of its own folder); then why it is refused. A sequence someone sent you cannot
    make slam3r read (and export) a file elsewhere on your disk. Linked folders are a dataset layout
    (``rgb -> /big/disk/rgb``, or the sequence folder itself) and stay allowed."""
    if not os.path.islink(path):
        return ""
    real = os.path.realpath(path)
    for base in (root, os.path.dirname(os.path.abspath(path))):
        real_base = os.path.realpath(base)
        if os.path.commonpath([real_base, real]) == real_base:
            return ""
    return (f"is a symbolic link to {real}, outside the sequence folder {root}; the files of a sequence must "
            f"lie inside it (copy the file in, or link a whole folder instead)")


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files in ``folder`` (not recursive), naturally sorted.

    Raises:
        SourceError: a file is a symbolic link that leads out of ``folder`` (:func:`outside_link`).
    """
    exts = {e.lower() for e in extensions}
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    for p in files:
        where = outside_link(folder, p)
        if where:
            raise SourceError(f"{p} {where}")
    return sorted(files, key=lambda p: natural_key(p.name))


# ----------------------------------------------------------------------------- frame selection
def check_selection(first: int, stride: int, where: Optional[str] = None) -> None:
    """``first`` >= 0 and ``stride`` >= 1, or a SourceError (prefixed with ``where``) saying so."""
    try:
        select_indices(0, first, stride)
    except ValueError as e:
        raise SourceError(f"{where}: {e}" if where else str(e)) from None


def select_frames(n: int, first: int, stride: int, max_frames: Optional[int], where: object, has: str,
                  empty_where: object = None) -> list[int]:
    """The positions of the frames a reader hands out (``first``, ``first + stride``, ... at most ``max_frames``).

    Args:
        n: frames in the sequence.
        where: prefix of the messages (the source's path).
        has: ends the "no frames selected" message: ``"the folder has 3 image(s)"``.
        empty_where: prefix of that message when it differs from ``where``.

    Raises:
        SourceError: ``first`` < 0 or ``stride`` < 1, or no frame is selected (``first`` past the end).
    """
    check_selection(first, stride, str(where))
    idx = select_indices(n, first, stride, max_frames)
    if not idx:
        raise SourceError(f"{where if empty_where is None else empty_where}: no frames selected: first={first} "
                          f"but {has}")
    return idx


# ----------------------------------------------------------------------------- intrinsics
def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``[[fx,0,cx],[0,fy,cy],[0,0,1]]`` as float64."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def as_intrinsics(value: Optional[Union[Sequence[float], np.ndarray]], what: str = "intrinsics") -> Optional[np.ndarray]:
    """``None``, ``[fx, fy, cx, cy]`` or a 3x3 matrix -> 3x3 float64 (or None)."""
    if value is None:
        return None
    a = np.asarray(value, dtype=np.float64)
    if a.shape == (3, 3):
        return a.copy()
    if a.shape == (4,):
        if not np.all(np.isfinite(a)) or a[0] <= 0 or a[1] <= 0:
            raise SourceError(f"{what}: fx and fy must be positive finite numbers, got {list(a)}")
        return intrinsics_matrix(*a)
    raise SourceError(f"{what}: expected [fx, fy, cx, cy] or a 3x3 matrix, got shape {list(a.shape)}")


def read_intrinsics_txt(path: Path) -> Optional[np.ndarray]:
    """An optional ``intrinsics.txt`` next to a sequence: one line ``fx fy cx cy`` (``#`` comments)."""
    if not path.is_file():
        return None
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        parts = s.replace(",", " ").split()
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise SourceError(f"{path}:{lineno}: expected 'fx fy cx cy', got {s[:80]!r}") from None
        if len(vals) != 4:
            raise SourceError(f"{path}:{lineno}: expected 4 numbers 'fx fy cx cy', got {len(vals)}")
        return as_intrinsics(vals, what=str(path))
    raise SourceError(f"{path}: no 'fx fy cx cy' line found")


def format_intrinsics(K: Optional[np.ndarray]) -> Optional[list[float]]:
    if K is None:
        return None
    return [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])]


# ----------------------------------------------------------------------------- images
def bad_frame(name: str, message: str) -> BadFrameError:
    """A :class:`BadFrameError` that remembers which frame it is about."""
    err = BadFrameError(message)
    err.frame_name = name  # type: ignore[attr-defined]
    return err


#: default of ``source.max_image_pixels``: 50 megapixels (an 8K frame is 33 MP)
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
_max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(n: Optional[int]) -> None:
    """The largest image (width x height) a reader decodes, for this process (``source.max_image_pixels``;
    set by :func:`slam3r_datasets.factory.make_source`). None: the default."""
    global _max_image_pixels
    _max_image_pixels = int(n) if n else DEFAULT_MAX_IMAGE_PIXELS


def max_image_pixels() -> int:
    return _max_image_pixels


def image_size(data: bytes) -> Optional[tuple[int, int]]:
    """``(width, height)`` read from an encoded image's header without decoding it (PNG and JPEG by
    hand, other formats through Pillow's lazy open), or None when the header says nothing."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            if marker == 0xDA or length < 2:  # the scan starts: no frame header before it
                return None
            i += 2 + length
        return None
    try:
        import io
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(io.BytesIO(data)) as im:
                    return int(im.size[0]), int(im.size[1])
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Exception:  # noqa: BLE001 - not an image Pillow knows: OpenCV decides
        return None


def too_large(size: Optional[tuple[int, int]]) -> str:
    """A message when ``size`` (width, height) exceeds :func:`max_image_pixels`, else ``""``."""
    if size is None:
        return ""
    w, h = size
    if w * h <= _max_image_pixels:
        return ""
    return (f"the image is {w}x{h} ({w * h / 1e6:.1f} megapixels), more than source.max_image_pixels "
            f"({_max_image_pixels / 1e6:g} megapixels); not decoded")


def decode_color(path: Path) -> Union[np.ndarray, BadFrameError]:
    """RGB uint8 ``[H,W,3]`` from an image file, or a BadFrameError naming the file (also for an image
    larger than ``source.max_image_pixels``, read from its header before anything is decoded)."""
    import cv2

    if not path.is_file():
        return bad_frame(str(path), f"{path}: image file not found")
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
        big = too_large(image_size(buf[:1 << 16].tobytes()))
        if big:
            return bad_frame(str(path), f"{path}: {big}")
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    except (OSError, cv2.error) as e:  # pragma: no cover - unusual I/O errors
        return bad_frame(str(path), f"{path}: cannot read image ({e})")
    if img is None:
        return bad_frame(str(path), f"{path}: cannot decode image (corrupt, truncated or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_depth_png(path: Path, scale: float) -> Union[np.ndarray, BadFrameError]:
    """Metric depth float32 ``[H,W]`` (metres, 0 = invalid) from a 16-bit PNG of ``scale`` units per metre."""
    import cv2

    if not path.is_file():
        return bad_frame(str(path), f"{path}: depth file not found")
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
        big = too_large(image_size(buf[:1 << 16].tobytes()))
        if big:
            return bad_frame(str(path), f"{path}: {big}")
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except (OSError, cv2.error) as e:  # pragma: no cover
        return bad_frame(str(path), f"{path}: cannot read depth image ({e})")
    if raw is None:
        return bad_frame(str(path), f"{path}: cannot decode depth image (corrupt, truncated or not an image)")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        ch = 1 if raw.ndim == 2 else raw.shape[2]
        return bad_frame(str(path), f"{path}: expected a 16-bit single-channel depth PNG, got {raw.dtype} "
                                    f"with {ch} channel(s)")
    return raw.astype(np.float32) / np.float32(scale)


def size_str(shape: Sequence[int]) -> str:
    """``"640x480"`` (width x height) from an array shape."""
    return f"{shape[1]}x{shape[0]}"


class SizeGuard:
    """Remembers the first frame's size; later frames of another size become BadFrameErrors."""

    def __init__(self, size: Optional[tuple[int, int]] = None) -> None:
        self.size = size  # (H, W)
        self.first_name = ""

    def check(self, name: str, shape: Sequence[int]) -> Optional[BadFrameError]:
        hw = (int(shape[0]), int(shape[1]))
        if self.size is None:
            self.size, self.first_name = hw, name
            return None
        if hw != self.size:
            return bad_frame(name, f"{name}: image is {size_str(hw)}, but the sequence's frames are "
                                   f"{size_str(self.size)}" + (f" (like {self.first_name})" if self.first_name else ""))
        return None


def depth_size_error(color_name: str, color_shape: Sequence[int], depth_name: str, depth_shape: Sequence[int]) -> str:
    return (f"depth {depth_name} is {size_str(depth_shape)} but colour {color_name} is {size_str(color_shape)}: "
            f"depth must be registered to the colour image (same size)")
