"""Plain data types that flow through the frame loop.

Conventions (see DESIGN.md):

* Poses are camera-to-world 4x4 ``float64`` matrices in OpenCV camera axes
  (x right, y down, z forward).
* Intrinsics are 3x3 ``float64`` pinhole matrices in pixels of the image they
  belong to (``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``).
* Depth is ``float32`` in metres along the optical axis (z), ``0`` where
  unknown.  Learned frontends predict depth up to an unknown scale; an
  :class:`Estimate` says which with ``depth_is_metric``.
* Images are ``uint8`` RGB, shape ``[H, W, 3]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class Frame:
    """One frame from a source.

    Attributes:
        index: position in the stream after ``first``/``stride`` (0, 1, 2, ...).
        timestamp: seconds (the dataset's own timestamps where it has them).
        rgb: ``[H, W, 3]`` uint8 RGB image.
        depth: ``[H, W]`` float32 metric depth in metres (0 = invalid), or None.
        intrinsics: ``[3, 3]`` float64 camera matrix for ``rgb``, or None.
        gt_pose: ``[4, 4]`` float64 ground-truth camera-to-world pose, or None.
        name: where the frame came from (file name), for messages.
    """

    index: int
    timestamp: float
    rgb: np.ndarray
    depth: Optional[np.ndarray] = None
    intrinsics: Optional[np.ndarray] = None
    gt_pose: Optional[np.ndarray] = None
    name: str = ""

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass
class Estimate:
    """A frontend's estimate for one frame, at the source resolution.

    Attributes:
        index, timestamp: copied from the :class:`Frame`.
        pose: ``[4, 4]`` float64 camera-to-world (OpenCV axes). The first frame of
            a stream is the world origin for STream3R.
        intrinsics: ``[3, 3]`` float64, in pixels of the source image.
        depth: ``[H, W]`` float32 depth (metres if ``depth_is_metric``).
        confidence: ``[H, W]`` float32, larger is more confident; 0 = invalid.
        points: ``[H, W, 3]`` float32 world points, or None.
        depth_is_metric: True when depth and pose translation are in metres.
        is_keyframe: set by the keyframe decision.
        extras: free-form per-frame data a frontend wants to pass on.
    """

    index: int
    timestamp: float
    pose: np.ndarray
    intrinsics: np.ndarray
    depth: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None
    points: Optional[np.ndarray] = None
    depth_is_metric: bool = False
    is_keyframe: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyframeDecision:
    """Result of the keyframe hook.

    Attributes:
        is_keyframe: the frame becomes a keyframe.
        keep_in_cache: the frontend keeps the frame in its memory (for STream3R:
            its KV cache). Defaults to ``is_keyframe``.
        reason: a short human-readable reason, logged with the keyframe list.
    """

    is_keyframe: bool
    keep_in_cache: Optional[bool] = None
    reason: str = ""

    @property
    def keep(self) -> bool:
        return self.is_keyframe if self.keep_in_cache is None else bool(self.keep_in_cache)


@dataclass
class TrajectoryPose:
    """One row of the estimated trajectory kept for the whole run (small)."""

    index: int
    timestamp: float
    pose: np.ndarray  # [4, 4] float64 camera-to-world
    is_keyframe: bool = False


@dataclass
class RunResult:
    """What a run collected; handed to the run-end, evaluation and export hooks.

    Only small per-frame data is kept for the whole run (poses, intrinsics,
    timestamps, GT poses); dense maps are consumed frame by frame by plugins.
    """

    poses: list[TrajectoryPose] = field(default_factory=list)
    gt_poses: dict[int, np.ndarray] = field(default_factory=dict)
    intrinsics: dict[int, np.ndarray] = field(default_factory=dict)
    frames_seen: int = 0
    frames_skipped: int = 0
    stopped_early: bool = False
    stop_reason: str = ""
    ended_by: str = "end"  # "end" (source exhausted), "user" (stop/Ctrl-C/SIGTERM), "error"
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    plugin_errors: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def keyframe_indices(self) -> list[int]:
        return [p.index for p in self.poses if p.is_keyframe]

    def timestamps(self) -> np.ndarray:
        return np.array([p.timestamp for p in self.poses], dtype=np.float64)

    def pose_array(self) -> np.ndarray:
        """``[N, 4, 4]`` float64 camera-to-world poses in frame order."""
        if not self.poses:
            return np.zeros((0, 4, 4))
        return np.stack([p.pose for p in self.poses])
