"""The classical RGB-D frontend (``frontend: rgbd``): metric tracking from sensor depth, no learned weights.

Each frame is registered with Open3D's multi-scale projective RGB-D odometry
(``open3d.t.pipelines.odometry.rgbd_odometry_multi_scale``, Gauss-Newton on an
image pyramid, Huber losses) to a *reference* view whose pose is known, starting
from a constant-velocity prediction:

* ``rgbd.method: keyframe`` (default): the reference is the last keyframe's
  RGB-D image. A frame becomes the new reference when less than
  ``rgbd.keyframe_overlap`` (0.7) of its valid depth pixels found an inlier
  correspondence in the current one, or when it has turned more than
  ``rgbd.keyframe_max_rotation_deg`` (3 deg) from it.
* ``rgbd.method: model``: KinectFusion-style frame-to-model tracking. The
  frontend fuses every tracked frame into its own TSDF (Open3D tensor
  ``VoxelBlockGrid``, ``rgbd.voxel_size``) and the reference is the TSDF
  ray-cast at the previous pose.

The residual (``rgbd.loss``, default ``point_to_plane+hybrid``) is two-stage:
point-to-plane ICP on depth from the motion prediction (wide basin, blind along
planes), then Open3D's hybrid depth + intensity odometry started from that
result (photometric detail pins down sliding along walls and floors); the
refinement is kept only when it stays within ``rgbd.refine_max_rotation_deg`` /
``rgbd.refine_max_translation`` of the ICP pose. The map the user gets is built
by the ``fusion`` backend from the estimates, not from this frontend's state.

What limits it on real data (issue 19; measured with benchmarks/realdata_bench.py)
---------------------------------------------------------------------------------
Registering two frames of TUM fr1_rpy k frames apart, started from the true relative
pose, misses it by 3.3 mm / 0.37 deg (k = 1), 5.5 mm (k = 2) and 12.6 mm (k = 4), median:
the error grows faster than the rotation between the views (a hand-held Kinect turning at
60-110 deg/s: rolling shutter, motion blur; warping each frame to mid-exposure with the true
velocity takes the k = 1 error to 2.7 mm at a 15 ms readout). Not the solver (more
iterations, other Huber deltas, +-3 % focal length: the same error). Hence the keyframe
rule: a keyframe is kept while the views overlap (0.7) but never across more than 3 deg of
rotation. Against the old rule (overlap 0.9 alone, which on these sequences made almost every
frame a keyframe: 51 of 75): tum75 2.13 -> 1.94 cm SE(3), 1.51 -> 1.10 cm Sim(3); tum100
2.20 -> 2.03 / 1.58 -> 1.01; TUM fr3 structure_notexture_far (translation, textureless)
0.44 -> 0.53 (overlap 0.7 alone); frames undistorted by the reader in all of these. A 2 deg
limit gave 1.81 / 1.54 and 1.92 / 1.48, 5 deg 2.63 / 1.74 on tum75. Tried and dropped
(worse): longer keyframe links (overlap 0.7 without the rotation limit: 5.1 cm on tum75),
a GTSAM pose graph over the last 8 keyframes with 2 extra registrations per new keyframe
(3.8 cm: the extra links are the long, bad ones), rolling-shutter warping with the velocity a
live tracker has (the last frame's: 2.7-3.1 cm; the rpy motion reverses every few frames),
the TSDF model (3.0-3.2 cm). The synthetic configs (a global-shutter, exact camera) set
``keyframe_max_rotation_deg: 180``. What this frontend cannot undo, the colour camera's rolling
shutter (a fast turn read partly as translation: the demo's Sim(3) scale of 0.71), is modelled
after the stream by the ``bundle_adjustment`` plugin (demo 1.94 -> 0.88 cm, scale 0.97).

Earlier measurements (before undistortion and the rotation limit)
-----------------------------------------------------------------
ATE = RMSE of camera positions after Umeyama alignment, SE(3) / Sim(3), in cm;
first frame = identity; default options (full resolution, depth_max 3 m) unless
said; 2 CPU cores. ``tum75`` = the shipped sample (first 75 frames of TUM
freiburg1_rpy: fast hand-held rotation, up to 4 deg per frame, 96 deg in 1.6 s,
motion blur); ``tum100`` = its first 100 frames; ``bonn`` = 100 frames of Bonn
rgbd_bonn_crowd (three people walking through the view; raw groundtruth.txt);
``syn`` = 60 frames of the synthetic room, seeds 0 and 3 (320x240, exact depth;
SE(3) only). Runs are bit-reproducible (``deterministic``, below); with Open3D on
every core they vary by up to about 0.2 cm.

Determinism: Open3D's CPU kernels (this odometry, the ICP of loop closure) sum their
normal equations in parallel with oneTBB, so the order of the floating-point additions,
and the last digits of every pose, change from run to run: three runs of the demo gave
ATE 1.92 / 1.85 / 1.97 cm. With ``deterministic: true`` (the default) this frontend
limits Open3D to one thread for the whole process (``open3d.utility.set_max_threads(1)``)
and the same input and config give the same trajectory bit for bit on the same machine;
on 2 idle cores the demo then runs at 7.9 instead of 10.2 frames/s (on a loaded machine the
difference is smaller). ``false`` lets Open3D use every core.

=======================================  =========  =========  =========  =========
method, loss                             tum75      tum100     bonn       syn 0, 3
=======================================  =========  =========  =========  =========
keyframe, point_to_plane+hybrid (def.)   2.5 / 1.7  2.6 / 1.9  2.5 / 2.5  0.4, 0.3
keyframe, point_to_plane                 6.7 / 1.5  8.3 / 1.6  10.5 / 2.5 0.1, 0.1
keyframe, hybrid                         11.3 / 3.1 12.6 / 3.5 3.3 / 3.3  0.4, 0.3
model, point_to_plane+hybrid             3.2 / 1.8  3.0 / 1.8  2.9 / 2.8  4.3, 1.7
model, point_to_plane                    4.3 / 1.4  4.4 / 1.4  7.1 / 2.5  4.8, 1.0
model, hybrid                            17.5 / 3.6 24.6 / 3.5 2.9 / 2.8  1.7, 1.6
model, point_to_plane+hybrid, 6 m        4.9 / 1.4  4.7 / 1.4  4.2 / 2.4  1.2, 1.2
=======================================  =========  =========  =========  =========

On tum the Sim(3) alignment shrinks the estimate (scale 0.4-0.7: the camera
barely translates, 12 cm in all, while it turns 96 deg), so SE(3) is the honest
figure there; Sim(3) is what metrics.json reports (the upstream protocol).
Point-to-plane alone is exact on synthetic depth but drifts on real depth (it
trades rotation for translation on tum and slides along bonn's walls); hybrid
alone diverges on tum's motion blur unless it starts from the ICP pose; the
two-stage loss gets the best of both. The TSDF model loses to keyframes here for
two reasons: on 75-100 frames there is little noise to average, and Open3D's
ray caster samples the TSDF at the nearest voxel, which puts slanted surfaces up
to a voxel and more behind their true position (measured: 2.2 cm on a plane
tilted 30 deg, 2 cm voxels, one noise-free frame; 0 on a fronto-parallel one), a
bias the registration inherits (1.2-4.8 cm on exact synthetic depth, worse when
depth_max cuts the room to its near walls). Refining the ray-cast depth with
trilinear TSDF samples fixed the synthetic case (0.7-0.9 cm) but cost 0.2-0.5 s
a frame on 2 cores and did not help on the real sequences, so it is not here.
Speed on 2 cores at 640x480: the default ~60-120 ms a frame (``downsample: 2``:
3x faster, tum75 2.7 / 1.7, bonn 3.6 / 3.1), the TSDF model 2-3x slower.
Other things tried and dropped (no gain beyond the run-to-run spread on these
sequences): a bilateral filter and an edge (flying-pixel) filter on the depth,
the ROS default intrinsics or undistorting fr1 (the sample's frames are not
undistorted; undistorting gave ~0.5 cm with the TSDF model).

Tracking failure
----------------
A frame is *lost* when the odometry fails (singular system), fewer than
``rgbd.min_overlap`` of its valid depth pixels find an inlier correspondence in
the reference, the inlier RMSE exceeds ``rgbd.max_rmse``, it has too few valid
depth pixels (``rgbd.min_valid_fraction``), or the pose jumps more than
``rgbd.max_translation`` / ``rgbd.max_rotation_deg`` from the last good pose. A
lost frame is logged (warning), counted in :meth:`RgbdFrontend.stats`, marked
``estimate.status = "lost"`` (the reason in ``estimate.status_reason``), gets
confidence 0 everywhere and never becomes
a reference. Then, by ``rgbd.on_failure``:

* ``recover`` (default): the frame keeps the last good pose; the next frames are
  registered to the last good reference from the motion prediction (the last
  velocity carried on over the lost frames), from ORB feature matches when
  that fails (``rgbd.feature_init``), and from a global registration of the depth
  when there is no texture to match (``rgbd.geometric_init``: FPFH + RANSAC + ICP,
  :mod:`.global_registration`; the motion guard still judges the result). A backend can relocalise a lost frame against
  the whole map (the ``loop_closure`` plugin does): the frontend then continues from
  that frame at its corrected pose (:meth:`RgbdFrontend.apply_correction`), on the
  same map. Only after ``rgbd.restart_after`` lost frames in a row *that had depth*
  (a covered or blank sensor does not count) does a new segment start: the next
  frame with depth becomes the reference at the last good pose (the trajectory stays
  continuous; the jump is not corrected until a loop closure connects the segments).
  ``extras["segment"]`` and ``stats()["segments"]`` count segments.
* ``stop``: :class:`slam3r_app.errors.FrontendError` names the frame and the
  reason; the loop ends the run and still writes every output.

Dynamic scenes (``rgbd.dynamic_mask``, off by default): after a first
registration, pixels that land more than ``rgbd.dynamic_threshold`` in front of
the reference surface (something moved into the view; ReFusion's residual test
without its region growing) are masked, the frame is registered again without
them, and their confidence is 0 (so fusion with ``fusion.depth: predicted`` leaves
them out of the map). On the bonn chunk it changed the ATE by less than the
run-to-run spread (TSDF model: 2.95 vs 3.1 cm; masking both signs of the residual
made it worse, 7.4 cm) at 1.5x the time, so it is off.

How much moving things cost. bonn (people covering part of the view, a slow
camera) gives 2.5 / 2.5 cm with each frame paired to its nearest ground-truth
pose, 3.0 / 3.0 cm through ``bonn.yaml --set frontend=rgbd`` (the reader pairs
ground truth one-to-one, TUM-associate style, and evo computes the Sim(3) ATE),
against tum's 2.5 / 1.7: 0-0.5 cm (up to 20 %) worse in SE(3), 0.8-1.3 cm
(50-75 %) in Sim(3); the sequences differ in more than the people. The
synthetic room with its two fast movers (``source.synthetic_dynamic``; 2-20 % of
the pixels, up to ~2 m/s) isolates the effect: seeds 0 / 3 go from 0.4 / 0.3 cm
static to 9.9 / 7.4 cm dynamic with the default (a mover inside the reference
keyframe drags the registration; ``dynamic_mask``: 6.2 / 14.5 cm, no fix),
while ``method: model`` with ``depth_max: 6`` keeps 1.2 / 2.5 cm (the TSDF
averages the movers away). For scenes with large, fast movers, use
``rgbd.method: model``.

Real people (issue 19; Bonn ``rgbd_bonn_crowd``, three people walking 1-3 m from a slow
hand-held camera, the room 3-6 m away; ``benchmarks/realdata_bench.py``, raw
``benchmarks/results/realdata_20261206_bonn_dynamic.json``). With the defaults (keyframe,
``depth_max`` 3) frames 131-530 give 99.5 cm ATE SE(3): the 3 m cut leaves mostly people
to register against and the tracker follows them (its path 10.5 m, the camera's 1.06 m).
``depth_max: 6`` keeps the room: 42.8 cm; tracking against the TSDF as well (``method:
model``): 20.9 cm; at half resolution (``downsample: 2``): 17.5 cm at about the defaults'
speed; ``method: model`` with 3 m: 100 cm; ``dynamic_mask`` with 6 m: 73 cm. These are the
rgbd settings of ``configs/bonn.yaml``; on TUM fr1 (static, fast rotation) they are worse
than the defaults (4.6 vs 1.9 cm on the demo), so the defaults stay. After a relocalisation
near the model's place the TSDF is kept (``_relocalize_at``): starting it again from one
frame full of people sent the same 400 frames to 49 cm. Over the whole recording (922
frames) a person who stands still is fused into the TSDF and misleads the tracker once
gone (80.6 cm); ``model_memory_frames`` lets the weights decay (by e every that many fused
frames, on the allocated blocks), so what is no longer seen fades while what is seen again
stays: 100 frames: 14.1 cm (131-530: 17.1, 31-130: 4.1); 300: 56.8 cm.

Estimate: ``pose`` camera-to-world (OpenCV axes; the first frame is the world
origin, as with STream3R), ``intrinsics`` of the frame, ``depth`` = the sensor
depth (metres, ``depth_is_metric=True``), ``confidence`` = 1 where the depth is
valid (inside ``[depth_min, depth_max]``), not masked as dynamic and the frame
was tracked, else 0; ``points`` = world points when ``rgbd.points`` is set.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from slam3r_app.errors import ConfigError, FrontendError
from slam3r_app.frontend import Frontend
from slam3r_app.hookspecs import hookimpl
from slam3r_app.sim3 import strip_scale
from slam3r_app.types import Estimate, Frame, TrackingStatus

log = logging.getLogger("slam3r.rgbd")

SECTION = "rgbd"
#: frontend names this plugin makes (the config check reports any other name before the run)
FRONTENDS = ("rgbd",)


class RgbdOptions(BaseModel):
    """``rgbd:`` options of the classical RGB-D frontend (``frontend: rgbd``)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["keyframe", "model"] = Field(
        "keyframe", description="keyframe: register each frame to the last keyframe's RGB-D image; model: to a "
                                "ray-cast of the frontend's own TSDF (KinectFusion)")
    loss: Literal["point_to_plane+hybrid", "point_to_plane", "hybrid", "intensity"] = Field(
        "point_to_plane+hybrid",
        description="point_to_plane+hybrid: ICP on depth from the motion prediction, then depth + intensity from "
                    "there (kept if within refine_max_*); point_to_plane: depth only; hybrid: depth + intensity; "
                    "intensity: photometric only")
    refine_max_rotation_deg: float = Field(
        3.0, gt=0, description="point_to_plane+hybrid: drop the hybrid refinement if it turns the ICP pose more")
    refine_max_translation: float = Field(
        0.08, gt=0, description="point_to_plane+hybrid: drop the hybrid refinement if it moves the ICP pose more "
                                "(metres)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Open3D device; auto: CUDA when available")
    depth_min: float = Field(0.1, ge=0, description="depth below this (metres) is ignored")
    depth_max: float = Field(3.0, gt=0, description="depth beyond this (metres) is ignored (noisy far range)")
    downsample: Literal[1, 2, 4] = Field(
        1, description="track at 1/downsample of the input resolution (2: about 3x faster, a little less accurate)")
    iterations: list[int] = Field(
        [10, 5, 3], min_length=1, max_length=5,
        description="odometry iterations per pyramid level, Open3D's criteria_list (its length = number of levels)")
    max_correspondence: float = Field(
        0.07, gt=0, description="depth difference (metres) beyond which a correspondence is an outlier")
    depth_huber: float = Field(0.05, gt=0, description="Huber delta of the depth residual, metres")
    intensity_huber: float = Field(0.1, gt=0, description="Huber delta of the intensity residual (intensity 0..1)")
    motion_model: Literal["constant_velocity", "static"] = Field(
        "constant_velocity", description="initial guess: the last motion repeated, or the last pose")
    keyframe_overlap: float = Field(
        0.7, gt=0, le=1, description="method keyframe: a frame becomes the new reference when less than this "
                                     "fraction of its valid depth pixels matched the current one")
    keyframe_max_rotation_deg: float = Field(
        3.0, gt=0, le=180, description="method keyframe: a frame that has turned more than this from the "
                                       "reference becomes the new reference too (on real sensors the "
                                       "registration error grows faster than the rotation between the views: "
                                       "rolling shutter, motion blur); 180: overlap alone decides")
    follow_keyframes: bool = Field(
        False, description="use only frames the keyframe policy keeps (keyframes plugin) as references / fuse "
                           "only those into the TSDF; forget_last() drops the last frame. Off: this frontend's "
                           "own policy (keyframe_overlap) or every frame (model)")
    voxel_size: float = Field(0.02, gt=0, le=1.0, description="method model: TSDF voxel edge, metres")
    trunc_voxels: float = Field(4.0, ge=1, le=32, description="method model: TSDF truncation distance in voxels")
    block_resolution: int = Field(16, ge=2, le=32, description="method model: TSDF voxels per block edge")
    block_count: int = Field(20000, ge=100, description="method model: initial TSDF hash-map capacity (blocks)")
    model_memory_frames: int = Field(
        0, ge=0, description="method model: the TSDF's weights decay by e every this many fused frames, so that "
                             "what is no longer seen (a person who stood still, then left) fades from the "
                             "model; 0: never")
    dynamic_mask: bool = Field(False, description="mask pixels in front of the reference surface (movers) and "
                                                  "register again without them")
    dynamic_threshold: float = Field(0.1, gt=0, description="metres in front of the reference surface that count "
                                                            "as dynamic")
    min_overlap: float = Field(
        0.3, ge=0, le=1, description="lost when fewer than this fraction of the frame's valid depth pixels find an "
                                     "inlier correspondence")
    max_rmse: float = Field(0.02, gt=0, description="lost above this inlier RMSE (metres; a loose sanity check)")
    max_translation: float = Field(0.2, gt=0, description="lost when the pose is further than this from the motion "
                                                          "prediction, metres per frame since the last good one")
    max_rotation_deg: float = Field(30.0, gt=0, le=180, description="lost when the pose turns more than this from "
                                                                    "the motion prediction, degrees per frame since "
                                                                    "the last good one")
    min_valid_fraction: float = Field(0.05, ge=0, le=1, description="lost when fewer pixels have valid depth")
    feature_init: bool = Field(
        True, description="when the dense registration from the motion prediction fails or is rejected, start it "
                          "again from ORB matches lifted with depth (3D-3D RANSAC): large inter-frame motion")
    feature_init_min_inliers: int = Field(20, ge=6, description="feature_init: RANSAC inliers needed")
    feature_check: bool = Field(
        True, description="when the dense registration moves the frame further from the motion prediction than "
                          "feature_check_rotation_deg / feature_check_translation (a large or sudden motion, where "
                          "the dense optimiser can settle in a wrong minimum that passes its own gates), check it "
                          "against ORB matches lifted with depth: if they support another pose, register again "
                          "from theirs and keep the pose more of them agree with")
    feature_check_rotation_deg: float = Field(5.0, gt=0, le=180, description="feature_check: degrees from the "
                                                                               "motion prediction")
    feature_check_translation: float = Field(0.05, gt=0, description="feature_check: metres from the motion "
                                                                      "prediction")
    geometric_init: bool = Field(
        True, description="when the feature initialisation fails too, start the registration from a global "
                          "registration of the depth (FPFH + RANSAC + ICP, no guess needed): low texture, wide "
                          "baselines")
    on_failure: Literal["recover", "stop"] = Field(
        "recover", description="recover: keep the last good pose and relocalise (new segment after restart_after "
                               "lost frames); stop: raise FrontendError (the run ends and writes its outputs)")
    restart_after: int = Field(15, ge=1, description="recover: start a new segment after this many lost frames "
                                                     "in a row that had valid depth (frames without depth do not "
                                                     "count)")
    points: bool = Field(False, description="return world points in the estimate (H x W x 3 float32)")
    deterministic: bool = Field(
        True, description="limit Open3D to one thread in this process, so that runs are bit-reproducible (its "
                          "parallel sums are not); false: every core, a little faster, poses vary in the last digits")

    @field_validator("iterations")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(int(i) < 1 for i in v):
            raise ValueError("every entry must be >= 1")
        return [int(i) for i in v]


#: method model with ``model_memory_frames``: the weights decay once every this many fused frames
_FORGET_EVERY = 10


# ----------------------------------------------------------------------------- small helpers
def _rot_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def _inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def _o3d_device(name: str):
    import open3d.core as o3c

    cuda = o3c.cuda.is_available()
    if name == "cuda":
        if not cuda:
            raise FrontendError("rgbd.device is 'cuda' but this Open3D build has no CUDA device "
                                "(use rgbd.device: cpu or auto)")
        return o3c.Device("CUDA:0")
    if name == "auto" and cuda:
        return o3c.Device("CUDA:0")
    return o3c.Device("CPU:0")


def _where(context: Any, key: str) -> str:
    cfg = getattr(context, "config", None)
    if cfg is not None and hasattr(cfg, "where"):
        return cfg.where(key)
    return key


def _source_type(context: Any) -> str:
    try:
        return str(context.config.run.source.type)
    except AttributeError:
        return "?"


def _open3d_message(e: Exception) -> str:
    """The human part of an Open3D error ("[Open3D Error] (signature) file.cpp:220: Singular ...")."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    m = re.search(r"\.(?:cpp|h):\d+:\s*(.+)", text, re.S)
    return (m.group(1) if m else text).strip()[:160] or type(e).__name__


class _Lost(Exception):
    """Tracking failed for this frame (internal)."""


class _Reference:
    """What a frame is registered to: an RGB-D view (Open3D image) with its pose (internal world).

    ``rgb`` (``[H, W, 3]`` uint8) and ``K`` are kept for the feature-based initialisation and check, whose
    ORB features (lifted with ``depth``) are computed the first time they are needed (``features``).
    """

    def __init__(self, image: Any, depth: np.ndarray, pose: np.ndarray, rgb: np.ndarray, K: np.ndarray) -> None:
        self.image = image
        self.depth = depth
        self.pose = pose
        self.rgb = rgb
        self.K = K
        self.features: Any = None
        self.cloud: Any = None  # its depth prepared for global registration (geometric_init), when needed


def _se3_power(T: np.ndarray, a: float) -> np.ndarray:
    """``T`` to the real power ``a`` (rotation angle and translation scaled by ``a``): a per-frame motion."""
    from scipy.spatial.transform import Rotation

    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(a * Rotation.from_matrix(T[:3, :3]).as_rotvec()).as_matrix()
    out[:3, 3] = a * T[:3, 3]
    return out


# ----------------------------------------------------------------------------- the frontend
class RgbdFrontend(Frontend):
    """Classical metric RGB-D tracking behind the :class:`~slam3r_app.frontend.Frontend` interface.

    Args:
        opts: the ``rgbd:`` options (defaults when None).
        context: the run context, for messages naming config keys; may be None (API, tests).
    """

    name = "rgbd"
    needs_depth = True
    metric = True
    follows_corrections = True

    def __init__(self, opts: Optional[RgbdOptions] = None, context: Any = None) -> None:
        self.opts = opts or RgbdOptions()
        self.context = context
        import open3d as o3d
        import open3d.core as o3c
        from open3d.t.pipelines import odometry

        self._o3d, self._o3c, self._odo = o3d, o3c, odometry
        self._one_thread = bool(self.opts.deterministic)
        if self._one_thread:  # process-wide: fusion and loop-closure ICP follow (see the module's notes)
            o3d.utility.set_max_threads(1)
        self.device = _o3d_device(self.opts.device)
        M = odometry.Method
        self._method = {"point_to_plane": M.PointToPlane, "hybrid": M.Hybrid, "intensity": M.Intensity,
                        "point_to_plane+hybrid": M.PointToPlane}[self.opts.loss]
        self._criteria = [odometry.OdometryConvergenceCriteria(int(i)) for i in self.opts.iterations]
        self._params = odometry.OdometryLossParams(self.opts.max_correspondence, self.opts.depth_huber,
                                                   self.opts.intensity_huber)
        self._counters = {"frames": 0, "tracked": 0, "lost": 0, "segments": 0, "restarts": 0, "references": 0,
                          "refine_rejected": 0, "dynamic_pixels": 0, "feature_inits": 0, "feature_init_used": 0,
                          "feature_checks": 0, "feature_check_switched": 0,
                          "geometric_inits": 0, "geometric_init_used": 0, "relocalized": 0, "corrections": 0,
                          "model_resets": 0}
        self._seconds = 0.0
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the reference, the TSDF and the motion; the next frame is the new world origin."""
        self._grid = None
        self._fused = 0  # frames fused into the TSDF (model_memory_frames)
        self._ref: Optional[_Reference] = None  # keyframe method: the current keyframe
        # model method: (depth, K, pose, uint8 colour) of the last good frame (the ray cast's blocks; its ORB features)
        self._view: Optional[tuple] = None
        self._pending: Optional[tuple] = None  # follow_keyframes: the last frame, adopted unless forgotten
        self._pose = np.eye(4)  # last returned pose (app world)
        self._good_pose = np.eye(4)  # last successfully tracked pose (internal world)
        self._good_index: Optional[int] = None  # its frame index
        self._world = np.eye(4)  # internal world -> the app's (corrected) world
        self._velocity = np.eye(4)  # last relative motion per frame, good^-1 @ new
        self._last_frame: Optional[tuple] = None  # (index, d, c01, K) of the last frame: relocalisation adopts it
        self._lost_run = 0
        self._lost_with_depth = 0
        self._segment = 0
        self._initialised = False
        self._shape: Optional[tuple[int, int]] = None
        self._last: dict[str, float] = {}

    def stats(self) -> dict[str, Any]:
        c: dict[str, Any] = dict(self._counters)
        c["lost_in_a_row"] = self._lost_run
        c.update({k: round(v, 3) for k, v in self._last.items()})
        if c["frames"]:
            c["ms_per_frame"] = round(1000 * self._seconds / c["frames"], 1)
        return c

    def forget_last(self) -> None:
        """``follow_keyframes``: the last frame does not become a reference (is not fused into the TSDF)."""
        if self.opts.follow_keyframes and (self._ref is not None or self._grid is not None):
            self._pending = None  # (the first frame of a segment always stays: there is no other reference)

    def close(self) -> None:
        self._pending = None
        self._grid = None
        self._ref = None
        if getattr(self, "_one_thread", False):  # the run is over: Open3D may use every core again
            self._one_thread = False
            self._o3d.utility.set_max_threads(0)

    # ------------------------------------------------------------------ input checks
    def _check(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        where = lambda key: _where(self.context, key)  # noqa: E731
        what = f"frame {frame.index} ({frame.name or 'unnamed'})"
        if frame.depth is None:
            raise FrontendError(
                f"{what} has no depth, but the 'rgbd' frontend needs metric sensor depth in every frame "
                f"({where('frontend')}: rgbd; {where('source.type')}: '{_source_type(self.context)}'). Use an "
                f"RGB-D source (tum, bonn, sintel, synthetic) whose frames all have depth, or another frontend "
                f"(frontend: stream3r)")
        depth = np.asarray(frame.depth)
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2 or depth.shape != (frame.height, frame.width):
            dsize = f"{depth.shape[1]}x{depth.shape[0]}" if depth.ndim == 2 else f"of shape {list(depth.shape)}"
            raise FrontendError(
                f"{what}: depth is {dsize} but colour is {frame.width}x{frame.height} (width x height); the "
                f"'rgbd' frontend needs depth registered to the colour image, at the same size "
                f"(check the dataset behind {where('source.path')})")
        if frame.intrinsics is None:
            raise FrontendError(
                f"{what} has no camera intrinsics; the 'rgbd' frontend needs them to unproject depth: set "
                f"{where('source.intrinsics')} to [fx, fy, cx, cy] in pixels of the colour image")
        K = np.asarray(frame.intrinsics, dtype=np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise FrontendError(f"{what}: invalid intrinsics {K.tolist()}; set {where('source.intrinsics')} "
                                f"to [fx, fy, cx, cy]")
        d = np.asarray(depth, dtype=np.float32)
        d = np.where(np.isfinite(d) & (d >= self.opts.depth_min) & (d <= self.opts.depth_max), d, 0.0)
        return d.astype(np.float32), K

    # ------------------------------------------------------------------ images
    def _downsample(self, depth: np.ndarray, rgb: np.ndarray, K: np.ndarray):
        import cv2

        rgb = np.asarray(rgb)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        f = int(self.opts.downsample)
        if f == 1:
            return depth, np.ascontiguousarray(rgb[..., :3]), K
        d = np.ascontiguousarray(depth[::f, ::f])  # pixel i of the result is pixel f*i of the input
        c = np.ascontiguousarray(rgb[..., :3])
        k = f
        while k > 1:  # Gaussian pyramid: also centred on pixel 2i
            c = cv2.pyrDown(c)
            k //= 2
        c = np.ascontiguousarray(c[: d.shape[0], : d.shape[1]])
        Ks = K.copy()
        Ks[:2] /= f
        return d, c, Ks

    def _rgbd(self, depth: np.ndarray, rgb01: np.ndarray):
        o3d, o3c = self._o3d, self._o3c
        return o3d.t.geometry.RGBDImage(o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(rgb01))).to(self.device),
                                        o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth))).to(self.device))

    # ------------------------------------------------------------------ model (TSDF)
    def _fuse(self, depth: np.ndarray, rgb01: np.ndarray, K: np.ndarray, pose: np.ndarray) -> None:
        o3d, o3c = self._o3d, self._o3c
        if self._grid is None:
            self._grid = o3d.t.geometry.VoxelBlockGrid(
                ("tsdf", "weight", "color"), (o3c.float32, o3c.float32, o3c.float32), ((1), (1), (3)),
                float(self.opts.voxel_size), int(self.opts.block_resolution), int(self.opts.block_count),
                self.device)
        dimg = o3d.t.geometry.Image(o3c.Tensor(depth)).to(self.device)
        cimg = o3d.t.geometry.Image(o3c.Tensor(rgb01)).to(self.device)
        intr, extr = o3c.Tensor(K), o3c.Tensor(_inv(pose))
        tr, dmax = float(self.opts.trunc_voxels), float(self.opts.depth_max)
        coords = self._grid.compute_unique_block_coordinates(dimg, intr, extr, 1.0, dmax, tr)
        self._grid.integrate(coords, dimg, cimg, intr, intr, extr, 1.0, dmax, tr)
        self._fused += 1
        m = int(self.opts.model_memory_frames)
        if m > 0 and self._fused % _FORGET_EVERY == 0:  # the model forgets what it no longer sees
            decay = float(np.exp(-_FORGET_EVERY / m))
            w = self._grid.attribute("weight")
            if w.device.get_type() == o3c.Device.DeviceType.CPU:  # the allocated blocks only, in place
                live = self._grid.hashmap().active_buf_indices().numpy()
                w.numpy()[live] *= decay  # (numpy shares the tensor's memory on the CPU)
            else:  # (Open3D's own indexed assignment corrupted memory here: a segfault in the next ray cast)
                w *= decay

    def _raycast(self, K: np.ndarray, pose: np.ndarray, shape: tuple[int, int]) -> _Reference:
        """The TSDF seen from ``pose`` (blocks of the last good frame's view)."""
        o3d, o3c = self._o3d, self._o3c
        ref_depth, ref_K, ref_pose, ref_rgb = self._view
        tr, dmax = float(self.opts.trunc_voxels), float(self.opts.depth_max)
        dimg = o3d.t.geometry.Image(o3c.Tensor(ref_depth)).to(self.device)
        coords = self._grid.compute_unique_block_coordinates(dimg, o3c.Tensor(ref_K), o3c.Tensor(_inv(ref_pose)),
                                                             1.0, dmax, tr)
        h, w = shape
        # (Open3D warns on every frame that sees more blocks than its range map had room for, then grows it)
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            out = self._grid.ray_cast(
                block_coords=coords, intrinsic=o3c.Tensor(K), extrinsic=o3c.Tensor(_inv(pose)), width=w, height=h,
                render_attributes=["depth", "color"], depth_scale=1.0, depth_min=float(self.opts.depth_min),
                depth_max=dmax, weight_threshold=1.0, trunc_voxel_multiplier=tr)
        d = out["depth"].cpu().numpy().reshape(h, w).astype(np.float32)
        d[~np.isfinite(d)] = 0
        c = np.clip(out["color"].cpu().numpy().reshape(h, w, 3).astype(np.float32), 0, 1)
        # ORB features (feature_init / feature_check) come from the last good frame's own colour image, seen
        # from the same pose as this ray cast (the model's blurred colours match too few of them)
        return _Reference(self._rgbd(d, c), d, pose.copy(), rgb=ref_rgb, K=K)

    # ------------------------------------------------------------------ registration
    def _odometry(self, src, tgt, K: np.ndarray, init: np.ndarray, method=None) -> tuple[np.ndarray, float, float]:
        o3c = self._o3c
        try:
            res = self._odo.rgbd_odometry_multi_scale(
                src, tgt, o3c.Tensor(K), o3c.Tensor(init), 1.0, float(self.opts.depth_max), self._criteria,
                method if method is not None else self._method, self._params)
        except RuntimeError as e:  # e.g. "Singular 6x6 linear system detected, tracking failed."
            raise _Lost(f"odometry failed: {_open3d_message(e)}") from None
        T = res.transformation.cpu().numpy().astype(np.float64)
        if not np.all(np.isfinite(T)):
            raise _Lost("odometry returned a non-finite pose")
        return strip_scale(T), float(res.fitness), float(res.inlier_rmse)

    def _register(self, src, tgt, K: np.ndarray, init: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Source-to-target transform by ``rgbd.loss`` (two stages for ``point_to_plane+hybrid``)."""
        o = self.opts
        if o.loss != "point_to_plane+hybrid":
            return self._odometry(src, tgt, K, init)
        T, fit, rmse = self._odometry(src, tgt, K, init, self._odo.Method.PointToPlane)
        try:
            T2, fit2, rmse2 = self._odometry(src, tgt, K, T, self._odo.Method.Hybrid)
        except _Lost:
            self._counters["refine_rejected"] += 1
            return T, fit, rmse
        D = _inv(T) @ T2
        if _rot_deg(D[:3, :3]) <= o.refine_max_rotation_deg and np.linalg.norm(D[:3, 3]) <= o.refine_max_translation:
            return T2, fit2, rmse2
        self._counters["refine_rejected"] += 1
        return T, fit, rmse

    def _dynamic_mask(self, depth: np.ndarray, K: np.ndarray, rel: np.ndarray, ref_depth: np.ndarray) -> np.ndarray:
        """Pixels of ``depth`` that land more than ``dynamic_threshold`` in front of the reference surface."""
        h, w = depth.shape
        v, u = np.nonzero(depth > 0)
        z = depth[v, u]
        p = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1) @ rel[:3, :3].T + rel[:3, 3]
        zz = p[:, 2]
        ok = zz > 1e-6
        zs = np.where(ok, zz, 1.0)
        uu = np.round(K[0, 0] * p[:, 0] / zs + K[0, 2]).astype(np.int64)
        vv = np.round(K[1, 1] * p[:, 1] / zs + K[1, 2]).astype(np.int64)
        inside = ok & (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        rd = np.zeros_like(zz)
        rd[inside] = ref_depth[vv[inside], uu[inside]]
        dyn = inside & (rd > 0) & (rd - zz > self.opts.dynamic_threshold)
        mask = np.zeros((h, w), dtype=bool)
        mask[v[dyn], u[dyn]] = True
        if mask.any():  # grow the masked regions by a pixel (borders of movers)
            import cv2

            mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & (depth > 0)
        return mask

    def _track(self, d: np.ndarray, c01: np.ndarray, K: np.ndarray, ref: _Reference,
               init_pose: np.ndarray) -> tuple[np.ndarray, float, float, Optional[np.ndarray]]:
        """Register the frame to ``ref``; returns (camera-to-world pose, fitness, rmse, dynamic mask or None)."""
        if (ref.depth > 0).mean() < 0.01:
            raise _Lost("the reference view is (nearly) empty from the last good pose")
        init = _inv(ref.pose) @ init_pose
        T, fit, rmse = self._register(self._rgbd(d, c01), ref.image, K, init)
        dyn = None
        if self.opts.dynamic_mask:
            dyn = self._dynamic_mask(d, K, T, ref.depth)
            n = int(dyn.sum())
            if 0.002 * d.size < n < 0.7 * (d > 0).sum():
                d2 = np.where(dyn, 0, d).astype(np.float32)
                T, fit, rmse = self._register(self._rgbd(d2, c01), ref.image, K, T)
                dyn = self._dynamic_mask(d, K, T, ref.depth)
            if not dyn.any():
                dyn = None
        return ref.pose @ T, fit, rmse, dyn

    def _check_result(self, pose: np.ndarray, overlap: float, rmse: float, predicted: np.ndarray) -> None:
        """Gates of a registration: overlap, RMSE, and the motion guard.

        The guard measures the pose against the motion prediction (the last good pose moved
        on by the last velocity, once per frame since it) and allows ``max_translation`` /
        ``max_rotation_deg`` per frame since the last good pose, so that one rejected frame
        cannot make every following one look like a jump.
        """
        o = self.opts
        if overlap < o.min_overlap:
            raise _Lost(f"only {overlap:.0%} of the valid depth pixels match the reference "
                        f"(rgbd.min_overlap {o.min_overlap:.0%})")
        if rmse > o.max_rmse:
            raise _Lost(f"inlier RMSE {rmse * 1000:.1f} mm > rgbd.max_rmse {o.max_rmse * 1000:.1f} mm")
        why = self._implausible_motion(predicted, pose, 1 + self._lost_run, "the motion prediction")
        if why:
            raise _Lost(why)

    def _implausible_motion(self, a: np.ndarray, b: np.ndarray, n: int, from_what: str = "the last good pose") -> str:
        """Why pose ``b`` is further from ``a`` than ``n`` frames of motion may take it ('' if it is not):
        ``max_translation`` / ``max_rotation_deg`` per frame (the motion guard)."""
        o = self.opts
        rel = _inv(a) @ b
        dt, dr = float(np.linalg.norm(rel[:3, 3])), _rot_deg(rel[:3, :3])
        if dt > o.max_translation * n:
            return (f"implausible jump of {dt:.3f} m from {from_what} "
                    f"(rgbd.max_translation {o.max_translation} m x {n} frames)")
        if dr > min(180.0, o.max_rotation_deg * n):
            return (f"implausible turn of {dr:.1f} deg from {from_what} "
                    f"(rgbd.max_rotation_deg {o.max_rotation_deg} deg x {n} frames)")
        return ""

    #: ORB matches agree with a pose when it carries them within this (metres) + this fraction of their depth
    FEATURE_TOLERANCE = (0.03, 0.01)

    def _feature_matches(self, d: np.ndarray, c: np.ndarray, K: np.ndarray, ref: _Reference):
        """``(frame's features, matched pairs [M, 2], RANSAC result or None)`` of the frame against ``ref``'s
        ORB features lifted with depth."""
        from .features import align_features, extract, matched_points

        if ref.features is None:
            ref.features = extract(ref.rgb, ref.depth, ref.K)
        cur = extract(c, d, K)
        pairs = matched_points(cur, ref.features)
        tol, rel = self.FEATURE_TOLERANCE
        res, _ = align_features(cur, ref.features, threshold=tol, relative_threshold=rel,
                                min_inliers=self.opts.feature_init_min_inliers, seed=0, pairs=pairs)
        return cur, pairs, res

    def _feature_init(self, d: np.ndarray, c: np.ndarray, K: np.ndarray, ref: _Reference) -> Optional[np.ndarray]:
        """Camera-to-world (internal) pose of the frame from ORB matches to ``ref``, or None."""
        res = self._feature_matches(d, c, K, ref)[2]
        self._counters["feature_inits"] += 1
        return None if res is None else ref.pose @ res.transform

    def _needs_feature_check(self, pose: np.ndarray, predicted: np.ndarray) -> bool:
        o = self.opts
        rel = _inv(predicted) @ pose
        return o.feature_check and (_rot_deg(rel[:3, :3]) > o.feature_check_rotation_deg
                                    or float(np.linalg.norm(rel[:3, 3])) > o.feature_check_translation)

    def _feature_check(self, d: np.ndarray, c01: np.ndarray, c: np.ndarray, K: np.ndarray, ref: _Reference,
                       predicted: np.ndarray, valid: float, dense: np.ndarray):
        """A dense pose far from the prediction, checked against ORB matches (``rgbd.feature_check``).

        Returns the registration started from the matches' RANSAC pose (as ``_register_frame`` returns it,
        initialised from "features") when more matches agree with it than with ``dense``; None to keep ``dense``
        (the matches agree with it, say nothing, or the registration from theirs fails its gates).
        """
        from .features import count_agreeing

        cur, pairs, res = self._feature_matches(d, c, K, ref)
        self._counters["feature_checks"] += 1
        tol, rel = self.FEATURE_TOLERANCE
        support = count_agreeing(cur, ref.features, pairs, _inv(ref.pose) @ dense, tol, rel)
        if res is None or support >= res.num_inliers:
            return None
        try:
            pose, fitness, rmse, dyn = self._track(d, c01, K, ref, ref.pose @ res.transform)
            overlap = fitness / max(valid, 1e-9)
            self._check_result(pose, overlap, rmse, predicted)
        except _Lost:
            return None
        again = count_agreeing(cur, ref.features, pairs, _inv(ref.pose) @ pose, tol, rel)
        log.debug("rgbd feature check: %d of %d matches agree with the dense pose, %d with the one from the "
                  "matches' RANSAC pose (%d inliers)", support, len(pairs), again, res.num_inliers)
        if again <= support:
            return None
        self._counters["feature_check_switched"] += 1
        self._last = {"fitness": fitness, "overlap": overlap, "rmse_mm": 1000 * rmse}
        return pose, fitness, rmse, dyn, overlap, "features"

    def _geometric_init(self, d: np.ndarray, K: np.ndarray, ref: _Reference,
                        predicted: np.ndarray) -> Optional[np.ndarray]:
        """Camera-to-world (internal) pose of the frame from a global registration of its depth to ``ref``'s
        (:func:`slam3r_plugins.global_registration.recover_pose`), or None."""
        from .global_registration import recover_pose

        self._counters["geometric_inits"] += 1
        return recover_pose(d, K, ref.depth, ref.K, ref.pose, predicted, ref)

    def _register_frame(self, d: np.ndarray, c01: np.ndarray, c: np.ndarray, K: np.ndarray, ref: _Reference,
                        predicted: np.ndarray, valid: float):
        """Dense registration from the prediction; if it fails or is rejected, from feature matches, then
        from a global registration of the depth."""
        try:
            pose, fitness, rmse, dyn = self._track(d, c01, K, ref, predicted)
            overlap = fitness / max(valid, 1e-9)
            self._last = {"fitness": fitness, "overlap": overlap, "rmse_mm": 1000 * rmse}
            self._check_result(pose, overlap, rmse, predicted)
        except _Lost as first:
            why = str(first)
        else:
            if self._needs_feature_check(pose, predicted):
                checked = self._feature_check(d, c01, c, K, ref, predicted, valid, pose)
                if checked is not None:
                    return checked
            return pose, fitness, rmse, dyn, overlap, "prediction"
        for how, on in (("features", self.opts.feature_init), ("geometry", self.opts.geometric_init)):
            if not on:
                continue
            if how == "features":
                init = self._feature_init(d, c, K, ref)
            else:
                init = self._geometric_init(d, K, ref, predicted)
            if init is None:
                why += ("; feature initialisation found no consistent matches" if how == "features"
                        else "; global registration of the depth found no alignment")
                continue
            try:
                pose, fitness, rmse, dyn = self._track(d, c01, K, ref, init)
                overlap = fitness / max(valid, 1e-9)
                self._last = {"fitness": fitness, "overlap": overlap, "rmse_mm": 1000 * rmse}
                self._check_result(pose, overlap, rmse, predicted)
            except _Lost as again:
                why += f"; from {'feature matches' if how == 'features' else 'global registration'}: {again}"
                continue
            self._counters["feature_init_used" if how == "features" else "geometric_init_used"] += 1
            return pose, fitness, rmse, dyn, overlap, how
        raise _Lost(why)

    # ------------------------------------------------------------------ references
    def _adopt(self, d: np.ndarray, c01: np.ndarray, K: np.ndarray, pose: np.ndarray) -> None:
        """Make a tracked frame part of the reference (new keyframe / fused into the TSDF)."""
        self._counters["references"] += 1
        if self.opts.method == "model":
            self._fuse(d, c01, K, pose)
        else:
            c = np.ascontiguousarray((np.clip(c01, 0, 1) * 255).astype(np.uint8))
            self._ref = _Reference(self._rgbd(d, c01), d, pose.copy(), rgb=c, K=K.copy())

    def _adopt_pending(self) -> None:
        if self._pending is not None:
            self._adopt(*self._pending)
            self._pending = None

    def apply_correction(self, update: Any, trajectory: Any) -> None:
        """Follow a pose correction: re-anchor on the corrected trajectory.

        The frontend keeps tracking in its own (internal) world and maps its poses to the
        app's world with ``_world``. After a loop closure, ``_world`` is recomputed so that
        the last good frame lands on its corrected pose. When the last frame was lost and
        the update relocalises it, that frame becomes the reference at its new pose and
        tracking goes on from there (no new segment).
        """
        self._counters["corrections"] += 1
        last = self._last_frame
        if last is not None and last[0] in update.frames and self._lost_run > 0:
            index, d, c01, K = last
            X = np.asarray(trajectory.pose(index), dtype=np.float64)
            internal = _inv(self._world) @ X
            self._relocalize_at(index, d, c01, K, internal)
            return
        if self._good_index is not None and self._good_index in trajectory:
            self._world = trajectory.pose(self._good_index) @ _inv(self._good_pose)

    def _relocalize_at(self, index: int, d: np.ndarray, c01: np.ndarray, K: np.ndarray, pose: np.ndarray) -> None:
        """A lost frame placed on the map: it becomes the reference; tracking resumes (same segment).

        Method model: the TSDF is kept when the new pose is one the motion guard would have
        accepted from the last good pose after this many lost frames (``max_translation`` /
        ``max_rotation_deg`` per frame): a short loss near the modelled place, where the model
        (in a dynamic scene: the static room, with the walkers averaged out) is still right.
        Further away it starts again at the new pose (the model may be what tracking lost).
        """
        self._counters["relocalized"] += 1
        o = self.opts
        near = not self._implausible_motion(self._good_pose, pose, max(1, self._lost_run))
        self._good_pose = pose.copy()
        self._good_index = index
        self._velocity = np.eye(4)
        self._lost_run = self._lost_with_depth = 0
        self._initialised = True
        self._view = (d, K, pose.copy(), (c01 * 255 + 0.5).astype(np.uint8))
        self._pending = None
        if o.method == "model" and not near:
            self._grid = None  # far from the model's place: start it again at the new pose
            self._counters["model_resets"] += 1
        self._adopt(d, c01, K, pose)
        log.info("rgbd: frame %d relocalised; tracking continues from it", index)

    def _start_segment(self, d: np.ndarray, c01: np.ndarray, K: np.ndarray, pose: np.ndarray) -> None:
        self._grid = None
        self._ref = None
        self._pending = None
        self._segment += 1
        self._counters["segments"] += 1
        self._good_pose = pose.copy()
        self._velocity = np.eye(4)
        self._lost_run = self._lost_with_depth = 0
        self._initialised = True
        self._view = (d, K, pose.copy(), (c01 * 255 + 0.5).astype(np.uint8))
        if self.opts.follow_keyframes:
            self._pending = (d, c01, K, pose.copy())
        else:
            self._adopt(d, c01, K, pose)

    # ------------------------------------------------------------------ per frame
    def track(self, frame: Frame) -> Estimate:
        t0 = time.perf_counter()
        try:
            return self._track_frame(frame)
        finally:
            self._seconds += time.perf_counter() - t0

    def _track_frame(self, frame: Frame) -> Estimate:
        o = self.opts
        depth_full, K_full = self._check(frame)
        if self._shape is not None and self._shape != depth_full.shape:
            raise FrontendError(f"frame {frame.index} ({frame.name or 'unnamed'}) is {frame.width}x{frame.height} "
                                f"but the stream started at {self._shape[1]}x{self._shape[0]}")
        self._shape = depth_full.shape
        self._counters["frames"] += 1
        d, c, K = self._downsample(depth_full, frame.rgb, K_full)
        c01 = c.astype(np.float32) / 255.0
        valid = float((d > 0).mean())
        if o.follow_keyframes:
            self._adopt_pending()  # the previous frame was kept by the keyframe policy

        status, reason, dyn, fitness, overlap, rmse = "ok", "", None, None, None, None
        pose = self._good_pose.copy()
        if not self._initialised:
            if valid < o.min_valid_fraction:
                status = "lost"
                reason = (f"only {valid:.1%} of the pixels have valid depth (rgbd.min_valid_fraction "
                          f"{o.min_valid_fraction:.0%}); waiting for a frame with depth to start")
            else:
                self._start_segment(d, c01, K, pose)  # identity at the start; the last good pose after a restart
                self._good_index = frame.index
                self._counters["tracked"] += 1
        else:
            n = self._lost_run + 1  # frames since the last good pose
            if o.motion_model == "constant_velocity":
                predicted = self._good_pose @ (_se3_power(self._velocity, n) if n > 1 else self._velocity)
            else:
                predicted = self._good_pose.copy()
            try:
                if valid < o.min_valid_fraction:
                    raise _Lost(f"only {valid:.1%} of the pixels have valid depth "
                                f"(rgbd.min_valid_fraction {o.min_valid_fraction:.0%})")
                with self.stage("registration"):  # (and the model's ray cast)
                    ref = self._raycast(K, self._good_pose, d.shape) if o.method == "model" else self._ref
                    pose, fitness, rmse, dyn, overlap, init_from = self._register_frame(d, c01, c, K, ref, predicted,
                                                                                        valid)
            except _Lost as e:
                status, reason = "lost", str(e)
                pose = self._good_pose.copy()
            if status == "ok":
                step = _inv(self._good_pose) @ pose
                self._velocity = step if n == 1 else _se3_power(step, 1.0 / n)
                self._good_pose = pose.copy()
                self._good_index = frame.index
                self._lost_run = self._lost_with_depth = 0
                self._counters["tracked"] += 1
                fd = d
                if dyn is not None:
                    self._counters["dynamic_pixels"] += int(dyn.sum())
                    fd = np.where(dyn, 0, d).astype(np.float32)
                self._view = (fd, K, pose.copy(), c)
                if o.follow_keyframes:
                    self._pending = (fd, c01, K, pose.copy())
                elif o.method == "model":
                    self._adopt(fd, c01, K, pose)
                elif (overlap < o.keyframe_overlap or init_from != "prediction"
                      or (self._ref is not None
                          and _rot_deg((_inv(self._ref.pose) @ pose)[:3, :3]) > o.keyframe_max_rotation_deg)):
                    self._adopt(fd, c01, K, pose)

        if status == "lost":
            self._lost_run += 1
            if valid >= o.min_valid_fraction:
                self._lost_with_depth += 1
            self._counters["lost"] += 1
            msg = f"rgbd tracking lost at frame {frame.index} ({frame.name or 'unnamed'}): {reason}"
            if o.on_failure == "stop":
                raise FrontendError(msg + " (rgbd.on_failure: stop; rgbd.on_failure: recover keeps going)")
            log.warning("%s; keeping the last good pose (%d lost in a row)", msg, self._lost_run)
            if self._initialised and self._lost_with_depth >= o.restart_after:
                log.warning("rgbd: %d frames lost in a row: the next frame with depth starts a new segment at "
                            "the last good pose", self._lost_run)
                self._counters["restarts"] += 1
                self._initialised = False

        self._last_frame = (frame.index, d, c01, K)
        self._pose = self._world @ np.asarray(pose, dtype=np.float64)
        return self._estimate(frame, depth_full, K_full, status, reason, dyn, fitness, overlap, rmse)

    def _estimate(self, frame: Frame, depth: np.ndarray, K: np.ndarray, status: str, reason: str,
                  dyn: Optional[np.ndarray], fitness: Optional[float], overlap: Optional[float],
                  rmse: Optional[float]) -> Estimate:
        pose = self._pose
        conf = (depth > 0).astype(np.float32)
        if status != "ok":
            conf[:] = 0
        elif dyn is not None:
            f = int(self.opts.downsample)
            h, w = depth.shape
            full = np.repeat(np.repeat(dyn, f, axis=0), f, axis=1)[:h, :w]
            if full.shape != (h, w):
                full = np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")
            conf[full] = 0
        extras: dict[str, Any] = {"segment": self._segment}
        if fitness is not None:
            extras.update(fitness=fitness, overlap=overlap, inlier_rmse=rmse)
        if dyn is not None:
            extras["dynamic_fraction"] = float(dyn.mean())
        points = None
        if self.opts.points:
            h, w = depth.shape
            v, u = np.mgrid[0:h, 0:w].astype(np.float64)
            cam = np.stack([(u - K[0, 2]) * depth / K[0, 0], (v - K[1, 2]) * depth / K[1, 1], depth], -1)
            points = (cam.reshape(-1, 3) @ pose[:3, :3].T + pose[:3, 3]).reshape(h, w, 3).astype(np.float32)
            points[depth <= 0] = 0
        raw = np.asarray(frame.depth, dtype=np.float32).reshape(depth.shape)
        return Estimate(index=frame.index, timestamp=frame.timestamp, pose=pose.copy(), intrinsics=K.copy(),
                        depth=raw, confidence=conf, points=points, depth_is_metric=True, extras=extras,
                        status=TrackingStatus.TRACKED if status == "ok" else TrackingStatus.LOST, status_reason=reason)


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: RgbdOptions}


@hookimpl
def slam3r_make_frontend(name, context):
    if name != "rgbd":
        return None
    opts = None
    try:
        opts = context.options(SECTION)
    except ConfigError:  # the section is not registered (plugin loaded by hand): defaults
        opts = RgbdOptions()
    return RgbdFrontend(opts, context)
