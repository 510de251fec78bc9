"""Ctrl-C (SIGINT) and SIGTERM during a run: stop, stop now, abort.

The frame loop's thread never runs plugin hooks itself (they run in the plugin
host's watchdog thread), so these handlers run at once whatever a plugin is doing.
Each signal escalates:

==========  ==============================================  ==============================================
signal      in the frame loop (``phase = "loop"``)           while outputs are written (``"outputs"``)
==========  ==============================================  ==============================================
1st         stop after the current frame, write every        say which plugin is busy; go on writing
            output
2nd         stop now: the frame in progress is abandoned;    say which plugin is busy; go on writing
            every completed output is still written
3rd         abort at once (exit 130 / 143); files already    abort at once; the core files (trajectory,
            written stay (they are written atomically)       summary) are written before plugin exports
==========  ==============================================  ==============================================

After the outputs (``phase = "after"``: a viewer kept open with ``viewer.keep_open``) the
first signal ends the wait. A plugin stuck in a call is cut by the watchdog's limit
(``plugin_timeout_s``, ``plugin_frame_timeout_s``) in any phase.

Exit codes: 130 when the first signal was SIGINT, 143 when it was SIGTERM (128 + the
signal's number, as shells report).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger("slam3r")

EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM before a run's own handlers are installed (start-up): ends the program with exit 143."""


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block (main thread), SIGTERM raises :class:`Terminated` instead of killing the
    process, so that start-up is left cleanly: no traceback, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Terminated

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, old)


def exit_code_for(signal_name: str) -> int:
    """130 for SIGINT, 143 for SIGTERM (the shell convention 128 + signal number)."""
    return EXIT_SIGTERM if signal_name == "SIGTERM" else EXIT_SIGINT


class SignalGuard:
    """Installs SIGINT / SIGTERM handlers for one run (main thread only; elsewhere a no-op).

    Args:
        request_stop: called with a reason on the first signal (the loop stops after the frame).
        busy: returns what plugin code is running now ("" if none), for the messages.
    """

    def __init__(self, request_stop: Callable[[str], None], busy: Callable[[], str] = lambda: "") -> None:
        self.request_stop = request_stop
        self.busy = busy
        self.phase = "loop"
        self.count = 0
        self.first_signal = ""
        self._old: dict[int, Any] = {}

    @property
    def active(self) -> bool:
        return bool(self._old)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                pass

    def restore(self) -> None:
        for sig, h in self._old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, h)
        self._old.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator["SignalGuard"]:
        self.install()
        try:
            yield self
        finally:
            self.restore()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        self.count += 1
        if self.count == 1:
            self.first_signal = name
        busy = self.busy()
        busy_note = f" ({busy})" if busy else ""
        if self.phase == "after":
            raise KeyboardInterrupt
        if self.count >= 3:
            self._abort(name)
        if self.phase == "loop":
            if self.count == 1:
                log.warning("%s received: stopping after this frame and writing outputs%s; again: stop now, "
                            "a third time: abort at once", name, busy_note)
                self.request_stop(f"{name} received")
                return
            log.warning("%s received again: stopping now; the frame in progress is abandoned, every completed "
                        "output is still written%s; once more: abort at once", name, busy_note)
            raise KeyboardInterrupt
        # phase "outputs": the files are being written; the watchdog bounds every plugin
        if self.count == 1:
            self.request_stop(f"{name} received")
        left = 3 - self.count
        log.warning("%s received: writing the outputs%s; %s more to abort at once", name, busy_note,
                    "once" if left == 1 else "twice")

    def _abort(self, name: str) -> None:
        code = exit_code_for(self.first_signal or name)
        log.error("%s received a third time: aborting at once (exit %d); files already written are kept", name, code)
        _flush_logs()
        os._exit(code)


def _flush_logs() -> None:
    for h in list(logging.getLogger("slam3r").handlers) + list(logging.getLogger().handlers):
        with contextlib.suppress(Exception):
            h.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
