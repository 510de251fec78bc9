"""Read (and prepare) the next frames in a background thread while the current one is tracked.

For files (datasets, folders, videos) decoding the next images and the frontend's CPU
preprocessing (:meth:`~slam3r_app.frontend.Frontend.prepare`) overlap the model's work on
the current frame. Live sources are never prefetched: a camera must hand over its newest
frame, and a queued one would be stale.

    with Prefetcher(source.frames(), prepare=frontend.prepare, depth=2) as frames:
        for frame in frames:
            ...

Frames come out in order. An exception raised while reading (a bad frame under
``on_bad_frame: stop``) is raised in the consuming thread at the position where it
happened, after the frames before it. A failing ``prepare`` is ignored (the frontend
redoes the work in ``track`` and reports the error there).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator, Optional

from .signals import leave_signals_to_the_main_thread
from .timing import StageTimes
from .types import Frame

log = logging.getLogger("slam3r")

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher:
    """Iterate ``frames`` in a daemon thread, ``depth`` frames ahead of the consumer.

    Args:
        frames: the source's frame iterator (consumed only by the background thread).
        prepare: called on each frame in the background thread before it is queued.
        depth: frames queued ahead (>= 1).
        timer: records ``prefetch.read`` and ``prefetch.prepare`` per frame.
    """

    def __init__(self, frames: Iterator[Frame], prepare: Optional[Callable[[Frame], Any]] = None,
                 depth: int = 2, timer: Optional[StageTimes] = None) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._frames = frames
        self._prepare = prepare
        self._timer = timer
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="slam3r-prefetch", daemon=True)
        self._started = False

    # ------------------------------------------------------------------ background
    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        leave_signals_to_the_main_thread()
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(self._frames)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                if self._prepare is not None:
                    try:
                        self._prepare(frame)
                    except Exception as e:  # noqa: BLE001 - plugin code: the frontend redoes it in track() and reports it there
                        log.debug("prepare(frame %s) failed in the prefetch thread: %s", frame.index, e)
                t2 = time.perf_counter()
                if self._timer is not None:
                    self._timer.add("prefetch.read", t1 - t0)
                    if self._prepare is not None:
                        self._timer.add("prefetch.prepare", t2 - t1)
                if not self._put(frame):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(e))
            return
        self._put(_END)

    # ------------------------------------------------------------------ consumer
    def __iter__(self) -> Iterator[Frame]:
        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            try:  # a wait with a timeout: Python runs a signal's handler between two waits (a
                item = self._queue.get(timeout=0.25)  # wait without one may block it until a frame comes)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background thread (it finishes the frame it is reading) and wait for it."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._started:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - a reader stuck in I/O
                log.warning("the prefetch thread did not stop within %.0f s", timeout)
        close = getattr(self._frames, "close", None)
        if close is not None and not self._thread.is_alive():
            try:
                close()
            except Exception:  # noqa: BLE001 # pragma: no cover - plugin code (the source's close) must not stop the shutdown
                pass

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
