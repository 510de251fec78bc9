"""Descriptor matching of the adjustment's temporal window, done on a background thread during the run.

The end-of-run adjustment matches each kept frame to the ``window`` frames kept before it and to a
few covisible earlier ones (:func:`.solver.build_tracks`). The window pairs are known as soon as a
frame is kept, and their descriptor matches (:func:`slam3r_plugins.features.match`, ~10 ms a pair
at 1500 features, in OpenCV) depend on the descriptors alone, so they are computed here while the
stream runs; the end of the run then only matches the covisible pairs (which depend on the final
poses) and applies the pose gate to all of them. The results are the same bits as matching every
pair at the end: the same function of the same descriptors.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Protocol

import numpy as np

from .. import features as orb

log = logging.getLogger("slam3r.bundle_adjustment")


class _Kept(Protocol):
    index: int
    features: orb.FrameFeatures


class BackgroundMatcher:
    """Matches each frame offered to it with the ``window`` frames offered before it, on one worker thread.

    Args:
        window: how many earlier frames each new frame is matched to (the solver's ``window``).

    ``add(frame, recent)`` queues the matches of ``frame`` with ``recent`` (the frames kept just before
    it, oldest first); ``results(keep)`` waits for the queued work and returns the descriptor matches
    ``[M, 2]`` by frame indices ``(i, j)``; ``close()`` drops what is still queued.
    """

    def __init__(self, window: int) -> None:
        self.window = int(window)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._jobs: dict[tuple[int, int], Future] = {}

    def add(self, frame: _Kept, recent: list[_Kept]) -> None:
        """Queue the matches of ``frame`` with the last ``window`` frames of ``recent``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slam3r-ba-matching")
        for prev in recent[-self.window:] if self.window > 0 else []:
            self._jobs[(frame.index, prev.index)] = self._pool.submit(
                orb.match, frame.features.descriptors, prev.features.descriptors)

    def forget(self, kept: set[int]) -> None:
        """Drop the work on frames that are no longer kept (the frame buffer was thinned)."""
        for key in [k for k in self._jobs if k[0] not in kept or k[1] not in kept]:
            self._jobs.pop(key).cancel()

    def results(self) -> dict[tuple[int, int], np.ndarray]:
        """Every queued pair's descriptor matches, by frame indices; waits for the worker to finish them.

        A pair whose matching failed is left out (the adjustment matches it again).
        """
        out = {}
        for key, job in self._jobs.items():
            try:
                out[key] = job.result()
            except Exception as e:  # noqa: BLE001 - left to the end-of-run matching, which reports its errors
                log.debug("background matching of frames %s failed (%s: %s); matched again at the end",
                          key, type(e).__name__, e)
        return out

    def __len__(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        """Stop: what is still queued is dropped, the worker ends after the pair it is matching."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._jobs = {}
