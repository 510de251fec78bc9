"""Terminal controls: key -> RunControl, the reader thread on a pty, the terminal restored, no TTY -> no thread."""
from __future__ import annotations

import io
import os
import sys
import time

import pytest

from slam3r_app.context import RunControl
from slam3r_plugins.controls import KeyReader, handle_key, stdin_is_interactive


def test_keys_act_on_the_run_control():
    ctl = RunControl()
    said = []
    assert handle_key("p", ctl, said.append) == "pause" and ctl.paused
    assert handle_key("P", ctl, said.append) == "resume" and not ctl.paused
    assert handle_key("s", ctl, said.append) == "save" and ctl.take_save()
    assert handle_key("r", ctl, said.append) == "reset" and ctl.take_reset()
    assert handle_key("h", ctl, said.append) == "help" and "q stop" in said[-1]
    assert handle_key("x", ctl, said.append) is None
    assert not ctl.stop_requested
    assert handle_key("q", ctl, said.append) == "stop"
    assert ctl.stop_requested and ctl.stop_reason == "q pressed"


def test_not_a_terminal_means_no_reader():
    assert not stdin_is_interactive(io.StringIO("q\n"))
    assert not stdin_is_interactive(None)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_reader_thread_on_a_pty_and_terminal_restored():
    import pty
    import termios

    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        ctl = RunControl()
        reader = KeyReader(slave, ctl, cbreak=True, say=lambda m: None).start()
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ICANON and not during[3] & termios.ECHO  # cbreak: keys without Enter
        os.write(master, b"p")
        deadline = time.monotonic() + 120  # a hang guard, not a timing margin
        while not ctl.paused and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ctl.paused
        os.write(master, b"ps q")
        deadline = time.monotonic() + 120  # a hang guard, not a timing margin
        while not ctl.stop_requested and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.actions == ["pause", "resume", "save", "stop"]
        reader.stop()
        assert not reader.thread.is_alive()
        assert termios.tcgetattr(slave) == before
        reader.stop()  # twice is fine
    finally:
        os.close(master)
        os.close(slave)
