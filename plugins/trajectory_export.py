"""Trajectory export (plugin ``trajectory``): keyframe, KITTI and 4x4-matrix files, and mid-run copies.

Files in the run folder (each rewritten atomically, so a reader -- or a run that
is interrupted -- always finds a complete, valid file):

* ``trajectory.txt`` and ``scale.json``: the core's (:func:`slam3r_app.trajectory.write_world_trajectory`,
  written at the end of the run and on "save now", in the world's final scale); this plugin
  has the core's writer refresh them every ``every_n`` frames during the run and after
  every pose correction (when ``every_n`` > 0), so that a live reader sees the trajectory grow;
* ``trajectory_keyframes.txt``: TUM, keyframes only;
* ``trajectory_kitti.txt`` (format ``kitti``): 12 numbers a line, no timestamps;
* ``trajectory_matrices.txt`` (format ``matrix``): timestamp + 16 numbers a line.

The poses are the core's trajectory store's (``context.trajectory``): the current,
corrected ones, in the world's metric scale where it is known (``context.trajectory.world_scale``:
the frontend's metres, a scale fitted from sensor depth, or a given one) unless
``metric_scale`` is off; each TUM header says which scale the file is in.
"""
from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slam3r_app.hookspecs import hookimpl
from slam3r_app.trajectory import write_kitti, write_matrices, write_tum, write_world_trajectory

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
        default_factory=lambda: ["tum"],
        description="file formats to write (tum: trajectory.txt, which the core always writes; kitti; matrix)")
    keyframes: bool = Field(True, description="also write trajectory_keyframes.txt (TUM, keyframes only)")
    every_n: int = Field(10, ge=0, description="rewrite the files every N frames during the run (0: only at the end)")
    metric_scale: bool = Field(
        True, description="this plugin's files in the world's metric scale (context.trajectory.world_scale) when it is known")

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one format is needed (tum, kitti, matrix)")
        return list(dict.fromkeys(v))


def write_files(context, include_core: bool = False) -> dict[str, str]:
    """Write this plugin's files from ``context.trajectory`` (current poses); with ``include_core``, also have
    the core's writer refresh ``trajectory.txt`` and ``scale.json`` (mid-run)."""
    opts: TrajectoryOptions = context.options(SECTION)
    traj = context.trajectory
    written: dict[str, str] = write_world_trajectory(context.out.path, traj) if include_core else {}
    scale = traj.world_scale
    if opts.metric_scale or not scale.metric:
        poses, note = traj.metric_poses(), scale.note()
    else:
        poses, note = traj.poses(), ("scale: as predicted, arbitrary units (trajectory.metric_scale is off); "
                                     "evaluate with Sim(3) alignment")
    stamps, kf = traj.timestamps(), traj.keyframe_flags()
    out = context.out
    if opts.keyframes:
        kh = (f"slam3r estimated trajectory, keyframes only ({int(kf.sum())}), camera-to-world (OpenCV axes), "
              f"revision {traj.revision}; {note}")
        written["trajectory_keyframes"] = str(write_tum(out.file(FILES["tum_keyframes"]), stamps[kf], poses[kf], header=kh))
    if "kitti" in opts.formats:
        written["trajectory_kitti"] = str(write_kitti(out.file(FILES["kitti"]), poses))
    if "matrix" in opts.formats:
        written["trajectory_matrices"] = str(write_matrices(out.file(FILES["matrix"]), stamps, poses))
    return written


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: TrajectoryOptions}


@hookimpl(trylast=True)
def slam3r_process_frame(frame, estimate, context):
    n = context.options(SECTION).every_n
    frames = len(context.trajectory)
    if n and frames and frames % n == 0:
        write_files(context, include_core=True)


@hookimpl
def slam3r_poses_updated(update, context):
    """A correction moved past poses (or changed the world's scale): the mid-run files follow at once."""
    if context.options(SECTION).every_n:
        write_files(context, include_core=True)


@hookimpl
def slam3r_export(result, context):
    return write_files(context)
