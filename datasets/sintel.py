"""MPI Sintel reader, and readers / writers for Sintel's binary ``.cam`` and ``.dpt`` files.

Standard layout (the ``MPI-Sintel-complete`` and ``MPI-Sintel-depth`` archives)::

    <root>/training/final/<seq>/frame_0001.png        (or clean/)
    <root>/training/camdata_left/<seq>/frame_0001.cam
    <root>/training/depth/<seq>/frame_0001.dpt

``path`` may be the image folder ``<root>/training/final/<seq>``, ``<root>/<seq>``
(root + sequence name), ``<root>`` or ``<root>/training`` when it holds a single
sequence, a folder ``<seq>/`` with ``final/`` (or ``clean/``), ``camdata_left/``
and ``depth/`` inside, or a flat folder holding the ``.png``, ``.cam`` and
``.dpt`` files side by side.

Binary formats (little-endian), as the Sintel SDK's ``sintel_io.py``:

* ``.cam``: float32 tag 202021.25 (the bytes ``PIEH``), 9 float64 (3x3 intrinsics,
  row-major), 12 float64 (3x4 extrinsics ``[R|t]``, world-to-camera, row-major).
* ``.dpt``: float32 tag 202021.25, int32 width, int32 height, ``width*height``
  float32 depth (z along the optical axis), row-major.

Sintel has no timestamps: a frame's timestamp is its 0-based index in the sequence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import FrameSource
from slam3r_app.trajectory import invert_pose
from slam3r_app.types import Frame

from .common import (
    PathLike,
    SizeGuard,
    as_intrinsics,
    bad_frame,
    decode_color,
    depth_size_error,
    format_intrinsics,
    natural_key,
    resolve_path,
    select_frames,
)

log = logging.getLogger("slam3r.source")

TAG_FLOAT = 202021.25
TAG_CHAR = b"PIEH"
CAM_BYTES = 4 + 9 * 8 + 12 * 8
PASSES = ("final", "clean")
MAX_DPT_SIDE = 1 << 16


# ----------------------------------------------------------------------------- binary files
def _check_tag(data: bytes, path: Path, what: str) -> None:
    if len(data) < 4:
        raise SourceError(f"{path}: not a Sintel {what} file (only {len(data)} bytes)")
    tag = float(np.frombuffer(data[:4], dtype="<f4")[0])
    if tag != TAG_FLOAT:
        raise SourceError(f"{path}: not a Sintel {what} file (tag {tag!r} != {TAG_FLOAT}; wrong endianness or format)")


def read_cam(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Sintel ``.cam`` file.

    Returns:
        ``(K [3,3] float64 intrinsics, E [3,4] float64 world-to-camera extrinsics)``.

    Raises:
        SourceError: missing, truncated, wrong tag, or non-finite values (file named).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SourceError(f"{path}: cannot read camera file ({e.strerror or e})") from None
    _check_tag(data, path, ".cam")
    if len(data) < CAM_BYTES:
        raise SourceError(f"{path}: truncated .cam file ({len(data)} bytes, expected {CAM_BYTES})")
    vals = np.frombuffer(data[4:CAM_BYTES], dtype="<f8").astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise SourceError(f"{path}: .cam file holds NaN or inf")
    return vals[:9].reshape(3, 3).copy(), vals[9:].reshape(3, 4).copy()


def write_cam(path: PathLike, K: np.ndarray, extrinsics: np.ndarray) -> Path:
    """Write a Sintel ``.cam`` file: ``K`` 3x3 and world-to-camera ``extrinsics`` (3x4 or 4x4)."""
    K = np.asarray(K, dtype=np.float64)
    E = np.asarray(extrinsics, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be 3x3, got {K.shape}")
    if E.shape == (4, 4):
        E = E[:3]
    if E.shape != (3, 4):
        raise ValueError(f"extrinsics must be 3x4 or 4x4, got {E.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(TAG_CHAR)
        f.write(K.astype("<f8").tobytes(order="C"))
        f.write(E.astype("<f8").tobytes(order="C"))
    return path


def read_dpt(path: PathLike) -> np.ndarray:
    """Read a Sintel ``.dpt`` depth file -> ``[H, W]`` float32 (z-depth).

    Raises:
        SourceError: missing, truncated, wrong tag or implausible size (file named).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SourceError(f"{path}: cannot read depth file ({e.strerror or e})") from None
    _check_tag(data, path, ".dpt")
    if len(data) < 12:
        raise SourceError(f"{path}: truncated .dpt file ({len(data)} bytes)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], dtype="<i4"))
    if not (0 < w < MAX_DPT_SIDE and 0 < h < MAX_DPT_SIDE):
        raise SourceError(f"{path}: implausible .dpt size {w}x{h}")
    need = 12 + 4 * w * h
    if len(data) < need:
        raise SourceError(f"{path}: truncated .dpt file ({len(data)} bytes, expected {need} for {w}x{h})")
    return np.frombuffer(data[12:need], dtype="<f4").astype(np.float32).reshape(h, w)


def write_dpt(path: PathLike, depth: np.ndarray) -> Path:
    """Write ``depth`` (``[H, W]``, converted to float32) as a Sintel ``.dpt`` file."""
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be 2-D, got shape {d.shape}")
    h, w = d.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(TAG_CHAR)
        f.write(np.array([w, h], dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(d, dtype="<f4").tobytes(order="C"))
    return path


def extrinsics_to_c2w(E: np.ndarray) -> np.ndarray:
    """Camera-to-world 4x4 from a Sintel world-to-camera 3x4 ``[R|t]``."""
    T = np.eye(4)
    T[:3, :4] = np.asarray(E, dtype=np.float64)[:3, :4]
    return invert_pose(T)


def read_cam_trajectory(folder: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A Sintel ``camdata_left/<sequence>`` folder -> ``(frame positions [N] float64, c2w poses [N, 4, 4])``.

    The ``.cam`` files are taken in name order (``frame_0001.cam`` ...); the "timestamps" are their
    positions 0..N-1 (Sintel has no clock), so a trajectory is matched to it by index. Used as ground
    truth by the evaluation (``evaluation.gt`` / ``run_slam.py eval --gt FOLDER``).
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.cam"))
    if not files:
        raise SourceError(f"{folder}: no .cam files (expected a Sintel camdata_left/<sequence> folder)")
    poses = np.stack([extrinsics_to_c2w(read_cam(f)[1]) for f in files])
    return np.arange(len(files), dtype=np.float64), poses


def c2w_to_extrinsics(c2w: np.ndarray) -> np.ndarray:
    """Sintel 3x4 world-to-camera ``[R|t]`` from a camera-to-world 4x4."""
    return invert_pose(np.asarray(c2w, dtype=np.float64))[:3, :4].copy()


# ----------------------------------------------------------------------------- layout
@dataclass
class SintelLayout:
    images: Path
    cams: Optional[Path]
    depth: Optional[Path]
    sequence: str
    image_pass: str


def _has_frames(d: Path) -> bool:
    return d.is_dir() and any(p.suffix.lower() == ".png" for p in d.iterdir())


def _sequences(training: Path) -> list[str]:
    seqs: set[str] = set()
    for ps in PASSES:
        if (training / ps).is_dir():
            seqs |= {d.name for d in (training / ps).iterdir() if _has_frames(d)}
    return sorted(seqs)


def _in_training(training: Path, seq: str, sintel_pass: str) -> Optional[SintelLayout]:
    for ps in (sintel_pass,) + tuple(x for x in PASSES if x != sintel_pass):
        img = training / ps / seq
        if _has_frames(img):
            if ps != sintel_pass:
                log.warning("Sintel: no '%s' pass for %s, using '%s' (%s)", sintel_pass, seq, ps, img)
            return SintelLayout(img, _dir_or_none(training / "camdata_left" / seq),
                                _dir_or_none(training / "depth" / seq), seq, ps)
    return None


def _dir_or_none(d: Path) -> Optional[Path]:
    return d if d.is_dir() else None


def locate_sintel(path: Path, sintel_pass: str = "final") -> SintelLayout:
    """Find the image, camera and depth folders of one Sintel sequence (see the module doc)."""
    p = path
    if p.is_file():
        raise SourceError(f"sintel source path must be a folder, got a file: {p}")
    if p.is_dir():
        # 1. the image folder <root>/training/<pass>/<seq>
        if _has_frames(p):
            seq = p.name
            training = p.parent.parent
            if p.parent.name in PASSES:
                if p.parent.name != sintel_pass:
                    log.info("Sintel: %s is the '%s' pass (source.sintel_pass=%s ignored: the path names the pass)",
                             p, p.parent.name, sintel_pass)
                return SintelLayout(p, _dir_or_none(training / "camdata_left" / seq),
                                    _dir_or_none(training / "depth" / seq), seq, p.parent.name)
            # flat folder: .png, .cam and .dpt side by side
            has_cam = any(x.suffix == ".cam" for x in p.iterdir())
            has_dpt = any(x.suffix == ".dpt" for x in p.iterdir())
            return SintelLayout(p, p if has_cam else None, p if has_dpt else None, seq, "")
        # 2. <seq>/ with final/ clean/ camdata_left/ depth/ inside
        for ps in (sintel_pass,) + tuple(x for x in PASSES if x != sintel_pass):
            if _has_frames(p / ps):
                return SintelLayout(p / ps, _dir_or_none(p / "camdata_left"), _dir_or_none(p / "depth"), p.name, ps)
        # 3. <root> or <root>/training with a single sequence
        training = p / "training" if (p / "training").is_dir() else p
        seqs = _sequences(training)
        if len(seqs) == 1:
            lay = _in_training(training, seqs[0], sintel_pass)
            if lay is not None:
                return lay
        if len(seqs) > 1:
            raise SourceError(f"{p} holds {len(seqs)} Sintel sequences; name one, e.g. source.path="
                              f"{p / seqs[0]} (sequences: {', '.join(seqs)})")
        raise SourceError(f"{p}: no Sintel frames found (expected frame_XXXX.png in it, or "
                          f"training/{sintel_pass}/<sequence>/frame_XXXX.png under it)")
    # 4. <root>/<seq> that does not exist as a folder: root + sequence name
    root = p.parent
    for training in (root / "training", root):
        if training.is_dir():
            lay = _in_training(training, p.name, sintel_pass)
            if lay is not None:
                return lay
    if (root / "training").is_dir():
        seqs = _sequences(root / "training")
        raise SourceError(f"Sintel sequence {p.name!r} not found under {root / 'training'} "
                          f"(sequences: {', '.join(seqs) if seqs else 'none'})")
    raise SourceError(f"sintel sequence folder not found: {p}")


# ----------------------------------------------------------------------------- reader
class SintelSource(FrameSource):
    """Frames of one MPI Sintel sequence with GT poses and intrinsics from ``.cam`` and depth from ``.dpt``.

    Args:
        path: see the module doc (also ``sample:NAME``).
        sintel_pass: ``"final"`` or ``"clean"`` (ignored when ``path`` is a pass folder).
        first, stride, max_frames: frame selection.
        intrinsics: ``[fx, fy, cx, cy]`` override (else each frame's ``.cam``).
        use_depth: read ``.dpt`` depth when present.

    Frames whose ``.cam`` / ``.dpt`` is missing or corrupt are yielded as
    :class:`BadFrameError` (skipped or fatal by ``on_bad_frame``). Depth values
    that are not finite or not positive become 0 (invalid).
    """

    kind = "sintel"

    def __init__(
        self,
        path: PathLike,
        sintel_pass: str = "final",
        first: int = 0,
        stride: int = 1,
        max_frames: Optional[int] = None,
        intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None,
        use_depth: bool = True,
    ) -> None:
        super().__init__()
        if sintel_pass not in PASSES:
            raise SourceError(f"sintel_pass must be one of {', '.join(PASSES)}, got {sintel_pass!r}")
        self.path = resolve_path(path)
        self.layout = locate_sintel(self.path, sintel_pass)
        self.name = f"sintel:{self.layout.sequence}"
        images = sorted((x for x in self.layout.images.iterdir() if x.suffix.lower() == ".png"),
                        key=lambda x: natural_key(x.name))
        if not images:  # pragma: no cover - locate_sintel guarantees frames
            raise SourceError(f"{self.layout.images}: no frames (empty sequence)")
        idx = select_frames(len(images), first, stride, max_frames, self.path,
                            f"the sequence has {len(images)} frame(s)", empty_where=self.layout.images)
        self.items = [(i, images[i]) for i in idx]
        self.n_total = len(images)
        self.intrinsics_override = as_intrinsics(intrinsics, what="source.intrinsics")
        self.has_gt = self.layout.cams is not None
        self.has_depth = bool(use_depth and self.layout.depth is not None)
        if self.layout.cams is None:
            log.warning("Sintel %s: no camdata_left folder: no ground-truth poses%s", self.layout.sequence,
                        "" if self.intrinsics_override is not None else " and no intrinsics")
        if use_depth and self.layout.depth is None:
            log.info("Sintel %s: no depth folder: colour only", self.layout.sequence)
        self._guard = SizeGuard()

    def __len__(self) -> int:
        return len(self.items)

    def _iter_raw(self) -> Iterator[Union[Frame, BadFrameError]]:
        for k, (i, img) in enumerate(self.items):
            yield self._load(k, i, img)

    def _load(self, k: int, i: int, img: Path) -> Union[Frame, BadFrameError]:
        rgb = decode_color(img)
        if isinstance(rgb, BadFrameError):
            return rgb
        err = self._guard.check(str(img), rgb.shape)
        if err is not None:
            return err
        K = self.intrinsics_override
        gt = None
        if self.layout.cams is not None:
            cam = self.layout.cams / (img.stem + ".cam")
            try:
                Kc, E = read_cam(cam)
            except SourceError as e:
                return bad_frame(str(img), str(e))
            gt = extrinsics_to_c2w(E)
            if K is None:
                K = Kc
        depth = None
        if self.has_depth:
            dpt = self.layout.depth / (img.stem + ".dpt")  # type: ignore[operator]
            try:
                depth = read_dpt(dpt)
            except SourceError as e:
                return bad_frame(str(img), str(e))
            if depth.shape != rgb.shape[:2]:
                return bad_frame(str(dpt), depth_size_error(str(img), rgb.shape, str(dpt), depth.shape))
            depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        return Frame(index=k, timestamp=float(i), rgb=rgb, depth=depth,
                     intrinsics=None if K is None else K.copy(), gt_pose=gt, name=img.name)

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({
            "type": self.kind,
            "path": str(self.path),
            "sequence": self.layout.sequence,
            "pass": self.layout.image_pass,
            "images": str(self.layout.images),
            "cams": str(self.layout.cams) if self.layout.cams else None,
            "depth": str(self.layout.depth) if self.layout.depth else None,
            "frames_in_sequence": self.n_total,
            "intrinsics": format_intrinsics(self.intrinsics_override) or "per frame, from .cam",
        })
        return d


__all__ = ["SintelSource", "read_cam", "write_cam", "read_dpt", "write_dpt", "extrinsics_to_c2w",
           "c2w_to_extrinsics", "locate_sintel", "TAG_FLOAT"]
