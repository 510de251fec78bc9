"""A folder of images (png, jpg, jpeg, bmp), in natural order (``frame2`` before ``frame10``)."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import FrameSource
from slam3r_app.types import Frame

from .common import (
    IMAGE_EXTENSIONS,
    PathLike,
    SizeGuard,
    as_intrinsics,
    decode_color,
    format_intrinsics,
    list_images,
    resolve_path,
    select_frames,
)


class ImageFolderSource(FrameSource):
    """Colour frames from the image files of one folder (not recursive).

    Args:
        path: the folder (or ``sample:NAME``).
        first, stride, max_frames: frame selection.
        intrinsics: ``[fx, fy, cx, cy]`` (optional: frames carry ``intrinsics=None`` without it).
        fps: frame rate for the timestamps (``index / fps``); without it the timestamp is the index.
        extensions: file suffixes taken as images.

    Raises:
        SourceError: the folder is missing or holds no images.
    """

    kind = "folder"

    def __init__(
        self,
        path: PathLike,
        first: int = 0,
        stride: int = 1,
        max_frames: Optional[int] = None,
        intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None,
        fps: Optional[float] = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__()
        self.path = resolve_path(path)
        self.name = f"folder:{self.path.name}"
        if not self.path.exists():
            raise SourceError(f"image folder not found: {self.path}")
        if not self.path.is_dir():
            raise SourceError(f"folder source path must be a folder, got a file: {self.path}")
        files = list_images(self.path, extensions)
        if not files:
            raise SourceError(f"{self.path}: no images ({', '.join(extensions)}) in this folder (empty sequence)")
        if fps is not None and fps <= 0:
            raise SourceError(f"fps must be > 0, got {fps}")
        self.fps = fps
        idx = select_frames(len(files), first, stride, max_frames, self.path, f"the folder has {len(files)} image(s)")
        self.items = [(i, files[i]) for i in idx]
        self.n_total = len(files)
        self.intrinsics = as_intrinsics(intrinsics, what="source.intrinsics")
        self._guard = SizeGuard()

    def __len__(self) -> int:
        return len(self.items)

    def _iter_raw(self) -> Iterator[Union[Frame, BadFrameError]]:
        for k, (i, f) in enumerate(self.items):
            rgb = decode_color(f)
            if isinstance(rgb, BadFrameError):
                yield rgb
                continue
            err = self._guard.check(str(f), rgb.shape)
            if err is not None:
                yield err
                continue
            ts = i / self.fps if self.fps else float(i)
            yield Frame(index=k, timestamp=ts, rgb=rgb, intrinsics=None if self.intrinsics is None else self.intrinsics.copy(),
                        name=f.name)

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({"type": self.kind, "path": str(self.path), "images_in_folder": self.n_total,
                  "intrinsics": format_intrinsics(self.intrinsics), "fps": self.fps})
        return d
