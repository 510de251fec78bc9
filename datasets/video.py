"""A video file read with OpenCV; timestamps come from the container."""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import FrameSource, select_indices
from slam3r_app.types import Frame

from .common import PathLike, SizeGuard, as_intrinsics, check_selection, format_intrinsics, resolve_path, select_frames

log = logging.getLogger("slam3r.source")

PACES = ("fast", "realtime")


class VideoSource(FrameSource):
    """Frames of a video file (anything OpenCV's FFmpeg backend decodes: mp4, avi, mkv, mov, ...).

    Args:
        path: the video file.
        first, stride, max_frames: frame selection (frame numbers in decoding order).
        intrinsics: ``[fx, fy, cx, cy]`` (optional).
        pace: ``"fast"`` reads as fast as the consumer takes frames; ``"realtime"``
            holds each frame back until its container timestamp (relative to the first
            frame handed out), as a player would.

    Timestamps are the container's presentation times in seconds (``CAP_PROP_POS_MSEC``);
    where the container has none, ``frame_number / fps``. The file is opened
    for each pass over the frames and released when the pass ends (also on errors
    and when the consumer stops early).
    """

    kind = "video"

    def __init__(
        self,
        path: PathLike,
        first: int = 0,
        stride: int = 1,
        max_frames: Optional[int] = None,
        intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None,
        pace: str = "fast",
    ) -> None:
        super().__init__()
        self.path = resolve_path(path)
        self.name = f"video:{self.path.name}"
        if pace not in PACES:
            raise SourceError(f"pace must be one of {', '.join(PACES)}, got {pace!r}")
        self.pace = pace
        if not self.path.exists():
            raise SourceError(f"video file not found: {self.path}")
        if self.path.is_dir():
            raise SourceError(f"video source path must be a video file, got a folder: {self.path} "
                              f"(use source.type: folder for a folder of images)")
        check_selection(first, stride)
        self.first, self.stride, self.max_frames = int(first), int(stride), max_frames
        cap = self._open()
        try:
            self.frame_count = int(cap.get(_cv2().CAP_PROP_FRAME_COUNT) or 0)
            self.fps = float(cap.get(_cv2().CAP_PROP_FPS) or 0.0)
            self.width = int(cap.get(_cv2().CAP_PROP_FRAME_WIDTH) or 0)
            self.height = int(cap.get(_cv2().CAP_PROP_FRAME_HEIGHT) or 0)
            from .common import too_large

            big = too_large((self.width, self.height))
            if big:
                raise SourceError(f"{self.path}: {big.replace('the image is', 'its frames are')}")
            ok, img = cap.read()
            if not ok or img is None:
                raise SourceError(f"{self.path}: the video holds no decodable frame (empty or corrupt)")
        finally:
            cap.release()
        if self.frame_count > 0:
            select_frames(self.frame_count, first, stride, max_frames, self.path,
                          f"the video has {self.frame_count} frame(s)")
        self.intrinsics = as_intrinsics(intrinsics, what="source.intrinsics")
        self.end_reason = ""
        self.frames_read = 0

    def _open(self):
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: OpenCV cannot open this video file (unsupported codec or not a video)")
        return cap

    def __len__(self) -> int:
        if self.frame_count <= 0:
            raise TypeError(f"{self.name}: the container does not say how many frames it holds")
        return len(select_indices(self.frame_count, self.first, self.stride, self.max_frames))

    def _iter_raw(self) -> Iterator[Union[Frame, BadFrameError]]:
        cv2 = _cv2()
        cap = self._open()
        guard = SizeGuard()
        self.end_reason = ""
        try:
            n = -1  # frame number in the file
            k = 0  # frames handed out
            prev_ts = -np.inf
            t0_wall = t0_media = None
            while self.max_frames is None or k < self.max_frames:
                n += 1
                wanted = n >= self.first and (n - self.first) % self.stride == 0
                if not wanted:
                    if not cap.grab():
                        break
                    continue
                ok, img = cap.read()
                if not ok or img is None:
                    break
                ts = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
                if not np.isfinite(ts) or ts <= prev_ts:
                    ts = n / self.fps if self.fps > 0 else float(n)
                prev_ts = ts
                if self.pace == "realtime":
                    now = time.perf_counter()
                    if t0_wall is None:
                        t0_wall, t0_media = now, ts
                    else:
                        wait = (ts - t0_media) - (now - t0_wall)
                        if wait > 0:
                            time.sleep(wait)
                rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                name = f"{self.path.name}#{n}"
                err = guard.check(name, rgb.shape)
                if err is not None:
                    yield err
                    continue
                self.frames_read = k + 1
                yield Frame(index=k, timestamp=ts, rgb=rgb,
                            intrinsics=None if self.intrinsics is None else self.intrinsics.copy(), name=name)
                k += 1
            expected = None
            try:
                expected = len(self)
            except TypeError:
                pass
            if expected is not None and k < expected:
                self.end_reason = (f"{self.path}: the video ended after {k} of the {expected} frames its container "
                                   f"announces (truncated or corrupt file?)")
        finally:
            cap.release()

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({"type": self.kind, "path": str(self.path), "fps": self.fps, "frames_in_file": self.frame_count,
                  "size": [self.width, self.height], "pace": self.pace,
                  "intrinsics": format_intrinsics(self.intrinsics)})
        return d


def _cv2():
    import cv2

    return cv2
