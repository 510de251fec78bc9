"""The ``bundle_adjustment`` plugin: an RGB-D bundle adjustment of the whole run when the stream ends.

During the run it keeps each tracked frame's ORB keypoints, descriptors and sensor-depth points
(:class:`slam3r_plugins.features.FrameFeatures`, about 78 KB a frame at 1500 features); when the stream has ended
(hook ``slam3r_refine_trajectory``, after loop closure's final optimisation) it adjusts every kept
frame's pose against the matched features (:func:`.solver.bundle_adjust`, rolling shutter
included; the descriptor matches of each frame with the frames kept just before it are computed on
a background thread during the run, :mod:`.background_matching`) and hands the core one
:class:`~slam3r_app.types.PoseUpdate`: the kept frames take their
adjusted poses, every other tracked frame moves with the kept frame nearest to it in the stream, and
every map follows the correction as it follows loop closure's. The adjustment is skipped, with the reason logged and written to
``summary.json`` (``bundle_adjustment``), on too little texture or when it does not lower its cost.

``enabled: auto`` runs it behind the metric ``rgbd`` frontend (sensor depth fixes the scale);
STream3R's predicted depth is not a measurement it can adjust against. At most ``max_frames``
frames are kept, in a :class:`slam3r_plugins.maps.FrameBuffer` (fusion's): beyond that every second kept
frame is dropped and only every second new frame is kept (then every fourth ...), so memory and the
end-of-run time stay bounded on long runs.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.hookspecs import hookimpl
from slam3r_app.types import PoseUpdate

from .. import features as orb
from ..maps import FrameBuffer
from .background_matching import BackgroundMatcher
from .solver import AdjustmentOptions, bundle_adjust, covisible_frames

log = logging.getLogger("slam3r.bundle_adjustment")

SECTION = "bundle_adjustment"

#: Rolling-shutter readout (seconds, first row to last) of cameras whose source says which they are
#: (``source_info["camera"]``). TUM freiburg1 (Kinect v1): the readout at which the adjustment's own
#: reprojection cost is lowest on fr1_rpy's first 75 and 100 frames (benchmarks/NOTES.md, "Rolling shutter").
KNOWN_READOUT_S = {"tum:freiburg1": 0.025}


class BundleAdjustmentOptions(BaseModel):
    """``bundle_adjustment:`` the end-of-run RGB-D bundle adjustment (``plugins/bundle_adjustment``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: Union[Literal["auto"], bool] = Field(
        "auto", description="auto: with the metric rgbd frontend; true / false: always / never")
    features: int = Field(1500, ge=100, le=10000, description="ORB features a frame")
    readout: Union[Literal["auto"], Annotated[float, Field(ge=-0.1, le=0.1)]] = Field(
        "auto", description="rolling-shutter readout, seconds from the first image row to the last (0: global "
        "shutter; negative: rows read bottom to top); auto: the source camera's where it is known (TUM "
        "freiburg1: 0.025), else 0")
    window: int = Field(4, ge=1, le=30, description="match each frame to this many frames before it")
    covisible: int = Field(2, ge=0, le=20, description="... and to this many earlier frames that see the same place")
    max_reproj_px: float = Field(8.0, gt=0, le=100, description="a match is kept when the tracked poses reproject "
                                 "it within this many pixels")
    bf: float = Field(40.0, gt=0, description="virtual stereo baseline x focal length, pixel-metres (depth weight)")
    sigma_px: float = Field(1.0, gt=0, description="keypoint noise, pixels")
    odometry_sigma_deg: float = Field(0.1, gt=0, description="tie of consecutive frames to their tracked motion, "
                                      "degrees (benchmarks/NOTES.md, \"Robust odometry ties\")")
    odometry_sigma_m: float = Field(0.001, gt=0, description="the same, metres")
    odometry_huber_k: float = Field(3.0, ge=0, le=100, description="the ties are robust: Huber with this threshold "
                                    "in sigmas (a pair the tracker got wrong gives way to the features); 0: Gaussian")
    min_observations: int = Field(100, ge=1, description="a frame with fewer matched features is adjusted through "
                                  "its neighbours only")
    min_observed_fraction: float = Field(0.5, ge=0, le=1, description="fewer frames than this with enough matched "
                                         "features: the adjustment is skipped (too little texture)")
    max_observations: int = Field(600, ge=0, le=100000, description="landmarks a frame takes part in, at most "
                                  "(the longest tracks first; 0: all): bounds the solver's time")
    max_frames: int = Field(300, ge=10, le=100000, description="frames kept for the adjustment (thinned evenly "
                            "beyond); bounds memory and the end-of-run time")
    match_during_run: bool = Field(True, description="match the features of the likely frame pairs on a "
                                   "background thread (lowest priority) while the run goes on, so that the end of "
                                   "the run does not wait for it; false: all at the end (no second thread)")

    def solver_options(self, readout: float) -> AdjustmentOptions:
        """The solver's options: this section's keys of the same name, and ``readout``."""
        same = {f.name: getattr(self, f.name) for f in dataclasses.fields(AdjustmentOptions) if f.name in type(self).model_fields}
        return AdjustmentOptions(**{**same, "readout": readout})


@dataclass
class KeptFrame:
    """A tracked frame kept for the adjustment: its index, timestamp (s) and ORB features."""

    index: int
    timestamp: float
    features: orb.FrameFeatures

    @property
    def nbytes(self) -> int:
        return self.features.nbytes


@dataclass
class _State:
    frames: Optional[FrameBuffer] = None  # of KeptFrame, made at the first frame (its size is an option)
    matcher: Optional[BackgroundMatcher] = None  # descriptor matches of the likely pairs, during the run
    thinned: int = 0  # times the frame buffer had been thinned when the matcher last heard of it
    K: Optional[np.ndarray] = None
    height: int = 0
    skipped: str = ""
    summary: dict = field(default_factory=dict)


def _state(context) -> _State:
    st = context.state.get("_bundle_adjustment_state")
    if st is None:
        st = context.state["_bundle_adjustment_state"] = _State()
    return st


def _new_state(context) -> None:
    """A fresh state; the old one's background matching is stopped."""
    old = context.state.get("_bundle_adjustment_state")
    if old is not None and old.matcher is not None:
        old.matcher.close()
    context.state["_bundle_adjustment_state"] = _State()


def is_enabled(context) -> bool:
    opts: BundleAdjustmentOptions = context.options(SECTION)
    if opts.enabled == "auto":
        return getattr(context.frontend, "name", "") == "rgbd"
    return bool(opts.enabled)


def readout_for(context) -> tuple[float, str]:
    """The rolling-shutter readout (seconds) and where it came from."""
    opts: BundleAdjustmentOptions = context.options(SECTION)
    if opts.readout != "auto":
        return float(opts.readout), "bundle_adjustment.readout"
    camera = str(context.source_info.get("camera") or "")
    if camera in KNOWN_READOUT_S:
        return KNOWN_READOUT_S[camera], f"known for {camera}"
    return 0.0, "unknown camera: global shutter assumed"


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: BundleAdjustmentOptions}


@hookimpl
def slam3r_run_start(context):
    _new_state(context)


@hookimpl
def slam3r_process_frame(frame, estimate, context):
    if estimate.lost or frame.depth is None or not is_enabled(context):
        return
    if np.shape(frame.depth) != frame.rgb.shape[:2]:  # depth not on the colour pixels: no point per keypoint
        return
    st = _state(context)
    if st.skipped:
        return
    K = np.asarray(estimate.intrinsics, dtype=np.float64)
    if st.K is None:
        st.K, st.height = K.copy(), int(frame.rgb.shape[0])
    elif not np.allclose(K, st.K) or int(frame.rgb.shape[0]) != st.height:
        st.skipped = f"frame {frame.index}: the intrinsics or image size changed (one camera is assumed)"
        st.frames = None
        if st.matcher is not None:
            st.matcher.close()
            st.matcher = None
        return
    opts: BundleAdjustmentOptions = context.options(SECTION)
    if st.frames is None:
        st.frames = FrameBuffer(opts.max_frames, option="bundle_adjustment.max_frames")
        st.matcher = BackgroundMatcher() if opts.match_during_run else None
    if not st.frames.wants_next():  # thinned: this frame would not be kept, so no features are made for it
        st.frames.pass_over()
        return
    kept = KeptFrame(int(frame.index), float(frame.timestamp),
                     orb.extract(frame.rgb, frame.depth, K, n_features=opts.features))
    if not st.frames.add(kept):
        return
    if st.matcher is None:
        return
    frames = st.frames.frames()
    if st.frames.thinned != st.thinned:
        st.thinned = st.frames.thinned
        st.matcher.forget({f.index for f in frames})
    if frames[-1] is kept:
        st.matcher.add(kept, likely_partners(context, frames[:-1], estimate.pose, opts))


def likely_partners(context, earlier: list[KeptFrame], pose: np.ndarray,
                    opts: BundleAdjustmentOptions) -> list[KeptFrame]:
    """The frames the adjustment will most likely match a new frame (its tracked ``pose``: ``[4, 4]``
    camera-to-world) with: the ``window`` kept just before it and the covisible ones among the rest by the
    poses tracked so far (:func:`.solver.covisible_frames`; the end of the run picks them again by the final
    poses and matches what this missed)."""
    window = earlier[-opts.window:]
    rest = [f for f in earlier[:-opts.window] if f.index in context.trajectory
            and context.trajectory.status(f.index) != "lost"]
    if not rest or opts.covisible <= 0:
        return window
    poses = np.stack([context.trajectory.pose(f.index) for f in rest])
    covisible = covisible_frames(np.asarray(pose, np.float64), poses, opts.solver_options(0.0))
    return window + [rest[int(k)] for k in covisible]


@hookimpl
def slam3r_refine_trajectory(context):
    if not is_enabled(context):
        return None
    st = _state(context)
    opts: BundleAdjustmentOptions = context.options(SECTION)
    traj = context.trajectory
    readout, readout_from = readout_for(context)
    kept = st.frames.frames() if st.frames is not None else []
    frames = [f for f in kept if f.index in traj and traj.status(f.index) != "lost"]
    stride = st.frames.keep_every if st.frames is not None else 1
    st.summary = {"frames_kept": len(frames), "stride": stride, "readout_s": readout, "readout_from": readout_from}
    if st.skipped:
        st.summary.update(applied=False, reason=st.skipped)
        log.info("bundle adjustment skipped: %s", st.skipped)
        return None
    log.info("bundle adjustment: adjusting %d frames (readout %.3f s, %s)...", len(frames), readout, readout_from)
    t0 = time.perf_counter()
    revision = traj.revision
    poses = np.stack([traj.pose(f.index) for f in frames]) if frames else np.zeros((0, 4, 4))
    position = {f.index: p for p, f in enumerate(frames)}
    matched = st.matcher.results() if st.matcher is not None else {}
    known = {(position[i], position[j]): m for (i, j), m in matched.items() if i in position and j in position}
    st.summary["pairs_matched_during_run"] = len(known)
    res = bundle_adjust([f.features for f in frames], poses, np.array([f.timestamp for f in frames]),
                        st.K if st.K is not None else np.eye(3), st.height, opts.solver_options(readout),
                        descriptor_matches=known)
    st.summary.update(applied=res.applied, reason=res.reason, seconds=round(time.perf_counter() - t0, 3), **res.stats)
    if not res.applied:
        log.info("bundle adjustment skipped: %s", res.reason)
        return None
    log.info("bundle adjustment: %d frames, %d landmarks, %d observations, readout %.3f s (%s); poses moved by "
             "%.2f cm on average (at most %.2f cm) in %.1f s", len(frames), res.stats["landmarks"],
             res.stats["observations"], readout, readout_from, 100 * res.stats["mean_shift_m"],
             100 * res.stats["max_shift_m"], st.summary["seconds"])
    update = PoseUpdate(kind="se3", reason=f"bundle adjustment of {len(frames)} frames", based_on_revision=revision,
                        propagate=False, info={k: v for k, v in st.summary.items() if k != "reason"})
    for index, T in corrected_poses(traj, [f.index for f in frames], poses, res.poses).items():
        if traj.is_keyframe(index):
            update.keyframes[index] = T
        else:
            update.frames[index] = T
    return update


def corrected_poses(traj, kept: list[int], old: np.ndarray, new: np.ndarray) -> dict[int, np.ndarray]:
    """New poses of every frame of ``traj`` that is not lost: an adjusted frame's own; any other frame (thinned
    away, or without depth) moves with the adjusted frame nearest to it in the stream (``new @ inv(old)``)."""
    kept_arr = np.asarray(kept, np.int64)
    deltas = new @ np.linalg.inv(old)
    own = dict(zip(kept, new))
    out = {}
    for index in traj.indices().tolist():
        if index in own:
            out[index] = own[index]
        elif traj.status(index) != "lost":
            k = int(np.searchsorted(kept_arr, index))
            k = min(range(max(0, k - 1), min(len(kept_arr), k + 1)), key=lambda p: abs(kept_arr[p] - index))
            out[index] = deltas[k] @ traj.pose(index)
    return out


@hookimpl
def slam3r_reset(context):
    _new_state(context)


@hookimpl
def slam3r_run_end(result, context):
    st = context.state.get("_bundle_adjustment_state")
    if st is not None and st.matcher is not None:
        st.matcher.close()
        st.matcher = None
    if st is not None and st.summary:
        result.info["bundle_adjustment"] = st.summary
