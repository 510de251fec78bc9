"""Tiny fake source / frontend plugins for app-level tests (no model, no data files).

The fake scene is analytic: the camera moves along +x at ``step`` metres per frame
looking down +z at a fronto-parallel plane ``depth`` metres away, so the true
poses and depths are known exactly.
"""
from __future__ import annotations

import os
import signal
from typing import Iterator, Optional

import numpy as np

from slam3r_app.errors import BadFrameError
from slam3r_app.frontend import Frontend
from slam3r_app.hookspecs import hookimpl
from slam3r_app.sources import FrameSource, select_indices
from slam3r_app.types import Estimate, Frame

K = np.array([[50.0, 0, 32.0], [0, 50.0, 24.0], [0, 0, 1]])


def true_pose(i: int, step: float = 0.05) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = i * step
    return T


class FakeSource(FrameSource):
    """``n`` frames of 64x48 with a plane at 2 m; optional bad frame / signal / size change."""

    name = "fake"
    has_depth = True
    has_gt = True

    def __init__(self, n: int = 10, first: int = 0, stride: int = 1, max_frames: Optional[int] = None,
                 bad_at: Optional[int] = None, sigint_at: Optional[int] = None, resize_at: Optional[int] = None):
        super().__init__()
        self.idx = select_indices(n, first, stride, max_frames)
        self.bad_at, self.sigint_at, self.resize_at = bad_at, sigint_at, resize_at

    def __len__(self) -> int:
        return len(self.idx)

    def _iter_raw(self) -> Iterator[Frame | BadFrameError]:
        for k, i in enumerate(self.idx):
            if self.sigint_at is not None and k == self.sigint_at:
                os.kill(os.getpid(), signal.SIGINT)
            if self.bad_at is not None and k == self.bad_at:
                yield BadFrameError(f"frame_{i:04d}.png: cannot decode image")
                continue
            h, w = (48, 64) if self.resize_at is None or k < self.resize_at else (40, 64)
            rgb = np.full((h, w, 3), 10 * k % 255, np.uint8)
            yield Frame(index=k, timestamp=100.0 + 0.1 * i, rgb=rgb, depth=np.full((h, w), 2.0, np.float32),
                        intrinsics=K.copy(), gt_pose=true_pose(i), name=f"frame_{i:04d}.png")


class FakeFrontend(Frontend):
    """Returns the exact pose (scaled by ``scale``) and the plane depth; counts forget_last calls."""

    name = "fake"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.cached: list[int] = []
        self.forgotten: list[int] = []
        self.closed = False

    def track(self, frame: Frame) -> Estimate:
        pose = frame.gt_pose.copy()
        pose[:3, 3] *= self.scale
        self.cached.append(frame.index)
        depth = np.full((frame.height, frame.width), 2.0 * self.scale, np.float32)
        return Estimate(index=frame.index, timestamp=frame.timestamp, pose=pose, intrinsics=frame.intrinsics,
                        depth=depth, confidence=np.ones_like(depth), depth_is_metric=self.scale == 1.0)

    def forget_last(self) -> None:
        self.forgotten.append(self.cached.pop())

    def stats(self) -> dict:
        return {"cache_frames": len(self.cached)}

    def close(self) -> None:
        self.closed = True


class FakePlugin:
    """Registers source type 'fake' and frontend 'fake'; keeps the last frontend for inspection."""

    def __init__(self, **source_kw) -> None:
        self.source_kw = source_kw
        self.frontend: Optional[FakeFrontend] = None

    @hookimpl
    def slam3r_make_source(self, source, context):
        if source.type != "fake":
            return None
        return FakeSource(n=self.source_kw.pop("n", 10), first=source.first, stride=source.stride,
                          max_frames=source.max_frames, **self.source_kw)

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        if name != "fake":
            return None
        self.frontend = FakeFrontend()
        return self.frontend


class Recorder:
    """Records every hook call in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def slam3r_run_start(self, context):
        self.calls.append("run_start")

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        self.calls.append(f"process_frame:{frame.index}:{'kf' if estimate.is_keyframe else '-'}")

    @hookimpl
    def slam3r_run_end(self, result, context):
        self.calls.append("run_end")

    @hookimpl
    def slam3r_export(self, result, context):
        self.calls.append("export")
        return {"recorder": str(context.out.write_text("recorder.txt", "\n".join(self.calls)))}

    @hookimpl
    def slam3r_evaluate(self, result, context):
        self.calls.append("evaluate")
        return {"recorder_frames": result.frames_seen}
