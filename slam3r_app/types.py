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
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .trajectory_store import TrajectoryStore


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
        status: :class:`TrackingStatus`. A frontend that only sets the older
            ``extras["tracking"] = "lost"`` gets ``status`` set from it by the pipeline
            (and ``extras["tracking"]`` always mirrors ``status`` for older plugins).
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

    @property
    def lost(self) -> bool:
        return self.status == TrackingStatus.LOST


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
        based_on_revision: the trajectory revision the proposer's optimisation started
            from (``context.trajectory.revision`` when it took its snapshot).
        propagate: move keyframes newer than the newest one in ``keyframes`` with it.
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


@dataclass
class RunResult:
    """What a run collected; handed to the run-end, evaluation and export hooks.

    The poses are the app's trajectory store's (``trajectory``): always the current,
    corrected ones (loop closures, relocalisation), never a frozen copy. Only small
    per-frame data is kept for the whole run (poses, intrinsics, timestamps, GT poses);
    dense maps are consumed frame by frame by plugins.
    """

    trajectory: Optional["TrajectoryStore"] = None
    frames_seen: int = 0
    frames_skipped: int = 0
    stopped_early: bool = False
    stop_reason: str = ""
    ended_by: str = "end"  # "end" (source exhausted), "user" (stop/Ctrl-C/SIGTERM), "error"
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    plugin_errors: dict[str, str] = field(default_factory=dict)
    #: files that could not be written completely (full disk, removed run folder): ``{who: message}``,
    #: ``who`` a plugin's name or ``"core"``; a run with any ends with exit 1
    write_errors: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def _store(self) -> "TrajectoryStore":
        if self.trajectory is None:
            from .trajectory_store import TrajectoryStore

            self.trajectory = TrajectoryStore()
        return self.trajectory

    @property
    def poses(self) -> list[TrajectoryPose]:
        """Every frame's current pose, in frame order (fresh copies)."""
        return self._store().rows()

    @property
    def gt_poses(self) -> dict[int, np.ndarray]:
        """``{frame index: [4, 4] ground-truth camera-to-world}`` for frames that have one."""
        return self._store().gt_poses()

    @property
    def intrinsics(self) -> dict[int, np.ndarray]:
        """``{frame index: [3, 3] intrinsics of the estimate}``."""
        return self._store().intrinsics_dict()

    @property
    def keyframe_indices(self) -> list[int]:
        return self._store().keyframe_indices()

    @property
    def num_keyframes(self) -> int:
        return self._store().num_keyframes

    def timestamps(self) -> np.ndarray:
        return self._store().timestamps()

    def pose_array(self) -> np.ndarray:
        """``[N, 4, 4]`` float64 camera-to-world poses in frame order (current, corrected)."""
        return self._store().poses()
