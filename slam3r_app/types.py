"""Plain data types that flow through the frame loop.

Conventions:

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
from enum import Enum
from typing import Any, Literal, Optional

import numpy as np


class TrackingStatus(str, Enum):
    """How a frontend's estimate for one frame came about (``Estimate.status``).

    * ``tracked``: registered to the map as usual;
    * ``lost``: tracking failed; the pose is a placeholder (the rgbd frontend keeps the
      last good one) and no map takes the frame;
    * ``relocalized``: tracking had failed and the pose was recovered against the map
      (place recognition + geometric verification); the frame is trusted again.

    A ``str`` enum: ``status == "lost"`` works, and it serialises as its value.
    """

    TRACKED = "tracked"
    LOST = "lost"
    RELOCALIZED = "relocalized"


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
        status: :class:`TrackingStatus`, set by the frontend; the core then applies the one
            rule of "lost" (:func:`settle_status`) before any plugin sees the estimate.
        status_reason: why the frame is lost ("" when it is not), for logs.
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
    status: TrackingStatus = TrackingStatus.TRACKED
    status_reason: str = ""

    @property
    def lost(self) -> bool:
        """The frame's pose is not to be trusted and no map takes it (see :func:`settle_status`)."""
        return self.status == TrackingStatus.LOST


def settle_status(estimate: Estimate) -> Estimate:
    """The one definition of "lost", applied by the core to every estimate before any plugin sees it.

    A frame is lost when its frontend says so (``status = LOST``) or when it has no usable
    output: a confidence map that is zero (or NaN) everywhere. Every consumer (trajectory
    store, keyframe store, maps, loop closure, exports) then reads ``estimate.lost`` or the
    store's status, never its own rule. Returns ``estimate``, changed in place.
    """
    if estimate.status != TrackingStatus.LOST and estimate.confidence is not None:
        c = np.asarray(estimate.confidence)
        if c.size and not (c > 0).any():
            estimate.status = TrackingStatus.LOST
            estimate.status_reason = "confidence is zero everywhere"
    if estimate.status == TrackingStatus.LOST and not estimate.status_reason:
        estimate.status_reason = "tracking lost"
    return estimate


class ScaleProvenance(str, Enum):
    """Where the world's metric scale comes from (:class:`WorldScale`).

    * ``unknown``: nothing is known; the world is in the frontend's own units;
    * ``metric_frontend``: the frontend predicts metres (the rgbd frontend);
    * ``sensor_depth``: fitted from sensor depth against predicted depth (fusion);
    * ``given``: set by the user (``fusion.scale_value``).
    """

    UNKNOWN = "unknown"
    METRIC_FRONTEND = "metric_frontend"
    SENSOR_DEPTH = "sensor_depth"
    GIVEN = "given"


@dataclass(frozen=True)
class WorldScale:
    """The world's metric scale: metres per world unit, with where it comes from.

    A property of the world frame, like a pose, owned by the trajectory store
    (``context.trajectory.world_scale``) and changed only through a correction
    (:class:`PoseUpdate` with ``scale`` set). Metric poses are the stored poses with their
    translations multiplied by ``value`` (the world scaled about its origin).

    Attributes:
        value: metres per world unit (> 0; 1 when unknown or metric already).
        provenance: :class:`ScaleProvenance`.
        info: JSON-serialisable details (frames used, spread, ...).
    """

    value: float = 1.0
    provenance: ScaleProvenance = ScaleProvenance.UNKNOWN
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> bool:
        """Metric poses are in metres (the scale is known)."""
        return self.provenance != ScaleProvenance.UNKNOWN

    def note(self) -> str:
        """One line for file headers and logs."""
        if self.provenance == ScaleProvenance.METRIC_FRONTEND:
            return "scale: metric (the frontend predicts metres)"
        if self.provenance == ScaleProvenance.SENSOR_DEPTH:
            return (f"scale: metric, translations multiplied by {self.value:.6g} "
                    f"(estimated from sensor depth, see metrics.json metric_scale)")
        if self.provenance == ScaleProvenance.GIVEN:
            return f"scale: metric, translations multiplied by {self.value:.6g} (given: fusion.scale_value)"
        return "scale: as predicted, arbitrary units (no metric scale is known); evaluate with Sim(3) alignment"

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.value, "metric": self.metric, "provenance": self.provenance.value, "info": self.info}


@dataclass
class PoseUpdate:
    """A correction of past poses, proposed by a backend (loop closure, relocalisation, ...).

    The core applies it at a frame boundary (hook ``slam3r_propose_corrections``) and
    then broadcasts it (hook ``slam3r_poses_updated``). Transforms are ``[4, 4]``
    float64 camera-to-world matrices; with ``kind="sim3"`` their upper-left block may
    be ``s R`` (a monocular correction that also rescales the keyframe's geometry).

    Attributes:
        keyframes: ``{keyframe frame index: new world transform}``. Keyframes the
            proposer did not know yet (added after ``based_on_revision``) follow the
            newest keyframe of the update rigidly (``propagate``), as do all the
            frames attached to a moved keyframe.
        frames: ``{frame index: new camera-to-world pose}`` for single frames that are
            not keyframes: relocalisation of a lost frame (its status becomes
            ``relocalized``).
        kind: ``"se3"`` (metric RGB-D: rigid corrections) or ``"sim3"`` (scale free).
        source: the proposing plugin's name (for the log).
        reason: a short human-readable reason ("loop 12 -> 87 (inliers 143)").
        based_on_revision: the trajectory revision the proposer's computation started
            from (``context.trajectory.revision`` when it took its snapshot). Checked: an
            update that would undo a correction applied since is rejected
            (:class:`~slam3r_app.trajectory_store.StaleCorrection`); -1: "the current one".
        propagate: move keyframes newer than the newest one in ``keyframes`` with it.
        scale: a new :class:`WorldScale` for the world (None: unchanged). A scale update
            moves no stored pose; metric readers (``trajectory.metric_poses()``) see the new
            scale from the revision it is applied at.
        info: free-form, JSON-serialisable details (loop edges, residuals).

    Filled in by the core when the update is applied (read these in ``slam3r_poses_updated``):
        revision: the trajectory revision after the update.
        moved: ``{keyframe index: (old transform, new transform)}`` for every keyframe the
            update moved (the proposed ones and the propagated ones).
    """

    keyframes: dict[int, np.ndarray] = field(default_factory=dict)
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    kind: Literal["se3", "sim3"] = "se3"
    source: str = ""
    reason: str = ""
    based_on_revision: int = -1
    propagate: bool = True
    scale: Optional[WorldScale] = None
    info: dict[str, Any] = field(default_factory=dict)
    revision: int = -1
    moved: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def delta(self, keyframe: int) -> np.ndarray:
        """The world correction ``new @ inv(old)`` applied to ``keyframe`` (identity if it did not move)."""
        from .sim3 import sim3_inverse

        if keyframe not in self.moved:
            return np.eye(4)
        old, new = self.moved[keyframe]
        return new @ sim3_inverse(old)


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
    """One row of the estimated trajectory (a copy: editing it changes nothing in the run)."""

    index: int
    timestamp: float
    pose: np.ndarray  # [4, 4] float64 camera-to-world
    is_keyframe: bool = False
    status: str = TrackingStatus.TRACKED.value
