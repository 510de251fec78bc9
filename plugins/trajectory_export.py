"""Trajectory export (plugin ``trajectory``): TUM, KITTI and 4x4-matrix files.

Files in the run folder (each rewritten atomically, so a reader -- or a run that
is interrupted -- always finds a complete, valid file):

* ``trajectory.txt``: TUM ``timestamp tx ty tz qx qy qz qw`` of every frame, with
  the source's timestamps; camera-to-world, OpenCV camera axes;
* ``trajectory_keyframes.txt``: the same for keyframes only;
* ``trajectory_kitti.txt`` (format ``kitti``): 12 numbers a line, no timestamps;
* ``trajectory_matrices.txt`` (format ``matrix``): timestamp + 16 numbers a line.

The files are rewritten every ``every_n`` frames during the run, at the run's end
and on "save now". When another backend estimated the metric scale
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

from ._common import scale_pose

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


class _TrajState:
    def __init__(self) -> None:
        self.rows: list[tuple[int, float, np.ndarray, bool]] = []
        self.depth_is_metric: Optional[bool] = None


def _state(context) -> _TrajState:
    st = context.state.get("_trajectory_state")
    if st is None:
        st = context.state["_trajectory_state"] = _TrajState()
    return st


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


def write_files(context, rows: list[tuple[int, float, np.ndarray, bool]], depth_is_metric: Optional[bool]) -> dict[str, str]:
    """Write every configured trajectory file for ``rows`` (index, timestamp, c2w pose, is_keyframe)."""
    opts: TrajectoryOptions = context.options(SECTION)
    s, scale_note = _scale(context, opts, depth_is_metric)
    if rows:
        stamps = np.array([r[1] for r in rows], dtype=np.float64)
        poses = scale_pose(np.stack([r[2] for r in rows]), s)
        kf = np.array([r[3] for r in rows], dtype=bool)
    else:
        stamps, poses, kf = np.zeros(0), np.zeros((0, 4, 4)), np.zeros(0, dtype=bool)
    out = context.out
    written: dict[str, str] = {}
    header = f"slam3r estimated trajectory, {len(rows)} frames, camera-to-world (OpenCV axes); {scale_note}"
    if "tum" in opts.formats:
        written["trajectory"] = str(write_tum(out.file(FILES["tum"]), stamps, poses, header=header))
    if opts.keyframes:
        kh = f"slam3r estimated trajectory, keyframes only ({int(kf.sum())}), camera-to-world (OpenCV axes); {scale_note}"
        written["trajectory_keyframes"] = str(write_tum(out.file(FILES["tum_keyframes"]), stamps[kf], poses[kf], header=kh))
    if "kitti" in opts.formats:
        written["trajectory_kitti"] = str(write_kitti(out.file(FILES["kitti"]), poses))
    if "matrix" in opts.formats:
        written["trajectory_matrices"] = str(write_matrices(out.file(FILES["matrix"]), stamps, poses))
    context.state["trajectory_scale"] = s
    return written


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: TrajectoryOptions}


@hookimpl
def slam3r_run_start(context):
    context.state.pop("_trajectory_state", None)
    _state(context)


@hookimpl(trylast=True)
def slam3r_process_frame(frame, estimate, context):
    st = _state(context)
    st.rows.append((int(frame.index), float(frame.timestamp), np.array(estimate.pose, dtype=np.float64),
                    bool(estimate.is_keyframe)))
    st.depth_is_metric = bool(estimate.depth_is_metric)
    n = context.options(SECTION).every_n
    if n and len(st.rows) % n == 0:
        write_files(context, st.rows, st.depth_is_metric)


@hookimpl
def slam3r_reset(context):
    _state(context).rows.clear()


@hookimpl
def slam3r_export(result, context):
    st = _state(context)
    if result.poses:
        rows = [(p.index, float(p.timestamp), np.asarray(p.pose, dtype=np.float64), bool(p.is_keyframe))
                for p in result.poses]
        # the pipeline appends to result.poses after process_frame: mid-run our own list may be one ahead
        if len(st.rows) > len(rows):
            rows = st.rows
    else:
        rows = st.rows
    return write_files(context, rows, st.depth_is_metric)
