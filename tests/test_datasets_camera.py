"""Live camera source: newest frame, dropped-frame count, release on every exit path, clear open errors.

No camera is needed: a fake capture object stands in for ``cv2.VideoCapture``
(and a video file opened through OpenCV as a "stream URL").
"""
from __future__ import annotations

import gc
import threading
import time

import cv2
import numpy as np
import pytest

from slam3r_app.errors import SourceError
from slam3r_datasets import CameraSource, probe_cameras


class FakeCapture:
    """Delivers a frame every ``period`` s (value = frame number), ``n`` frames (None: forever)."""

    def __init__(self, n=None, period=0.002, size=(48, 64), opened=True):
        self.n, self.period, self.size, self.opened = n, period, size, opened
        self.i = 0
        self.released = False
        self.props = {}
        self.lock = threading.Lock()

    def isOpened(self):
        return self.opened and not self.released

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def read(self):
        time.sleep(self.period)
        with self.lock:
            if self.released or (self.n is not None and self.i >= self.n):
                return False, None
            self.i += 1
            return True, np.full((*self.size, 3), self.i % 256, np.uint8)

    def release(self):
        self.released = True


def factory_of(cap):
    made = []

    def f(target):
        made.append(target)
        return cap

    f.made = made
    return f


def _wait_until(cond, guard_s: float = 120.0) -> None:
    """Poll ``cond`` until it holds (``guard_s`` only catches a hang: no timing margin)."""
    deadline = time.monotonic() + guard_s
    while not cond():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.002)


def test_camera_is_live_gives_newest_frames_and_counts_dropped():
    cap = FakeCapture(period=0.002)
    src = CameraSource(0, capture_factory=factory_of(cap), max_frames=5, width=64, height=48, fps=30)
    assert src.is_live and src.length() is None
    assert (src.width, src.height) == (64, 48)
    assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 64 and cap.props[cv2.CAP_PROP_FPS] == 30
    seen = []
    for f in src.frames():
        seen.append(int(f.rgb[0, 0, 0]))
        delivered = cap.i
        _wait_until(lambda delivered=delivered: cap.i >= delivered + 3)  # a slow consumer: the camera runs 3 frames ahead
    assert len(seen) == 5 and seen == sorted(seen)
    assert src.dropped >= 8  # stale frames were thrown away, not queued (at least 2 between two frames taken)
    assert np.diff(seen).max() > 1
    assert cap.released and src.released  # max_frames reached: the device is released
    assert src.info()["dropped"] == src.dropped


def test_camera_first_and_stride():
    cap = FakeCapture(period=0.01)
    src = CameraSource(0, capture_factory=factory_of(cap), first=2, stride=2, max_frames=3)
    frames = list(src.frames())
    assert [f.index for f in frames] == [0, 1, 2]
    assert cap.released


def test_camera_release_on_close_with_and_gc():
    cap = FakeCapture()
    src = CameraSource(0, capture_factory=factory_of(cap))
    src.close()
    src.close()  # twice is fine
    assert cap.released
    cap = FakeCapture()
    with CameraSource(0, capture_factory=factory_of(cap)) as src:
        next(src.frames())
    assert cap.released
    cap = FakeCapture()
    src = CameraSource(0, capture_factory=factory_of(cap))
    del src
    gc.collect()
    _wait_until(lambda: cap.released)


def test_camera_release_when_consumer_raises_or_stops():
    cap = FakeCapture()
    src = CameraSource(0, capture_factory=factory_of(cap))
    with pytest.raises(RuntimeError):
        for _ in src.frames():
            raise RuntimeError("consumer failed")
    gc.collect()
    assert cap.released
    cap = FakeCapture()
    src = CameraSource(0, capture_factory=factory_of(cap))
    gen = src.frames()
    next(gen)
    gen.close()
    assert cap.released


def test_camera_that_stops_delivering_ends_the_stream():
    cap = FakeCapture(n=4, period=0.005)
    src = CameraSource(0, capture_factory=factory_of(cap), frame_timeout=3)
    frames = list(src.frames())
    assert 1 <= len(frames) <= 4
    assert "stopped delivering frames" in src.end_reason
    assert cap.released


def test_camera_without_frames_fails_clearly():
    cap = FakeCapture(n=0)
    with pytest.raises(SourceError, match=r"camera 0 opened but delivered no frame: every read failed"):
        CameraSource(0, capture_factory=factory_of(cap), open_timeout=2)
    assert cap.released


def test_nonexistent_index_fails_fast_and_lists_openable_ones():
    with pytest.raises(SourceError) as e:
        CameraSource(57)
    msg = str(e.value)
    assert "cannot open camera index 57" in msg
    assert "cameras that can be opened:" in msg or "no camera could be opened at indices 0-5" in msg

    def fake(target):  # indices 1 and 3 exist
        return FakeCapture(opened=target in (1, 3))

    assert probe_cameras(factory=fake) == [1, 3]
    with pytest.raises(SourceError, match=r"cannot open camera index 7 \(cameras that can be opened: 1, 3\)"):
        CameraSource(7, capture_factory=fake)


def test_camera_open_timeout_and_url_message():
    """The open gives up after open_timeout while the device is still opening (it never returns here
    until the test lets it: the source did not wait for it)."""
    release, opening, returned = threading.Event(), threading.Event(), threading.Event()

    def slow(target):
        opening.set()
        release.wait(600)
        returned.set()
        return FakeCapture()

    try:
        with pytest.raises(SourceError, match=r"cannot open camera stream 'rtsp://example.invalid/x' within 0.5 s"):
            CameraSource("rtsp://example.invalid/x", capture_factory=slow, open_timeout=0.5)
        assert opening.is_set() and not returned.is_set()
    finally:
        release.set()


def test_camera_digit_string_is_an_index():
    f = factory_of(FakeCapture())
    src = CameraSource("0", capture_factory=f)
    assert f.made == [0] and src.camera == 0
    src.close()


def test_camera_on_a_stream_url_through_opencv(tmp_path):
    path = tmp_path / "stream.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for i in range(40):
        w.write(np.full((48, 64, 3), 5 * i, np.uint8))
    w.release()
    src = CameraSource(str(path), max_frames=3)
    frames = list(src.frames())
    assert len(frames) == 3 and frames[0].rgb.shape == (48, 64, 3)
    assert src.released
