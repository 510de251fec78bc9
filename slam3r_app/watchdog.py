"""Run plugin code in a worker thread under a time limit.

The frame loop's thread never runs a plugin hook itself: it hands the call to a
worker thread and waits. Waiting is interruptible, so Ctrl-C and SIGTERM are
handled at once whatever a plugin is doing, and a call that runs past its limit
is abandoned: the caller gets :class:`Overrun` naming the function, and the
worker (stuck in that call) is replaced by a fresh one for the next calls. A
Python thread cannot be killed; the abandoned one is a daemon thread that ends
when its call returns (or with the process).

One batch (:meth:`Watchdog.run`) runs a list of callables in order, each with
its own limit, so that one hook with several implementations costs one hand-off
between threads, not one per implementation.

An interrupted wait (``KeyboardInterrupt`` from a signal handler: "stop now")
leaves the batch *orphaned*: the worker finishes the callable it is in and skips
the rest. :meth:`Watchdog.settle` (called before the next batch) waits for the
orphan at most :data:`ORPHAN_GRACE_S` (or its own limit, if shorter), so that a
plugin never runs twice at once, and reports the call it had to give up on.
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from .signals import leave_signals_to_the_main_thread

#: how long a wait blocks at most before it looks at the progress again (seconds)
_POLL_CAP = 0.5
#: how long a call interrupted by "stop now" may take to finish before it is given up (seconds)
ORPHAN_GRACE_S = 5.0


@dataclass
class Outcome:
    """What one callable of a batch did."""

    index: int
    ok: bool
    value: Any = None
    error: Optional[BaseException] = None
    traceback: str = ""
    seconds: float = 0.0


class Overrun(Exception):
    """A callable of a batch ran past its limit; ``index`` says which, ``seconds`` how long it had run."""

    def __init__(self, index: int, seconds: float, limit: float, outcomes: list[Outcome], label: Any = None):
        super().__init__(f"call {index} still running after {seconds:.1f} s (limit {limit:g} s)")
        self.index = index
        self.seconds = seconds
        self.limit = limit
        self.outcomes = outcomes
        self.label = label


@dataclass
class _Batch:
    calls: Sequence[Callable[[], Any]]
    limits: Sequence[Optional[float]]
    stop_when: Optional[Callable[[Any], bool]]
    labels: Sequence[Any] = ()
    outcomes: list[Outcome] = field(default_factory=list)
    progress: tuple[int, float] = (-1, 0.0)  # (index running, its start time); replaced atomically
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class _Worker:
    def __init__(self, name: str) -> None:
        self.jobs: "queue.SimpleQueue[Optional[_Batch]]" = queue.SimpleQueue()
        self.abandoned = False
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        leave_signals_to_the_main_thread()
        _local.in_worker = True
        while not self.abandoned:
            batch = self.jobs.get()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                batch.progress = (-1, 0.0)
                batch.done.set()
                del batch  # hold no plugin data while idle (objects must be freed before interpreter exit)

    def _run(self, batch: _Batch) -> None:
        for i, fn in enumerate(batch.calls):
            if batch.cancelled or self.abandoned:
                return
            t0 = time.monotonic()
            batch.progress = (i, t0)
            try:
                value = fn()
                out = Outcome(i, True, value, seconds=time.monotonic() - t0)
            except BaseException as e:  # noqa: BLE001 - reported to the caller, never lost
                out = Outcome(i, False, error=e, traceback=traceback.format_exc(), seconds=time.monotonic() - t0)
            if self.abandoned:  # the caller gave up on this call: nothing more from this thread
                return
            batch.outcomes.append(out)
            if out.ok and batch.stop_when is not None and batch.stop_when(out.value):
                return


_local = threading.local()


def in_worker() -> bool:
    """True in a watchdog worker thread (a plugin calling hooks itself: run them inline)."""
    return bool(getattr(_local, "in_worker", False))


class Watchdog:
    """Runs batches of callables in a worker thread, each callable under its own limit.

    Args:
        name: the worker threads' name (``slam3r-plugins``).
    """

    def __init__(self, name: str = "slam3r-plugins") -> None:
        self.name = name
        self._worker: Optional[_Worker] = None
        self._orphan: Optional[_Batch] = None
        self._active: Optional[_Batch] = None  # the batch being waited for
        self._lock = threading.Lock()  # one batch at a time (calls from several threads queue up)
        self.abandoned = 0  # worker threads given up on (stuck in an overrun call)
        self.stop_deadline: Optional[float] = None  # time.monotonic() by which a stopping run gives up on calls

    def set_stop_deadline(self, deadline: Optional[float]) -> None:
        """The run was told to stop (a signal) and must end by ``deadline`` (``time.monotonic()``): a call
        that a "stop now" left running is waited for until then at most (not :data:`ORPHAN_GRACE_S` more)."""
        self.stop_deadline = deadline

    def busy(self) -> Optional[tuple[int, float]]:
        """``(index, seconds running)`` of the callable in progress (waited for, or orphaned), or None."""
        for b in (self._active, self._orphan):
            if b is not None and not b.done.is_set():
                i, t0 = b.progress
                if i >= 0:
                    return i, time.monotonic() - t0
        return None

    def run(self, calls: Sequence[Callable[[], Any]], limits: Sequence[Optional[float]],
            stop_when: Optional[Callable[[Any], bool]] = None, labels: Sequence[Any] = ()) -> list[Outcome]:
        """Run ``calls`` in order in the worker; ``limits[i]`` seconds for ``calls[i]`` (None: no limit).

        Returns the outcomes of the calls that ran (stops after the first value for which
        ``stop_when`` is true). ``labels[i]`` names ``calls[i]`` in :meth:`settle`'s report.

        Raises:
            Overrun: a call ran past its limit (the outcomes before it are attached).
            KeyboardInterrupt: from a signal handler while waiting; the batch is orphaned.
        """
        if in_worker():  # a hook calling hooks: no second thread, no limit
            return _run_inline(calls, stop_when)
        with self._lock:
            self._settle()
            batch = _Batch(calls, limits, stop_when, labels)
            worker = self._ensure_worker()
            worker.jobs.put(batch)
            self._active = batch
            try:
                self._wait(batch)
            except KeyboardInterrupt:
                batch.cancelled = True
                self._orphan = batch
                raise
            finally:
                self._active = None
            return batch.outcomes

    def settle(self) -> list[tuple[Any, float]]:
        """Wait for a batch a signal orphaned (at most :data:`ORPHAN_GRACE_S`); returns
        ``[(label, seconds)]`` of the call given up on (empty when it finished in time)."""
        if in_worker():
            return []
        with self._lock:
            return self._settle()

    def _settle(self) -> list[tuple[Any, float]]:
        orphan, self._orphan = self._orphan, None
        if orphan is None or orphan.done.is_set():
            return []
        cap = time.monotonic() + ORPHAN_GRACE_S
        if self.stop_deadline is not None:
            cap = min(cap, max(self.stop_deadline, time.monotonic()))
        try:
            self._wait(orphan, cap=cap)
        except KeyboardInterrupt:
            self._orphan = orphan
            raise
        except Overrun as e:
            label = orphan.labels[e.index] if e.index < len(orphan.labels) else e.index
            return [(label, e.seconds)]
        return []

    def _wait(self, batch: _Batch, cap: Optional[float] = None) -> None:
        """Until ``batch`` is done; :class:`Overrun` when its current call passes its limit or ``cap``."""
        while True:
            i, t0 = batch.progress
            limit = batch.limits[i] if 0 <= i < len(batch.limits) else None
            end = None if limit is None else t0 + limit
            if cap is not None and i >= 0:
                end = cap if end is None else min(end, cap)
            timeout = _POLL_CAP if end is None else min(_POLL_CAP, max(0.0, end - time.monotonic()))
            if batch.done.wait(timeout):
                return
            if batch.progress[0] == i and i >= 0 and end is not None and time.monotonic() >= end:
                self._abandon()
                raise Overrun(i, time.monotonic() - t0, (end - t0), list(batch.outcomes),
                              batch.labels[i] if i < len(batch.labels) else None)

    def _ensure_worker(self) -> _Worker:
        if self._worker is None or self._worker.abandoned or not self._worker.thread.is_alive():
            self._worker = _Worker(self.name)
        return self._worker

    def _abandon(self) -> None:
        if self._worker is not None:
            self._worker.abandoned = True
            self._worker = None
            self.abandoned += 1

    def close(self) -> None:
        """Let an idle worker thread end (a busy one ends when its call returns)."""
        w, self._worker = self._worker, None
        if w is not None:
            w.jobs.put(None)


def _run_inline(calls: Sequence[Callable[[], Any]], stop_when: Optional[Callable[[Any], bool]]) -> list[Outcome]:
    outs = []
    for i, fn in enumerate(calls):
        t0 = time.monotonic()
        try:
            out = Outcome(i, True, fn(), seconds=time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - plugin code: its error is this call's outcome
            out = Outcome(i, False, error=e, traceback=traceback.format_exc(), seconds=time.monotonic() - t0)
        outs.append(out)
        if out.ok and stop_when is not None and stop_when(out.value):
            break
    return outs


__all__ = ["Outcome", "Overrun", "Watchdog", "in_worker"]
