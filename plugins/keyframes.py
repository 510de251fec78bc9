"""Keyframe selection (plugin ``keyframes``): by motion and/or view overlap.

A frame becomes a keyframe when the camera moved far enough since the last
keyframe:

* motion: translation relative to the scene's median depth (seen from the last
  keyframe) above ``min_translation``, or rotation angle above ``min_rotation_deg``;
  the ratio makes the test independent of the (unknown) scale of the prediction;
* overlap: the last keyframe's depth, reprojected into the current view, covers
  less than ``min_overlap`` of its sampled pixels;
* ``max_interval``: at most that many frames between keyframes.

The reference is the last keyframe's *current* pose, read from the trajectory store
(``context.trajectory.transform(k)``) at every decision, so it follows pose corrections
(loop closure, relocalisation): only the keyframe's index, median depth and sampled
camera-frame depth points are kept here, and a Sim(3) correction scales them with the
keyframe's transform.

The first frame (and the first after a map reset) is always a keyframe. The
decision also controls the frontend's memory: non-keyframes are dropped from the
STream3R KV cache (``keep_in_cache=False``; the pipeline calls
``frontend.forget_last()``), so memory grows with keyframes, not frames, unless
``keep_all_in_cache`` is set.

Writes ``keyframes.txt`` (``index timestamp reason``) in the run folder, atomically,
at every new keyframe and at the end; the trajectory plugin writes the keyframes'
poses (``trajectory_keyframes.txt``).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.hookspecs import hookimpl
from slam3r_app.sim3 import sim3_scale, strip_scale
from slam3r_app.trajectory import invert_pose, rotation_angle_deg
from slam3r_app.types import Estimate, Frame, KeyframeDecision

from .maps.common import median_depth, unproject, valid_depth_mask

if TYPE_CHECKING:  # pragma: no cover
    from slam3r_app.trajectory_store import TrajectoryStore

log = logging.getLogger("slam3r.keyframes")

SECTION = "keyframes"
KEYFRAMES_FILE = "keyframes.txt"


class KeyframeOptions(BaseModel):
    """``keyframes:`` which frames become keyframes (and stay in the frontend's cache)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="off: every frame is a keyframe and stays in the cache")
    mode: Literal["motion", "overlap", "either", "both", "all"] = Field(
        "either",
        description="motion: translation/rotation tests; overlap: reprojection test; either: any test fires; "
                    "both: a motion test and the overlap test must fire; all: every frame is a keyframe",
    )
    min_translation: float = Field(
        0.1, ge=0, description="translation since the last keyframe, as a fraction of its median depth")
    min_rotation_deg: float = Field(10.0, ge=0, le=180, description="rotation angle since the last keyframe, degrees")
    min_overlap: float = Field(
        0.7, ge=0, le=1, description="a keyframe when less than this fraction of the last keyframe stays in view")
    max_interval: Optional[int] = Field(
        None, ge=1, description="force a keyframe after this many frames (None: no limit)")
    keep_all_in_cache: bool = Field(
        False, description="keep non-keyframes in the frontend's cache too (memory grows with frames)")
    overlap_stride: int = Field(8, ge=1, le=64, description="pixel step when sampling the keyframe's depth for overlap")
    write_every_keyframe: bool = Field(
        True, description="rewrite keyframes.txt at every new keyframe (else only at the end / on save)")


class _KeyframeState:
    """What this plugin keeps of the last keyframe (its pose is the trajectory store's), and the rows of
    ``keyframes.txt``. Private to the plugin (``context.state["_keyframes_state"]``)."""

    def __init__(self) -> None:
        self.index = -1  # the last keyframe's frame index; -1: none yet (first frame, or after a reset)
        self.scale = 1.0  # the Sim(3) scale of its transform when it was chosen
        self.median_depth: Optional[float] = None
        self.cam_points: Optional[np.ndarray] = None  # sampled keyframe depth, camera frame
        self.frames_since = 0
        self.rows: list[tuple[int, float, str]] = []


def _state(context) -> _KeyframeState:
    st = context.state.get("_keyframes_state")
    if st is None:
        st = context.state["_keyframes_state"] = _KeyframeState()
    return st


def _opts(context) -> KeyframeOptions:
    return context.options(SECTION)


def overlap_fraction(cam_points: np.ndarray, kf_pose: np.ndarray, pose: np.ndarray, K: np.ndarray,
                     width: int, height: int) -> float:
    """Fraction of the keyframe's sampled 3D points that project inside the current image, in front.

    ``cam_points`` ``[N, 3]`` in the keyframe's camera frame; ``kf_pose`` its (Sim(3)) world transform;
    ``pose`` the current rigid camera-to-world pose.
    """
    if cam_points is None or len(cam_points) == 0:
        return 1.0
    rel = invert_pose(pose) @ kf_pose  # keyframe camera -> current camera
    p = cam_points @ rel[:3, :3].T + rel[:3, 3]
    z = p[:, 2]
    front = z > 1e-9
    zz = np.where(front, z, 1.0)
    u = K[0, 0] * p[:, 0] / zz + K[0, 2]
    v = K[1, 1] * p[:, 1] / zz + K[1, 2]
    inside = front & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
    return float(inside.mean())


def decide(opts: KeyframeOptions, st: _KeyframeState, frame: Frame, est: Estimate,
           trajectory: "TrajectoryStore") -> tuple[bool, str]:
    """The keyframe test alone (no state change).

    The reference is the last keyframe's current world transform in ``trajectory`` (the run's
    store, ``context.trajectory``): corrected when a loop closure or relocalisation moved it.
    """
    if st.index < 0 or st.index not in trajectory:
        return True, "first frame"
    if opts.mode == "all":
        return True, "every frame"
    T_kf = trajectory.transform(st.index)
    s_kf = sim3_scale(T_kf) / st.scale  # a Sim(3) correction rescaled the keyframe's geometry
    pose = np.asarray(est.pose, dtype=np.float64)
    rel = invert_pose(strip_scale(T_kf)) @ pose
    trans = float(np.linalg.norm(rel[:3, 3]))
    rot = float(rotation_angle_deg(rel[:3, :3]))
    scene = st.median_depth * s_kf if st.median_depth else st.median_depth
    rel_trans = trans / scene if scene else trans  # without depth: absolute units
    motion_reasons = []
    if opts.min_translation > 0 and rel_trans > opts.min_translation:
        unit = "of median depth" if scene else "(no depth: absolute)"
        motion_reasons.append(f"translation {rel_trans:.3f} > {opts.min_translation:g} {unit}")
    if opts.min_rotation_deg > 0 and rot > opts.min_rotation_deg:
        motion_reasons.append(f"rotation {rot:.1f} deg > {opts.min_rotation_deg:g}")
    overlap_reason = ""
    if opts.mode in ("overlap", "either", "both") and st.cam_points is not None:
        ov = overlap_fraction(st.cam_points, T_kf, pose, np.asarray(est.intrinsics, dtype=np.float64),
                              frame.width, frame.height)
        if ov < opts.min_overlap:
            overlap_reason = f"overlap {ov:.2f} < {opts.min_overlap:g}"
    if opts.mode == "motion":
        fired = bool(motion_reasons)
        reasons = motion_reasons
    elif opts.mode == "overlap":
        fired = bool(overlap_reason)
        reasons = [overlap_reason]
    elif opts.mode == "both":
        fired = bool(motion_reasons) and bool(overlap_reason)
        reasons = motion_reasons + [overlap_reason]
    else:
        fired = bool(motion_reasons) or bool(overlap_reason)
        reasons = motion_reasons + ([overlap_reason] if overlap_reason else [])
    if fired:
        return True, "; ".join(r for r in reasons if r)
    if opts.max_interval is not None and st.frames_since + 1 >= opts.max_interval:
        return True, f"max interval {opts.max_interval} frames"
    return False, ""


def _remember(st: _KeyframeState, opts: KeyframeOptions, frame: Frame, est: Estimate, reason: str) -> None:
    pose = np.asarray(est.pose, dtype=np.float64)
    st.index = frame.index
    st.scale = sim3_scale(pose)
    st.frames_since = 0
    depth = est.depth
    if depth is None and est.points is not None:  # depth from world points: z in the camera frame
        pc = (np.asarray(est.points, dtype=np.float64) - pose[:3, 3]) @ pose[:3, :3]
        depth = pc[..., 2].astype(np.float32)
    if depth is not None:
        conf_ok = None
        if est.confidence is not None:
            conf_ok = np.asarray(est.confidence) > 0
        st.median_depth = median_depth(depth, conf_ok)
        K = np.asarray(est.intrinsics, dtype=np.float64)
        ok = valid_depth_mask(depth)
        if conf_ok is not None:
            ok &= conf_ok
        st.cam_points, _ = unproject(depth, K, None, mask=ok, stride=opts.overlap_stride)
    else:
        st.median_depth = None
        st.cam_points = None
    st.rows.append((frame.index, float(frame.timestamp), reason))


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: KeyframeOptions}


@hookimpl
def slam3r_run_start(context):
    context.state.pop("_keyframes_state", None)
    _state(context)


@hookimpl
def slam3r_keyframe_decision(frame, estimate, context):
    opts = _opts(context)
    if not opts.enabled:
        return None
    st = _state(context)
    is_kf, reason = decide(opts, st, frame, estimate, context.trajectory)
    if is_kf:
        _remember(st, opts, frame, estimate, reason)
        log.debug("frame %d is a keyframe: %s", frame.index, reason)
        if opts.write_every_keyframe:
            context.out.write_text(KEYFRAMES_FILE, format_keyframes(st.rows))
    else:
        st.frames_since += 1
    keep = True if opts.keep_all_in_cache else is_kf
    return KeyframeDecision(is_keyframe=is_kf, keep_in_cache=keep, reason=reason)


@hookimpl
def slam3r_reset(context):
    st = _state(context)
    st.index = -1
    st.cam_points = None
    st.median_depth = None
    st.frames_since = 0
    st.rows.clear()


def format_keyframes(rows: list[tuple[int, float, str]]) -> str:
    lines = ["# keyframes: index timestamp reason", "# index: frame index in the stream; timestamp: source time, s"]
    lines += [f"{i} {t:.6f} {r}" for i, t, r in rows]
    return "\n".join(lines) + "\n"


@hookimpl
def slam3r_export(result, context):
    st = context.state.get("_keyframes_state")
    if st is not None and st.rows:
        rows = st.rows
    else:  # no decisions from this plugin (disabled, or another plugin decided): the run's keyframe flags
        rows = [(p.index, float(p.timestamp), "") for p in result.poses if p.is_keyframe]
    path = context.out.write_text(KEYFRAMES_FILE, format_keyframes(rows))
    return {"keyframes": str(path)}
