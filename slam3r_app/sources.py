"""The frame-source interface the loop consumes (readers live in ``slam3r_datasets``)."""
from __future__ import annotations

import abc
import logging
from typing import Any, Iterator, Optional

from .errors import BadFrameError, SourceError
from .types import Frame

log = logging.getLogger("slam3r.source")


def select_indices(n: int, first: int = 0, stride: int = 1, max_frames: Optional[int] = None) -> list[int]:
    """Indices into a sequence of ``n`` items: ``first, first+stride, ...``, at most ``max_frames``.

    >>> select_indices(10, first=2, stride=3)
    [2, 5, 8]
    """
    if first < 0 or stride < 1:
        raise ValueError(f"first must be >= 0 and stride >= 1 (got first={first}, stride={stride})")
    idx = list(range(first, n, stride))
    if max_frames is not None:
        idx = idx[: max(0, int(max_frames))]
    return idx


class FrameSource(abc.ABC):
    """A stream of :class:`~slam3r_app.types.Frame` objects.

    Subclasses implement :meth:`_iter_raw`, which yields either a Frame or raises
    :class:`BadFrameError` for one frame it could not read (and may continue with
    the next). :meth:`frames` applies the ``on_bad_frame`` policy on top.

    Attributes:
        name: short description for logs (``"tum:rgbd_dataset_freiburg1_desk"``).
        is_live: True for cameras (no length; the loop may drop frames).
        has_depth: the frames carry metric depth.
        has_gt: the frames carry ground-truth poses.
    """

    name: str = "source"
    is_live: bool = False
    has_depth: bool = False
    has_gt: bool = False

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []  # (frame name, reason)

    @abc.abstractmethod
    def _iter_raw(self) -> Iterator[Frame | BadFrameError]:
        """Yield frames in order; yield (not raise) a BadFrameError for an unreadable frame."""

    def __len__(self) -> int:  # pragma: no cover - overridden by finite sources
        raise TypeError(f"{self.name} has no length (live source)")

    def length(self) -> Optional[int]:
        """Number of frames the source will yield, or None when unknown (live)."""
        try:
            return len(self)
        except TypeError:
            return None

    def frames(self, on_bad_frame: str = "stop") -> Iterator[Frame]:
        """Yield frames, skipping or stopping at unreadable ones.

        Args:
            on_bad_frame: ``"skip"`` logs a warning and goes on; ``"stop"`` raises
                :class:`SourceError` naming the frame.
        """
        for item in self._iter_raw():
            if isinstance(item, BadFrameError):
                if on_bad_frame == "skip":
                    log.warning("skipping frame: %s", item)
                    self.skipped.append((getattr(item, "frame_name", ""), str(item)))
                    continue
                raise SourceError(f"{item} (set source.on_bad_frame: skip to skip such frames)")
            yield item

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable description (written into the run folder)."""
        return {
            "name": self.name,
            "live": self.is_live,
            "has_depth": self.has_depth,
            "has_gt": self.has_gt,
            "frames": self.length(),
        }

    def close(self) -> None:
        """Release files / devices. Safe to call twice."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
