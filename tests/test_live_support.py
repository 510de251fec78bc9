"""Helpers for the live-mapping tests (no tests in here).

Also a plugin *file*: ``plugins: [tests/test_live_support.py]`` registers

* frontend ``slowfake``: a frontend for colour-only frames (a camera) that takes
  ``SLAM3R_TEST_DELAY`` seconds per frame (default 0.08): slower than a 30 fps
  camera, so a live source must drop frames. It returns a smooth analytic depth
  (a tilted plane with a bump) at a pose moving along +x, with full confidence;
* frontend ``oracle``: the ground-truth pose and the sensor depth of an RGB-D
  source (the synthetic room), for a map whose look is known (browser test);
* source type ``unplugcam``: a :class:`CameraSource` on a fake capture that
  delivers ``SLAM3R_TEST_UNPLUG_AFTER`` frames (default 12) at about 100 fps and
  then nothing, as an unplugged USB camera does.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from slam3r_app.frontend import Frontend
from slam3r_app.hookspecs import hookimpl
from slam3r_app.types import Estimate, Frame

REPO = Path(__file__).resolve().parents[1]


def write_video(path, n: int = 45, fps: float = 30.0, size: tuple[int, int] = (96, 72)) -> Path:
    """A small MJPG .avi with a moving colour pattern (``size`` is width, height)."""
    import cv2

    w, h = size
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi files here"
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.stack([(xx * 255 // max(w - 1, 1) + 3 * i) % 256, (yy * 255 // max(h - 1, 1)) % 256,
                        np.full_like(xx, (40 + 5 * i) % 256)], axis=-1).astype(np.uint8)
        writer.write(img)
    writer.release()
    return path


def default_K(width: int, height: int) -> np.ndarray:
    f = 0.8 * width
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], dtype=np.float64)


class SlowFrontend(Frontend):
    """Colour-only frontend taking ``delay`` s per frame (see the module docstring)."""

    name = "slowfake"

    def __init__(self, delay: Optional[float] = None) -> None:
        self.delay = float(os.environ.get("SLAM3R_TEST_DELAY", "0.08")) if delay is None else float(delay)
        self.tracked: list[int] = []
        self.resets = 0
        self.closed = False

    def track(self, frame: Frame) -> Estimate:
        time.sleep(self.delay)
        h, w = frame.height, frame.width
        K = frame.intrinsics if frame.intrinsics is not None else default_K(w, h)
        k = len(self.tracked)
        self.tracked.append(frame.index)
        pose = np.eye(4)
        pose[0, 3] = 0.05 * k
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        depth = 2.0 + 0.5 * xx / w + 0.3 * np.exp(-(((xx - w / 2) / (0.2 * w)) ** 2 + ((yy - h / 2) / (0.2 * h)) ** 2))
        depth = depth.astype(np.float32)
        return Estimate(index=frame.index, timestamp=frame.timestamp, pose=pose, intrinsics=np.asarray(K, float),
                        depth=depth, confidence=np.ones_like(depth), depth_is_metric=True)

    def reset(self) -> None:
        self.resets += 1
        self.tracked.clear()

    def stats(self) -> dict:
        return {"cache_frames": len(self.tracked)}

    def close(self) -> None:
        self.closed = True


class OracleFrontend(Frontend):
    """Ground-truth pose and sensor depth (needs an RGB-D source with GT, e.g. ``synthetic``)."""

    name = "oracle"
    needs_depth = True
    metric = True

    def track(self, frame: Frame) -> Estimate:
        depth = np.asarray(frame.depth, dtype=np.float32)
        conf = np.where(depth > 0, 1.0, 0.0).astype(np.float32)
        return Estimate(index=frame.index, timestamp=frame.timestamp, pose=np.asarray(frame.gt_pose, float),
                        intrinsics=np.asarray(frame.intrinsics, float), depth=depth, confidence=conf,
                        depth_is_metric=True)


class _FakeCaptureBase:
    """What both fake ``cv2.VideoCapture`` objects answer alike (open until released, no properties)."""

    released = False

    def isOpened(self) -> bool:
        return not self.released

    def set(self, prop, value) -> bool:
        return True

    def get(self, prop) -> float:
        return 0.0


class UnpluggingCapture(_FakeCaptureBase):
    """A cv2.VideoCapture stand-in: ``n`` frames at ``period`` s, then every read fails (unplugged)."""

    def __init__(self, n: int = 12, period: float = 0.01, size: tuple[int, int] = (64, 48)) -> None:
        self.n, self.period, self.size = n, period, size
        self.i = 0
        self.released = False
        self.lock = threading.Lock()

    def read(self):
        time.sleep(self.period)
        with self.lock:
            if self.released or self.i >= self.n:
                return False, None
            self.i += 1
            w, h = self.size
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (np.arange(w) * 4 + self.i) % 256
            img[..., 1] = 128
            return True, img

    def release(self) -> None:
        self.released = True


CAPTURES: list[UnpluggingCapture] = []


@hookimpl
def slam3r_make_frontend(name, context):
    if name == "slowfake":
        fe = SlowFrontend()
        context.state["test_frontend"] = fe
        return fe
    if name == "oracle":
        return OracleFrontend()
    return None


@hookimpl
def slam3r_make_source(source, context):
    if source.type != "unplugcam":
        return None
    from slam3r_datasets import CameraSource

    n = int(os.environ.get("SLAM3R_TEST_UNPLUG_AFTER", "12"))

    def factory(target):
        cap = UnpluggingCapture(n=n)
        CAPTURES.append(cap)
        return cap

    return CameraSource(0, capture_factory=factory, max_frames=source.max_frames, frame_timeout=5.0)


class GatedCapture(_FakeCaptureBase):
    """A cv2.VideoCapture stand-in under the test's control: the first ``free`` frames come at once (a
    camera capturing while the application starts up), each later one only when :meth:`release_one`
    lets it through; after ``total`` frames every read fails (unplugged). No timing is involved."""

    def __init__(self, free: int = 20, total: int = 22, size: tuple[int, int] = (64, 48)) -> None:
        self.free, self.total, self.size = free, total, size
        self.i = 0
        self.released = False
        self.cond = threading.Condition()
        self.allowed = free

    def read(self):
        with self.cond:
            while self.i >= self.allowed and self.i < self.total and not self.released:
                self.cond.wait(0.05)
            if self.released or self.i >= self.total:
                return False, None
            self.i += 1
            self.cond.notify_all()
            w, h = self.size
            return True, np.full((h, w, 3), self.i % 256, np.uint8)

    def release_one(self) -> None:
        with self.cond:
            self.allowed += 1
            self.cond.notify_all()

    def wait_delivered(self, n: int, guard_s: float = 120.0) -> None:
        """Until ``n`` frames were read (``guard_s`` only catches a hang)."""
        with self.cond:
            assert self.cond.wait_for(lambda: self.i >= n, guard_s), f"only {self.i} of {n} frames were read"

    def release(self) -> None:
        with self.cond:
            self.released = True
            self.cond.notify_all()


class Handshake:
    """A plugin that, at the given frames, hands control to the test's thread and waits until it has
    acted (``steps`` maps a frame index to a name): what another thread (viewer button, key) does at a
    known point of the run, with no sleep."""

    def __init__(self, *at: int) -> None:
        self.at = set(at)
        self.reached: dict[int, threading.Event] = {i: threading.Event() for i in at}
        self.done: dict[int, threading.Event] = {i: threading.Event() for i in at}

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        if frame.index in self.at:
            self.reached[frame.index].set()
            assert self.done[frame.index].wait(120), "the test never acted"
