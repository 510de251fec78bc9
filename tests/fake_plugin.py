"""A plugin *file* (loaded via ``plugins: [tests/fake_plugin.py]``) providing the fake
source type ``fake`` and frontend ``fake`` from tests/fakes.py, for subprocess tests (``fake_half``: the
same frontend in half-metre units, ``depth_is_metric`` False, so that fusion estimates a metric scale of 2;
``fake_lost``: every frame reported lost; ``fake_stuck``: stuck in Python code from frame 3 on, after
writing the file named by the environment variable ``SLAM3R_TEST_MARKER``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slam3r_app.hookspecs import hookimpl  # noqa: E402
from tests.fakes import FakeFrontend, FakeSource  # noqa: E402

FRONTENDS = ("fake", "fake_half", "fake_lost", "fake_stuck")
SOURCE_TYPES = ("fake",)


@hookimpl
def slam3r_make_source(source, context):
    if source.type == "fake":
        return FakeSource(n=10, first=source.first, stride=source.stride, max_frames=source.max_frames)
    return None


@hookimpl
def slam3r_make_frontend(name, context):
    if name == "fake_half":
        return FakeFrontend(scale=0.5)
    if name == "fake_lost":
        return _LostFrontend()
    if name == "fake_stuck":
        return _StuckFrontend()
    return FakeFrontend() if name == "fake" else None


class _LostFrontend(FakeFrontend):
    """Tracking lost on every frame (the pose is a placeholder)."""

    def track(self, frame):
        from slam3r_app.types import TrackingStatus

        est = super().track(frame)
        est.status = TrackingStatus.LOST
        return est


class _StuckFrontend(FakeFrontend):
    """Never returns from frame 3 (a busy loop in Python, as a frontend stuck in its own code)."""

    def track(self, frame):
        if frame.index == 3:
            import os
            import threading

            marker = os.environ.get("SLAM3R_TEST_MARKER")
            if marker:
                Path(marker).write_text("stuck\n")
            never = threading.Event()
            while True:
                never.wait(0.05)
        return super().track(frame)
