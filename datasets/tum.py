"""TUM RGB-D and Bonn RGB-D Dynamic readers (TUM layout).

A sequence folder holds::

    rgb.txt           timestamp filename      (one colour frame a line, '#' comments)
    depth.txt         timestamp filename      (16-bit PNG, ``depth_scale`` units per metre)
    groundtruth.txt   timestamp tx ty tz qx qy qz qw   (camera-to-world, optional)
    intrinsics.txt    fx fy cx cy             (optional; written by ``run_slam.py synth``)

Calibration as the sensor has it (:mod:`slam3r_datasets.calibration`): TUM's freiburg1 / freiburg2
and Bonn's colour images are not undistorted, so with ``distortion="auto"`` (the default) and the
dataset's own intrinsics, every frame is undistorted once here (colour bilinear, depth nearest)
onto the pinhole camera with the same intrinsics; freiburg3 is already undistorted. Depth of a
separate depth camera (``depth_camera``) is registered to the colour image here.

Colour, depth and ground truth are paired by timestamp as the TUM
``associate.py`` tool does (closest pairs first, each timestamp used once,
``|t_rgb - t_other| < max_time_diff``). Colour frames with no depth within the
tolerance are left out (and counted: ``info()["frames_without_depth"]``) unless
``require_depth=False``; frames with no ground truth within the tolerance carry
``gt_pose=None``.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import FrameSource
from slam3r_app.trajectory import associate, read_tum
from slam3r_app.types import Frame

from .calibration import (
    BONN_DISTORTION,
    BONN_MARKER_TO_CAMERA,
    DATASET_CALIBRATION_SIZE,
    TUM_DISTORTION,
    DistortionLike,
    Undistorter,
    as_distortion,
    depth_registration,
)
from .common import (
    PathLike,
    SizeGuard,
    as_intrinsics,
    bad_frame,
    decode_color,
    decode_depth_png,
    depth_size_error,
    format_intrinsics,
    intrinsics_matrix,
    read_intrinsics_txt,
    resolve_path,
    select_frames,
)

log = logging.getLogger("slam3r.source")

#: Colour-camera intrinsics of the TUM Kinects (fx, fy, cx, cy), from the dataset's calibration page.
TUM_INTRINSICS = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
}
#: ROS default for a Kinect (used by TUM for sequences of unknown camera).
ROS_DEFAULT_INTRINSICS = (525.0, 525.0, 319.5, 239.5)
#: Bonn RGB-D Dynamic (ASUS Xtion), the same for every sequence.
BONN_INTRINSICS = (542.822841, 542.576870, 315.593520, 237.756098)
TUM_DEPTH_SCALE = 5000.0

_FR_RE = re.compile(r"(?:freiburg|fr)([123])(?![0-9])", re.IGNORECASE)


def tum_intrinsics_for(path: PathLike) -> tuple[Optional[str], tuple[float, float, float, float]]:
    """``("freiburg1", (fx, fy, cx, cy))`` from a folder name (``..._freiburg1_...`` or ``..._fr1_...``).

    Looks at the folder's own name first, then its parent's; ``(None, ROS default)`` if neither says.
    """
    p = Path(path)
    for name in (p.name, p.parent.name):
        m = _FR_RE.search(name)
        if m:
            key = f"freiburg{m.group(1)}"
            return key, TUM_INTRINSICS[key]
    return None, ROS_DEFAULT_INTRINSICS


@dataclass
class IndexEntry:
    timestamp: float
    file: str
    line: int
    stamp_text: str = ""


def read_index(path: Path) -> list[IndexEntry]:
    """Parse a TUM ``rgb.txt`` / ``depth.txt``: ``timestamp filename`` per line, ``#`` comments.

    Entries come back in time order: lines out of order are sorted by timestamp (stable), with a
    warning naming the first line out of place. Every file must lie inside the sequence folder (the
    list file's folder): an absolute path, or one whose ``..`` leads out of the folder, is refused.

    Raises:
        SourceError: naming ``file:line`` for a malformed line or a path leaving the folder.
    """
    entries: list[IndexEntry] = []
    root = os.path.normpath(os.path.abspath(path.parent))
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.split()
            if len(parts) < 2:
                raise SourceError(f"{path}:{lineno}: expected 'timestamp filename', got {s[:80]!r}")
            try:
                ts = float(parts[0])
            except ValueError:
                raise SourceError(f"{path}:{lineno}: timestamp is not a number in {s[:80]!r}") from None
            if not np.isfinite(ts):
                raise SourceError(f"{path}:{lineno}: timestamp is NaN or inf")
            _check_inside(root, parts[1], path, lineno)
            entries.append(IndexEntry(ts, parts[1], lineno, parts[0]))
    for a, b in zip(entries, entries[1:]):
        if b.timestamp < a.timestamp:
            log.warning("%s:%d: timestamp %s comes before that of line %d (%s): the lines are not in time order; "
                        "using them sorted by timestamp", path, b.line, b.stamp_text, a.line, a.stamp_text)
            entries.sort(key=lambda e: e.timestamp)
            break
    return entries


def _check_inside(root: str, name: str, path: Path, lineno: int) -> None:
    """A list file's entry must name a file inside the sequence folder ``root``."""
    if os.path.isabs(name) or name.startswith("~"):
        raise SourceError(f"{path}:{lineno}: {name!r} is an absolute path; the files of a sequence must be named "
                          f"relative to its folder {root}")
    full = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([root, full]) != root:
        raise SourceError(f"{path}:{lineno}: {name!r} leads out of the sequence folder {root}; the files of a "
                          f"sequence must lie inside it")
    from .common import outside_link

    where = outside_link(root, full)
    if where:
        raise SourceError(f"{path}:{lineno}: {name!r} {where}")


@dataclass
class _Record:
    timestamp: float
    rgb: Path
    rgb_line: int
    depth: Optional[Path]
    gt: Optional[np.ndarray]


class TumSource(FrameSource):
    """Frames of a TUM RGB-D sequence folder (or any folder in the TUM layout).

    Args:
        path: the sequence folder (``rgbd_dataset_freiburg1_desk``) or ``sample:NAME``.
        first, stride, max_frames: which of the associated frames are used
            (:func:`slam3r_app.sources.select_indices`).
        max_time_diff: association tolerance in seconds (TUM tools: 0.02).
        depth_scale: raw depth units per metre (default 5000).
        intrinsics: ``[fx, fy, cx, cy]`` override; otherwise ``intrinsics.txt`` in
            the folder, else the fr1/fr2/fr3 values picked from the folder name,
            else the ROS default (525, 525, 319.5, 239.5).
        use_depth: load depth (``False``: colour only, ``depth.txt`` ignored).
        require_depth: drop colour frames without a depth frame within
            ``max_time_diff`` (as ``associate.py`` does); ``False`` keeps them with
            ``depth=None``.
        distortion: ``"auto"`` (the dataset's distortion when the intrinsics are the dataset's
            own: TUM freiburg1/2, Bonn; else none), ``"none"``, or OpenCV coefficients
            ``k1 k2 p1 p2 [k3 ...]``; frames are undistorted once, here.
        depth_camera: depth not registered to colour: ``{intrinsics, distortion, T_color_depth}``
            of the depth camera (:func:`slam3r_datasets.calibration.depth_registration`); the depth
            images may then have another size than the colour ones.

    Raises:
        SourceError: the folder or ``rgb.txt`` is missing, an index file is
            malformed, no frame is left, or depth and colour differ in size.
    """

    kind = "tum"

    def __init__(
        self,
        path: PathLike,
        first: int = 0,
        stride: int = 1,
        max_frames: Optional[int] = None,
        max_time_diff: float = 0.02,
        depth_scale: Optional[float] = None,
        intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None,
        use_depth: bool = True,
        require_depth: bool = True,
        distortion: DistortionLike = "auto",
        depth_camera: Any = None,
    ) -> None:
        super().__init__()
        self.path = resolve_path(path)
        self.name = f"{self.kind}:{self.path.name}"
        self.max_time_diff = float(max_time_diff)
        if self.max_time_diff <= 0:
            raise SourceError(f"max_time_diff must be > 0 seconds, got {max_time_diff}")
        self.depth_scale = float(depth_scale) if depth_scale is not None else TUM_DEPTH_SCALE
        if self.depth_scale <= 0:
            raise SourceError(f"depth_scale must be > 0, got {depth_scale}")
        self._check_folder()
        self.intrinsics, self.intrinsics_from = self._pick_intrinsics(intrinsics)
        self.distortion, self.distortion_from = self._pick_distortion(distortion)
        self._undistort = None if self.distortion is None else Undistorter(
            self.intrinsics, self.distortion, size=self._calibrated_size)
        self._register_depth = depth_registration(depth_camera, self.intrinsics)

        records, stats = self._associate(use_depth, require_depth)
        self.stats = stats
        n_all = len(records)
        idx = select_frames(n_all, first, stride, max_frames, self.path, f"the sequence has {n_all} usable frame(s)")
        self.records = [records[i] for i in idx]
        self.has_depth = any(r.depth is not None for r in self.records)
        self.has_gt = any(r.gt is not None for r in self.records)
        self._guard = SizeGuard()
        self._check_first_frame()

    # ------------------------------------------------------------------ set-up
    def _check_folder(self) -> None:
        p = self.path
        if not p.exists():
            raise SourceError(f"{self.kind} sequence folder not found: {p}")
        if not p.is_dir():
            raise SourceError(f"{self.kind} source path must be a sequence folder, got a file: {p}")
        if not (p / "rgb.txt").is_file():
            subs = sorted(d.name for d in p.iterdir() if d.is_dir() and (d / "rgb.txt").is_file())
            hint = f"; sequences found in it: {', '.join(subs[:10])}" if subs else ""
            raise SourceError(f"{p}: no rgb.txt here, so this is not a sequence in the TUM layout "
                              f"(rgb.txt, depth.txt, groundtruth.txt){hint}")

    def _default_intrinsics(self) -> tuple[str, tuple[float, float, float, float]]:
        key, vals = tum_intrinsics_for(self.path)
        if key is None:
            return "ROS default (folder name names no freiburg1/2/3 camera)", vals
        return f"TUM {key} (from the folder name)", vals

    def _default_distortion(self) -> tuple[str, Optional[tuple[float, ...]]]:
        key, _ = tum_intrinsics_for(self.path)
        if key is None:
            return "none (folder name names no freiburg1/2/3 camera)", None
        return f"TUM {key} (from the folder name)", TUM_DISTORTION[key]

    def _pick_distortion(self, value: DistortionLike) -> tuple[Optional[np.ndarray], str]:
        self._calibrated_size: Optional[tuple[int, int]] = None
        if isinstance(value, str) and value.strip().lower() == "auto":
            if self.intrinsics_from.startswith(("config", str(self.path))):
                return None, "none (auto: the intrinsics are not the dataset's own calibration)"
            self._calibrated_size = DATASET_CALIBRATION_SIZE  # the published calibration's image size
            how, coeffs = self._default_distortion()
            d = as_distortion(coeffs, what="source.distortion")
            return d, how if d is not None else f"{how}: none, the images are undistorted already"
        d = as_distortion(value, what="source.distortion")
        return d, "config (source.distortion)" if d is not None else "none (source.distortion)"

    def _pick_intrinsics(self, override) -> tuple[np.ndarray, str]:
        K = as_intrinsics(override, what="source.intrinsics")
        if K is not None:
            return K, "config (source.intrinsics)"
        K = read_intrinsics_txt(self.path / "intrinsics.txt")
        if K is not None:
            return K, str(self.path / "intrinsics.txt")
        how, vals = self._default_intrinsics()
        return intrinsics_matrix(*vals), how

    def _associate(self, use_depth: bool, require_depth: bool) -> tuple[list[_Record], dict[str, Any]]:
        p = self.path
        rgb = read_index(p / "rgb.txt")
        if not rgb:
            raise SourceError(f"{p / 'rgb.txt'}: lists no frames (empty sequence)")
        rgb_t = np.array([e.timestamp for e in rgb])
        stats: dict[str, Any] = {"colour_frames": len(rgb)}

        depth_of: dict[int, Path] = {}
        depth_list: list[IndexEntry] = []
        if use_depth:
            if (p / "depth.txt").is_file():
                depth_list = read_index(p / "depth.txt")
                if not depth_list:
                    log.warning("%s: depth.txt lists no depth frames: colour only", p)
            else:
                log.warning("%s: no depth.txt: colour only", p)
        stats["depth_frames"] = len(depth_list)
        if depth_list:
            pairs = associate(rgb_t, [e.timestamp for e in depth_list], self.max_time_diff)
            if not pairs:
                raise SourceError(
                    f"{p}: no colour frame has a depth frame within {self.max_time_diff} s "
                    f"(rgb.txt: {len(rgb)} frames, {rgb_t.min():.3f}-{rgb_t.max():.3f} s; depth.txt: "
                    f"{len(depth_list)} frames, {depth_list[0].timestamp:.3f}-{depth_list[-1].timestamp:.3f} s); "
                    f"raise source.max_time_diff or check the index files")
            depth_of = {i: p / depth_list[j].file for i, j in pairs}
        n_without = len(rgb) - len(depth_of) if depth_list else 0
        stats["frames_without_depth"] = n_without
        if depth_list and (n_without or len(depth_list) != len(rgb)):
            msg = (f"{p}: rgb.txt lists {len(rgb)} colour frames and depth.txt {len(depth_list)} depth frames; "
                   f"{len(depth_of)} pairs within {self.max_time_diff} s, {n_without} colour frame(s) without depth")
            msg += " (left out)" if require_depth and n_without else ""
            if n_without:
                log.warning(msg)
            else:
                log.info(msg)

        keep = [i for i in range(len(rgb)) if i in depth_of or not (depth_list and require_depth)]
        if not keep:  # pragma: no cover - guarded by the 'no pairs' error above
            raise SourceError(f"{p}: no usable frames")

        gt_of: dict[int, np.ndarray] = {}
        gt_file = p / "groundtruth.txt"
        if gt_file.is_file():
            gt_t, gt_poses = read_tum(gt_file, what="ground-truth")
            if len(gt_t):
                keep_t = rgb_t[keep]
                pairs = associate(keep_t, gt_t, self.max_time_diff)
                gt_of = {keep[i]: self._camera_pose_of_ground_truth(gt_poses[j]) for i, j in pairs}
                if not pairs:
                    log.warning("%s: no ground-truth pose within %s s of any colour frame (ground truth %.3f-%.3f s)",
                                gt_file, self.max_time_diff, gt_t.min(), gt_t.max())
        stats["frames_without_gt"] = len(keep) - len(gt_of)
        records = [_Record(float(rgb_t[i]), p / rgb[i].file, rgb[i].line, depth_of.get(i), gt_of.get(i))
                   for i in keep]
        return records, stats

    def _check_first_frame(self) -> None:
        """Colour and depth of the first frame must be readable together and of one size."""
        r = self.records[0]
        if r.depth is None:
            return
        rgb = decode_color(r.rgb)
        depth = decode_depth_png(r.depth, self.depth_scale)
        if self._register_depth is not None:
            return  # depth of another camera: registered to the colour image frame by frame
        if isinstance(rgb, np.ndarray) and isinstance(depth, np.ndarray) and rgb.shape[:2] != depth.shape[:2]:
            raise SourceError(depth_size_error(str(r.rgb), rgb.shape, str(r.depth), depth.shape))

    # ------------------------------------------------------------------ frames
    def __len__(self) -> int:
        return len(self.records)

    def _iter_raw(self) -> Iterator[Union[Frame, BadFrameError]]:
        for k, r in enumerate(self.records):
            yield self._load(k, r)

    def _load(self, k: int, r: _Record) -> Union[Frame, BadFrameError]:
        rgb = decode_color(r.rgb)
        if isinstance(rgb, BadFrameError):
            if "not found" in str(rgb):
                return bad_frame(str(r.rgb), f"{rgb} (listed in {self.path / 'rgb.txt'}:{r.rgb_line})")
            return rgb
        err = self._guard.check(str(r.rgb), rgb.shape)
        if err is not None:
            return err
        depth = None
        if r.depth is not None:
            depth = decode_depth_png(r.depth, self.depth_scale)
            if isinstance(depth, BadFrameError):
                return depth
            if self._register_depth is not None:
                depth = self._register_depth(depth, rgb.shape[1], rgb.shape[0])
            elif depth.shape[:2] != rgb.shape[:2]:
                return bad_frame(str(r.depth), depth_size_error(str(r.rgb), rgb.shape, str(r.depth), depth.shape))
        frame = Frame(index=k, timestamp=r.timestamp, rgb=rgb, depth=depth, intrinsics=self.intrinsics.copy(),
                      gt_pose=None if r.gt is None else r.gt.copy(), name=r.rgb.name)
        if self._undistort is not None:  # (registered depth is already on the pinhole colour grid)
            frame = self._undistort(frame, depth_registered=self._register_depth is None)
        return frame

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({
            "type": self.kind,
            "path": str(self.path),
            "intrinsics": format_intrinsics(self.intrinsics),
            "intrinsics_from": self.intrinsics_from,
            "distortion": None if self.distortion is None else [float(x) for x in self.distortion],
            "distortion_from": self.distortion_from,
            "depth_camera": None if self._register_depth is None else self._register_depth.describe(),
            "depth_scale": self.depth_scale,
            "max_time_diff": self.max_time_diff,
            "camera": self.camera(),
            **self.stats,
        })
        return d


    def camera(self) -> Optional[str]:
        """Which sensor took the frames (``"tum:freiburg1"``), from the folder name; None if it does not say."""
        key, _ = tum_intrinsics_for(self.path)
        return None if key is None else f"tum:{key}"

    def _camera_pose_of_ground_truth(self, pose: np.ndarray) -> np.ndarray:
        """The colour camera's ``[4, 4]`` camera-to-world pose for a ``groundtruth.txt`` pose (TUM: the same)."""
        return pose


class BonnSource(TumSource):
    """Bonn RGB-D Dynamic sequences (TUM layout, one ASUS Xtion for all sequences).

    Same arguments as :class:`TumSource`; the default intrinsics are Bonn's
    (fx=542.822841, fy=542.576870, cx=315.593520, cy=237.756098) and distortion
    (0.039903, -0.099343, -0.000730, -0.000144, 0), depth is /5000.
    Ground truth: ``groundtruth.txt`` holds the motion-capture marker's pose; each frame's
    ``gt_pose`` is the colour camera's, ``G @ BONN_MARKER_TO_CAMERA`` (the dataset page's
    ``T_ros @ T_m``, see :mod:`.calibration`). The camera sits about 1.8 cm from the marker's
    origin, so position errors (ATE) change by at most that; rotations and RPE are now in the
    camera's own axes.
    """

    kind = "bonn"

    def camera(self) -> Optional[str]:
        return "bonn:xtion"

    def _camera_pose_of_ground_truth(self, pose: np.ndarray) -> np.ndarray:
        return pose @ BONN_MARKER_TO_CAMERA

    def _default_intrinsics(self) -> tuple[str, tuple[float, float, float, float]]:
        return "Bonn RGB-D Dynamic calibration", BONN_INTRINSICS

    def _default_distortion(self) -> tuple[str, Optional[tuple[float, ...]]]:
        return "Bonn RGB-D Dynamic calibration", BONN_DISTORTION
