"""What a run collected (:class:`RunResult`), handed to the run-end, evaluation and export hooks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .trajectory_store import TrajectoryStore
from .types import TrajectoryPose


@dataclass
class RunResult:
    """What a run collected; handed to the run-end, evaluation and export hooks.

    The poses are the app's trajectory store's (``trajectory``): always the current,
    corrected ones (loop closures, relocalisation), never a frozen copy, and metric where the
    world's scale is known (``trajectory.world_scale``). Only small
    per-frame data is kept for the whole run (poses, intrinsics, timestamps, GT poses);
    dense maps are consumed frame by frame by plugins.
    """

    trajectory: TrajectoryStore = field(default_factory=TrajectoryStore)
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

    @property
    def poses(self) -> list[TrajectoryPose]:
        """Every frame's current pose, in frame order (fresh copies), in the world's metric scale where it
        is known (``trajectory.world_scale``)."""
        return self.trajectory.rows(metric=True)

    @property
    def gt_poses(self) -> dict[int, np.ndarray]:
        """``{frame index: [4, 4] ground-truth camera-to-world}`` for frames that have one."""
        return self.trajectory.gt_poses()

    @property
    def intrinsics(self) -> dict[int, np.ndarray]:
        """``{frame index: [3, 3] intrinsics of the estimate}``."""
        return self.trajectory.intrinsics_dict()

    @property
    def keyframe_indices(self) -> list[int]:
        return self.trajectory.keyframe_indices()

    @property
    def num_keyframes(self) -> int:
        return self.trajectory.num_keyframes

    def timestamps(self) -> np.ndarray:
        return self.trajectory.timestamps()

    def pose_array(self) -> np.ndarray:
        """``[N, 4, 4]`` float64 camera-to-world poses in frame order (current, corrected), in the world's
        metric scale where it is known (``trajectory.world_scale``)."""
        return self.trajectory.metric_poses()
