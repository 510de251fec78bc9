"""Issue 14, case 7: a viewer other machines can reach is view-only unless allowed.

Bound to ``0.0.0.0`` (or any non-loopback address) the viewer warns in the log and registers no
callback on its Pause / Reset / Save / Stop buttons (they are shown disabled), so no client can act
on the run; ``viewer.allow_remote_control: true`` turns them on, with a warning. Loopback keeps them.
"""
from __future__ import annotations

import logging
import socket

import pytest

from slam3r_app.context import RunControl
from slam3r_app.services import SharedServices
from slam3r_app.trajectory_store import TrajectoryStore

pytest.importorskip("viser")

from slam3r_plugins.viewer.plugin import LiveViewer, ViewerOptions, is_loopback  # noqa: E402


class _Ctx:
    def __init__(self) -> None:
        self.control = RunControl()
        self.state: dict = {}
        self.trajectory = TrajectoryStore()
        self.services = SharedServices()


def _viewer(host: str, allow: bool) -> LiveViewer:
    return LiveViewer(ViewerOptions(host=host, port=0, allow_remote_control=allow), _Ctx())


def _callbacks(v: LiveViewer) -> list[int]:
    return [len(b._impl.update_cb) for b in (v.btn_pause, v.btn_reset, v.btn_save, v.btn_stop)]


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
    assert not is_loopback("192.168.1.7")


def test_a_viewer_reachable_from_the_network_warns_and_has_no_controls(caplog):
    with caplog.at_level(logging.WARNING, logger="slam3r.viewer"):
        v = _viewer("0.0.0.0", allow=False)
    try:
        assert v.remote and not v.controls_enabled
        assert _callbacks(v) == [0, 0, 0, 0]  # nothing a client can trigger
        assert all(b.disabled for b in (v.btn_pause, v.btn_reset, v.btn_save, v.btn_stop))
        msg = " ".join(r.getMessage() for r in caplog.records)
        assert "other machines can reach" in msg and "controls (pause, reset, save, stop) are off" in msg
        assert "viewer.allow_remote_control" in msg
        with socket.create_connection(("127.0.0.1", v.server.get_port()), timeout=10):
            pass  # still serving the view
        v.hold(0.01)  # keep_open: the Stop button stays off too
        assert _callbacks(v)[3] == 0 and v.btn_stop.disabled
    finally:
        v.close()
    assert not v.context.control.paused and not v.context.control.stop_requested


def test_remote_control_can_be_allowed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="slam3r.viewer"):
        v = _viewer("0.0.0.0", allow=True)
    try:
        assert v.controls_enabled and _callbacks(v) == [1, 1, 1, 1]
        assert "anyone who can reach this port can pause, reset, save and stop" in caplog.text
    finally:
        v.close()


def test_loopback_keeps_the_controls_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="slam3r.viewer"):
        v = _viewer("127.0.0.1", allow=False)
    try:
        assert not v.remote and v.controls_enabled and _callbacks(v) == [1, 1, 1, 1]
        assert "other machines" not in caplog.text
    finally:
        v.close()
