"""Trajectory export (plugin ``trajectory``): TUM, KITTI and 4x4-matrix files.

Files in the run folder (each rewritten atomically, so a reader -- or a run that
is interrupted -- always finds a complete, valid file):

* ``trajectory.txt``: TUM ``timestamp tx ty tz qx qy qz qw`` of every frame, with
  the source's timestamps; camera-to-world, OpenCV camera axes;
* ``trajectory_keyframes.txt``: the same for keyframes only;
* ``trajectory_kitti.txt`` (format ``kitti``): 12 numbers a line, no timestamps;
* ``trajectory_matrices.txt`` (format ``matrix``): timestamp + 16 numbers a line.

The poses are the core's trajectory store's (``context.trajectory``): the current,
corrected ones. The files are rewritten every ``every_n`` frames during the run,
after every pose correction (loop closure, relocalisation; when ``every_n`` > 0),
at the run's end and on "save now". When another backend estimated the metric scale
(``context.state["metric_scale"]``, from RGB-D sensor depth) and ``metric_scale``
is on, translations are multiplied by it; the TUM header says which scale the
file is in.
"""
from __future__ import annotations

import logging
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from slam3r_app.hookspecs import hookimpl
from slam3r_app.trajectory import write_kitti, write_matrices, write_tum

from .maps.common import scale_pose

log = logging.getLogger("slam3r.trajectory")

SECTION = "trajectory"

FILES = {
    "tum": "trajectory.txt",
    "tum_keyframes": "trajectory_keyframes.txt",
    "kitti": "trajectory_kitti.txt",
    "matrix": "trajectory_matrices.txt",
}


class TrajectoryOptions(BaseModel):
    """``trajectory:`` estimated camera trajectory files."""

    model_config = ConfigDict(extra="forbid")

    formats: list[Literal["tum", "kitti", "matrix"]] = Field(
        default_factory=lambda: ["tum"], description="file formats to write (tum is always useful for `eval`)")
    keyframes: bool = Field(True, description="also write trajectory_keyframes.txt (TUM, keyframes only)")
    every_n: int = Field(10, ge=0, description="rewrite the files every N frames during the run (0: only at the end)")
    metric_scale: bool = Field(
        True, description="multiply translations by context.state['metric_scale'] when a backend estimated it")

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one format is needed (tum, kitti, matrix)")
        return list(dict.fromkeys(v))


def _scale(context, opts: TrajectoryOptions, depth_is_metric: Optional[bool]) -> tuple[float, str]:
    s = context.state.get("metric_scale")
    if depth_is_metric:
        return 1.0, "scale: metric (the frontend predicts metres)"
    if opts.metric_scale and s is not None and np.isfinite(s) and s > 0:
        return float(s), (f"scale: metric, translations multiplied by {float(s):.6g} "
                          f"(estimated from sensor depth, see metrics.json metric_scale)")
    why = "trajectory.metric_scale is off" if opts.metric_scale is False and s is not None else \
        "no metric scale was estimated"
    return 1.0, f"scale: as predicted, arbitrary units ({why}); evaluate with Sim(3) alignment"


def _rows(context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamps [N], poses [N,4,4], keyframe flags [N])``: the core's current, corrected trajectory."""
    traj = context.trajectory
    if len(traj) == 0:
        return np.zeros(0), np.zeros((0, 4, 4)), np.zeros(0, dtype=bool)
    return traj.timestamps(), traj.poses(), traj.keyframe_flags()


def write_files(context, depth_is_metric: Optional[bool]) -> dict[str, str]:
    """Write every configured trajectory file from ``context.trajectory`` (current poses)."""
    opts: TrajectoryOptions = context.options(SECTION)
    s, scale_note = _scale(context, opts, depth_is_metric)
    stamps, poses, kf = _rows(context)
    poses = scale_pose(poses, s) if len(poses) else poses
    revision = context.trajectory.revision
    out = context.out
    written: dict[str, str] = {}
    n = len(stamps)
    header = (f"slam3r estimated trajectory, {n} frames, camera-to-world (OpenCV axes), revision {revision}; "
              f"{scale_note}")
    if "tum" in opts.formats:
        written["trajectory"] = str(write_tum(out.file(FILES["tum"]), stamps, poses, header=header))
    if opts.keyframes:
        kh = (f"slam3r estimated trajectory, keyframes only ({int(kf.sum())}), camera-to-world (OpenCV axes), "
              f"revision {revision}; {scale_note}")
        written["trajectory_keyframes"] = str(write_tum(out.file(FILES["tum_keyframes"]), stamps[kf], poses[kf], header=kh))
    if "kitti" in opts.formats:
        written["trajectory_kitti"] = str(write_kitti(out.file(FILES["kitti"]), poses))
    if "matrix" in opts.formats:
        written["trajectory_matrices"] = str(write_matrices(out.file(FILES["matrix"]), stamps, poses))
    context.state["trajectory_scale"] = s
    return written


def _metric(context) -> Optional[bool]:
    return context.state.get("_trajectory_metric")


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: TrajectoryOptions}


@hookimpl
def slam3r_run_start(context):
    context.state.pop("_trajectory_metric", None)


@hookimpl(trylast=True)
def slam3r_process_frame(frame, estimate, context):
    context.state["_trajectory_metric"] = bool(estimate.depth_is_metric)
    n = context.options(SECTION).every_n
    frames = len(context.trajectory)
    if n and frames and frames % n == 0:
        write_files(context, _metric(context))


@hookimpl
def slam3r_poses_updated(update, context):
    """A correction moved past poses: the mid-run files follow at once (when they are written mid-run)."""
    if context.options(SECTION).every_n:
        write_files(context, _metric(context))


@hookimpl
def slam3r_export(result, context):
    return write_files(context, _metric(context))
