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

The first signal also starts the stop grace (``stop_grace_s``, default 5 s): if the frame in
progress has not ended by then -- a plugin stuck in a per-frame hook, a frontend stuck in a frame --
the run acts as on a second signal (the frame is abandoned, the stuck call given up and named, every
completed output written), so that a container runtime's SIGKILL (``docker stop`` sends it 10 s
after SIGTERM) finds the outputs written.

After the outputs (``phase = "after"``: a viewer kept open with ``viewer.keep_open``) the
first signal ends the wait. A plugin stuck in a call is cut by the watchdog's limit
(``plugin_timeout_s``, ``plugin_frame_timeout_s``) in any phase.

Exit codes: 130 when the first signal was SIGINT, 143 when it was SIGTERM (128 + the
signal's number, as shells report).

The handlers write nothing themselves: a signal can arrive while the main thread is in the middle
of writing a log line, and a second write into the same buffered file from the handler would fail
("reentrant call") and lose both lines. They hand their messages to a small logging thread through
a ``queue.SimpleQueue`` (whose ``put`` is safe in a signal handler); before an abort the handler
waits (briefly) for its last message to be written and flushed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger("slam3r")

EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM before a run's own handlers are installed (start-up): ends the program with exit 143."""


#: how long a signal during start-up waits for the main thread before the program exits by itself
STARTUP_GRACE_S = 1.0


class StartupSignals:
    """Ctrl-C / SIGTERM while the program starts (imports, plugin discovery, config, opening the
    source, loading the model): leave without a traceback, exit 130 / 143, within a second.

    CPython runs Python signal handlers in the main thread only, between two bytecodes. The kernel
    may deliver the signal to any thread of the process (a library's worker thread, say); the main
    thread, blocked in a C call (a lock wait, a library's import), then does not see it until that
    call returns, which may be never. So a helper thread reads the interpreter's wake-up file
    descriptor (``signal.set_wakeup_fd``: a byte per signal, written whichever thread received it).
    Normally the main thread's handler runs at once (it raises :class:`KeyboardInterrupt` or
    :class:`Terminated`, and :func:`slam3r_app.cli.main` prints one line); if it has not run
    :data:`STARTUP_GRACE_S` after the signal, the helper prints where the main thread is stuck and
    ends the process itself (``os._exit``; start-up has written nothing that needs finishing).

    The run's own handlers (:class:`SignalGuard`) stop the helper when they are installed.
    """

    def __init__(self) -> None:
        self._handled = 0  # signals the main thread's handler has seen
        self._ended = threading.Event()
        self._lock = threading.Lock()  # held by the helper from its decision to exit to os._exit
        self._old: dict[int, Any] = {}
        self._old_wakeup = -1
        self._fds: Optional[tuple[int, int]] = None
        self._thread: Optional[threading.Thread] = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            r, w = os.pipe()
            os.set_blocking(w, False)
            self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):  # pragma: no cover - embedded interpreters
            self.end()
            return
        self._fds = (r, w)
        self._thread = threading.Thread(target=self._watch, name="slam3r-startup-signals", daemon=True)
        self._thread.start()

    def stop_watching(self) -> None:
        """Start-up is over (main thread): no wake-up fd, the helper ends. The handlers stay (a run's
        :class:`SignalGuard` replaces them for the run and puts them back after it, so that a signal
        after the run still ends the program with one line)."""
        if self._ended.is_set():
            return
        with self._lock:  # not while the helper is exiting the process
            self._ended.set()
        if self._fds is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(self._old_wakeup)
            with contextlib.suppress(OSError):
                os.write(self._fds[1], b"\0")  # wake the helper, which closes the pipe
            if self._thread is not None:
                self._thread.join(5.0)

    def end(self) -> None:
        """Hand signals back (main thread): :meth:`stop_watching`, and the previous handlers."""
        self.stop_watching()
        with contextlib.suppress(ValueError, OSError):
            for sig, h in self._old.items():
                signal.signal(sig, h)
        self._old.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        self._handled += 1
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def _watch(self) -> None:
        leave_signals_to_the_main_thread()
        assert self._fds is not None
        r, w = self._fds
        seen = 0
        try:
            while not self._ended.is_set():
                data = os.read(r, 64)
                signums = [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
                if not signums or self._ended.is_set():
                    continue
                seen += len(signums)
                deadline = time.monotonic() + STARTUP_GRACE_S
                while self._handled < seen and time.monotonic() < deadline and not self._ended.is_set():
                    time.sleep(0.02)
                if self._handled >= seen or self._ended.is_set():
                    continue  # the main thread got it and is on its way out
                self._exit_now(signal.Signals(signums[0]).name)
        finally:
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _exit_now(self, name: str) -> None:
        with self._lock:
            if self._ended.is_set():
                return
            where = _main_thread_location()
            word = "terminated (SIGTERM)" if name == "SIGTERM" else "interrupted (Ctrl-C)"
            with contextlib.suppress(Exception):
                sys.stderr.write(f"{word} during start-up; the main thread did not respond within "
                                 f"{STARTUP_GRACE_S:g} s (blocked in {where}): exiting at once\n")
                sys.stderr.flush()
            os._exit(exit_code_for(name))


def _main_thread_location() -> str:
    """``file:line (function)`` where the main thread is now, for a message: its innermost frame
    outside Python's standard library and import machinery (``threading.py`` says nothing), or ``?``."""
    import sysconfig

    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    stdlib = sysconfig.get_paths().get("stdlib", "\0")
    first = frame
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(stdlib) or name.startswith("<frozen")):
            break
        frame = frame.f_back
    frame = frame or first
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})"


_startup: Optional[StartupSignals] = None


@contextlib.contextmanager
def startup_signals() -> Iterator[None]:
    """Within the block (the whole command), :class:`StartupSignals` guards start-up until a run's
    :class:`SignalGuard` takes over (or the block ends)."""
    global _startup
    guard = StartupSignals()
    guard.install()
    _startup = guard
    try:
        yield
    finally:
        _startup = None
        guard.end()


def end_startup() -> None:
    """Start-up is over: a run's own handlers take over (called by :meth:`SignalGuard.install`)."""
    if _startup is not None:
        _startup.stop_watching()


def leave_signals_to_the_main_thread() -> None:
    """Block SIGINT / SIGTERM in the calling (worker) thread, so that the kernel hands them to the
    main thread, where CPython runs the handlers (threads this one starts, C libraries' included,
    inherit the mask). Call it first thing in every thread the app or a plugin starts."""
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is not threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def exit_code_for(signal_name: str) -> int:
    """130 for SIGINT, 143 for SIGTERM (the shell convention 128 + signal number)."""
    return EXIT_SIGTERM if signal_name == "SIGTERM" else EXIT_SIGINT


class SignalGuard:
    """Installs SIGINT / SIGTERM handlers for one run (main thread only; elsewhere a no-op).

    Args:
        request_stop: called with a reason on the first signal (the loop stops after the frame).
        busy: returns what plugin code is running now ("" if none), for the messages.
    """

    def __init__(self, request_stop: Callable[[str], None], busy: Callable[[], str] = lambda: "",
                 grace_s: Optional[float] = None, on_first: Optional[Callable[[float], None]] = None) -> None:
        self.request_stop = request_stop
        self.busy = busy
        self.grace_s = grace_s
        self.on_first = on_first  # called with the stop deadline (time.monotonic()) on the first signal
        self.phase = "loop"
        self.count = 0
        self.first_signal = ""
        self.grace_expired = False
        self._grace_timer: Optional[threading.Timer] = None
        self._grace_due = False  # an interrupt_main() from the grace timer is on its way
        self._old: dict[int, Any] = {}
        self._messages: "queue.SimpleQueue[Optional[tuple[int, str, Optional[threading.Event]]]]" = queue.SimpleQueue()
        self._writer: Optional[threading.Thread] = None

    def _write_messages(self) -> None:
        leave_signals_to_the_main_thread()
        while True:
            item = self._messages.get()
            if item is None:
                return
            level, msg, done = item
            log.log(level, msg)
            if done is not None:
                _flush_logs()
                done.set()

    def _say(self, level: int, msg: str, done: Optional[threading.Event] = None) -> None:
        self._messages.put((level, msg, done))  # reentrant: fine in a signal handler

    @property
    def active(self) -> bool:
        return bool(self._old)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        end_startup()
        self._writer = threading.Thread(target=self._write_messages, name="slam3r-signal-messages", daemon=True)
        self._writer.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                pass

    def restore(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._grace_due = False
        for sig, h in self._old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, h)
        self._old.clear()
        if self._writer is not None:  # write what is queued, then let the thread end
            self._messages.put(None)
            self._writer.join(5.0)
            self._writer = None

    @contextlib.contextmanager
    def installed(self) -> Iterator["SignalGuard"]:
        self.install()
        try:
            yield self
        finally:
            self.restore()

    def _start_grace(self, name: str) -> None:
        if self.grace_s is None:
            return
        deadline = time.monotonic() + self.grace_s
        if self.on_first is not None:
            with contextlib.suppress(Exception):
                self.on_first(deadline)
        if self.phase != "loop":
            return
        self._grace_timer = threading.Timer(self.grace_s, self._grace_over, args=(name,))
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def _grace_over(self, name: str) -> None:
        """The stop grace is over (timer thread): if the frame is still in progress, interrupt the
        main thread, whose handler then acts as on a second signal."""
        if self.phase != "loop" or not self._old:
            return
        import _thread

        self._grace_due = True
        try:
            _thread.interrupt_main(signal.Signals[name].value)
        except (TypeError, ValueError):  # pragma: no cover - Python < 3.10: SIGINT only
            _thread.interrupt_main()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._grace_due:  # not a new signal: the stop grace of the first one is over
            self._grace_due = False
            if self.phase != "loop":
                return
            self.grace_expired = True
            busy = self.busy()
            self._say(logging.WARNING, f"{self.first_signal or name}: the frame in progress did not end within "
                                       f"stop_grace_s ({self.grace_s:g} s): stopping now; it is abandoned"
                                       f"{f' ({busy})' if busy else ''}, every completed output is still written")
            raise KeyboardInterrupt
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
                grace = f" (within stop_grace_s, {self.grace_s:g} s)" if self.grace_s is not None else ""
                self._say(logging.WARNING, f"{name} received: stopping after this frame{grace} and writing outputs"
                                           f"{busy_note}; again: stop now, a third time: abort at once")
                self.request_stop(f"{name} received")
                self._start_grace(name)
                return
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            self._say(logging.WARNING, f"{name} received again: stopping now; the frame in progress is abandoned, "
                                       f"every completed output is still written{busy_note}; once more: abort at once")
            raise KeyboardInterrupt
        # phase "outputs": the files are being written; the watchdog bounds every plugin
        if self.count == 1:
            self.request_stop(f"{name} received")
            self._start_grace(name)
        left = 3 - self.count
        self._say(logging.WARNING, f"{name} received: writing the outputs{busy_note}; "
                                   f"{'once' if left == 1 else 'twice'} more to abort at once")

    def _abort(self, name: str) -> None:
        code = exit_code_for(self.first_signal or name)
        done = threading.Event()
        self._say(logging.ERROR, f"{name} received a third time: aborting at once (exit {code}); files already "
                                 f"written are kept", done)
        if self._writer is not None:
            done.wait(2.0)  # the message in run.log and on the console (not longer: this is an abort)
        os._exit(code)


def _flush_logs() -> None:
    for h in list(logging.getLogger("slam3r").handlers) + list(logging.getLogger().handlers):
        with contextlib.suppress(Exception):
            h.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
