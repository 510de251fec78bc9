"""Descriptor matching of the adjustment's likely frame pairs, done on a background thread during the run.

The end-of-run adjustment matches each kept frame to the ``window`` frames kept before it and to a
few covisible earlier ones (:func:`.solver.build_tracks`). The window pairs are known as soon as a
frame is kept, and the covisible ones can be guessed from the poses tracked so far; their descriptor
matches (:func:`slam3r_plugins.features.match`, ~10 ms a pair at 1500 features, in OpenCV) depend
on the descriptors alone, so they are computed here while the stream runs. The end of the run
matches only the pairs not guessed (a loop closure moved the poses, the buffer was thinned) and
applies the pose gate to all of them. The results are the same bits as matching every pair at the
end: the same function of the same descriptors.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Protocol

import numpy as np

from .. import features as orb

log = logging.getLogger("slam3r.bundle_adjustment")


def _yield_to_the_frame_loop() -> None:
    """Lowest CPU priority (nice 19) for the calling thread, on Linux, where a thread has its own: the
    frame loop keeps the cores it needs and the matching takes what is left (measured on the demo, 2
    cores: 161-165 ms a frame against 178-189 ms at the same priority; benchmarks/NOTES.md, "Matching
    during the run"). Elsewhere ``setpriority`` would act on the whole process: nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as e:  # e.g. a sandbox that forbids it: the matching still runs
        log.debug("could not lower the matching thread's priority: %s", e)


class _Kept(Protocol):
    index: int
    features: orb.FrameFeatures


class BackgroundMatcher:
    """Matches frame pairs on one worker thread while the run goes on.

    ``add(frame, partners)`` queues the descriptor matches of ``frame`` with each of ``partners``
    (earlier kept frames); ``results()`` waits for the queued work and returns the matches ``[M, 2]``
    (``features.match(frame, partner)``) by frame indices ``(i, j)``; ``forget(kept)`` drops the pairs
    of frames no longer kept; ``close()`` drops what is still queued.
    """

    def __init__(self) -> None:
        self._pool: Optional[ThreadPoolExecutor] = None
        self._jobs: dict[tuple[int, int], Future] = {}

    def pending(self) -> int:
        """Pairs queued and not matched yet."""
        return sum(1 for job in list(self._jobs.values())[-self.MAX_PENDING - 32:] if not job.done())

    #: a frame's pairs are left to the end of the run while more than this many pairs wait: the worker
    #: cannot keep up with the frame loop (small images track faster than 1500 features match)
    MAX_PENDING = 16

    def add(self, frame: _Kept, partners: list[_Kept]) -> bool:
        """Queue the matches of ``frame`` with each of ``partners`` (pairs queued already are skipped);
        False (nothing queued) while the worker is behind (more than ``MAX_PENDING`` pairs waiting)."""
        if self.pending() > self.MAX_PENDING:
            return False
        for prev in partners:
            key = (frame.index, prev.index)
            if key in self._jobs:
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slam3r-ba-matching",
                                                initializer=_yield_to_the_frame_loop)
            self._jobs[key] = self._pool.submit(orb.match, frame.features.descriptors, prev.features.descriptors)
        return True

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

    def close(self) -> None:
        """Stop: what is still queued is dropped, the worker ends after the pair it is matching."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._jobs = {}
