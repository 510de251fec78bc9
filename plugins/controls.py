"""Keyboard controls in the terminal (plugin ``controls``).

While a run is going, single key presses act on ``context.control``:

====  =========================================
p     pause / resume
r     reset the map (the frontend restarts too)
s     save all outputs now and go on
q     stop: write the outputs and end the run
h ?   print this help
====  =========================================

The frame loop honours these between frames, and reset / save / stop also at
once while paused. Ctrl-C keeps working (stop after
the current frame; twice: at once), also while keys are read.

A reader thread is started only when stdin is a terminal and this process is in
its foreground (never under CI, a pipe, ``nohup`` or ``&``). The terminal is put
in cbreak mode (keys arrive without Enter, no echo; output and Ctrl-C unchanged)
and restored when the run ends, also on errors and at interpreter exit. Not on
Windows (no termios, and select() does not take a console there): use the viewer's
buttons or Ctrl-C.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import sys
import threading
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.hookspecs import hookimpl
from slam3r_app.signals import leave_signals_to_the_main_thread

log = logging.getLogger("slam3r.controls")

SECTION = "controls"
STATE_KEY = "_controls"

HELP = "keys: p pause/resume · r reset map · s save now · q stop (outputs are written) · h help"


class ControlsOptions(BaseModel):
    """``controls:`` single-key controls in the terminal (only when stdin is a terminal)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="read p/r/s/q keys from the terminal (ignored when stdin is not a TTY)")
    help: bool = Field(True, description="print the keys at the start of the run")


def handle_key(key: str, control: Any, say: Callable[[str], None] = log.info) -> Optional[str]:
    """Apply one key press to ``control`` (a :class:`~slam3r_app.context.RunControl`); returns the action."""
    k = key.lower()
    if k == "p":
        if control.paused:
            control.resume()
            say("resumed (p pauses)")
            return "resume"
        control.pause()
        say("paused (p resumes, q stops)")
        return "pause"
    if k == "r":
        control.request_reset()
        say("map reset requested")
        return "reset"
    if k == "s":
        control.request_save()
        say("saving outputs now (paused)" if control.paused else "saving outputs at the next frame")
        return "save"
    if k == "q":
        control.request_stop("q pressed")
        say("stopping: writing outputs (q pressed)")
        return "stop"
    if k in ("h", "?"):
        say(HELP)
        return "help"
    return None


def stdin_is_interactive(stream: Any = None) -> bool:
    """stdin is a terminal and this process is in its foreground (reading cannot stop the process)."""
    stream = sys.stdin if stream is None else stream
    try:
        if stream is None or not stream.isatty():
            return False
        fd = stream.fileno()
        return os.tcgetpgrp(fd) == os.getpgrp()
    except (AttributeError, OSError, ValueError):
        return False


class KeyReader:
    """Reads single keys from ``fd`` in a daemon thread and hands them to :func:`handle_key`.

    Args:
        fd: a terminal file descriptor (stdin, or a pty in tests).
        control: the run's :class:`~slam3r_app.context.RunControl`.
        cbreak: switch the terminal to cbreak mode while reading (restored by :meth:`stop`).
    """

    def __init__(self, fd: int, control: Any, cbreak: bool = True, say: Callable[[str], None] = log.info):
        self.fd = fd
        self.control = control
        self.say = say
        self.actions: list[str] = []
        self._stop = threading.Event()
        self._old_attrs = None
        self._cbreak = cbreak
        self.thread = threading.Thread(target=self._run, name="slam3r-keys", daemon=True)

    def start(self) -> "KeyReader":
        if self._cbreak:
            try:
                import termios
                import tty

                self._old_attrs = termios.tcgetattr(self.fd)
                tty.setcbreak(self.fd, termios.TCSANOW)
                atexit.register(self.restore)
            except (ImportError, OSError) as e:  # not a terminal after all: keys arrive with Enter
                log.debug("controls: cbreak mode unavailable (%s); keys need Enter", e)
                self._old_attrs = None
        self.thread.start()
        return self

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self.fd, 64)
            except (OSError, ValueError):  # closed under us
                return
            if not data:  # end of input
                return
            for ch in data.decode("utf-8", "ignore"):
                if ch.isspace():
                    continue
                action = handle_key(ch, self.control, self.say)
                if action:
                    self.actions.append(action)

    def restore(self) -> None:
        """Give the terminal its settings back (safe to call twice)."""
        attrs, self._old_attrs = self._old_attrs, None
        if attrs is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, attrs)

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        self.restore()


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: ControlsOptions}


@hookimpl
def slam3r_run_start(context):
    opts: ControlsOptions = context.options(SECTION)
    old = context.state.pop(STATE_KEY, None)
    if old is not None:
        old.stop()
    if not opts.enabled or not stdin_is_interactive():
        return
    reader = KeyReader(sys.stdin.fileno(), context.control).start()
    context.state[STATE_KEY] = reader
    if opts.help:
        log.info(HELP)


@hookimpl(tryfirst=True)
def slam3r_run_end(result, context):
    reader = context.state.pop(STATE_KEY, None)
    if reader is not None:
        reader.stop()
