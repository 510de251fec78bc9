"""A bounded buffer of frames kept for rebuilding a map at corrected poses (public: any map may keep one).

Open3D's TSDF grid (and most dense maps) cannot take a frame back out, so a map that must follow pose
corrections keeps the frames it fused and rebuilds from them. Each :class:`BufferedFrame` is stored
**in its own camera frame with its frame index**: a rebuild places it with the frame's *current*
transform from the trajectory store (``context.trajectory.transform(index)``), so frames follow their
keyframe's corrections. The buffer is bounded: when full, every second frame is dropped and only every
second new one is kept (the frames kept stay spread over the whole run).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("slam3r.maps")


@dataclass(frozen=True)
class BufferedFrame:
    """One fused frame, kept for rebuilds (in its own camera frame; placed by its index).

    Attributes:
        index: the frame's index (its pose is ``context.trajectory.transform(index)``).
        depth: ``[h, w]`` float16 depth (sensor: metres; predicted: the store units of the world it
            was predicted in), 0 where invalid or masked.
        rgb: ``[h, w, 3]`` uint8 colour.
        K: ``[3, 3]`` intrinsics of ``depth`` (subsampled).
        sensor: sensor depth (metric) or predicted depth.
    """

    index: int
    depth: np.ndarray
    rgb: np.ndarray
    K: np.ndarray
    sensor: bool

    @property
    def nbytes(self) -> int:
        return int(self.depth.nbytes + self.rgb.nbytes + self.K.nbytes + 64)


class FrameBuffer:
    """At most ``max_frames`` buffered frames spread over the whole run.

    When full, every second frame is dropped and only every second new candidate is kept
    from then on (so the frames kept stay evenly spread, oldest to newest). Memory:
    ``max_frames x (h x w x 5 bytes + 136)`` for ``[h, w]`` buffered images.
    """

    def __init__(self, max_frames: int, option: str = "fusion.buffer_max_frames") -> None:
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        self.max_frames = int(max_frames)
        self.option = option  # the config key that sets max_frames, for the message when the buffer fills
        self._frames: list[BufferedFrame] = []
        self.keep_every = 1
        self.candidates = 0
        self.thinned = 0  # times the buffer was halved

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, entry: BufferedFrame) -> bool:
        """Offer a frame; returns whether it was kept."""
        self.candidates += 1
        if (self.candidates - 1) % self.keep_every:
            return False
        self._frames.append(entry)
        if len(self._frames) > self.max_frames:
            self._frames = self._frames[::2]
            self.keep_every *= 2
            self.thinned += 1
            log.info("frame buffer full (%d frames, %.1f MB): keeping every %d-th frame from now on (%s)",
                     self.max_frames, self.nbytes / 2**20, self.keep_every, self.option)
        return True

    def wants_next(self) -> bool:
        """Whether the next frame offered to :meth:`add` will be kept (a caller can skip making a frame that
        will not be; then it calls :meth:`pass_over` instead of :meth:`add`)."""
        return self.candidates % self.keep_every == 0

    def pass_over(self) -> None:
        """Count a frame that is not offered (:meth:`wants_next` said it would not be kept)."""
        self.candidates += 1

    def frames(self) -> list[BufferedFrame]:
        """The buffered frames, oldest first (a new list; the frames themselves are immutable)."""
        return list(self._frames)

    def indices(self) -> list[int]:
        return [e.index for e in self._frames]

    @property
    def nbytes(self) -> int:
        return int(sum(e.nbytes for e in self._frames))

    def clear(self) -> None:
        self._frames = []
