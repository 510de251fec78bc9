"""TSDF map fusion (plugin ``fusion``): Open3D tensor ``VoxelBlockGrid`` on CPU or CUDA.

What is fused (``depth: auto``):

* RGB-D sources (``frame.depth`` present): the sensor depth, at the predicted
  poses. A learned frontend predicts poses up to an unknown scale
  (``estimate.depth_is_metric`` False); the predicted trajectory is brought to
  metric scale with a robust scale from sensor vs predicted depth over confident
  pixels (:mod:`slam3r_plugins.fusion.scale`: per frame a median of ratios with MAD
  outlier rejection; over time a running median). The scale is proposed to the core
  as a correction of the world's scale (``PoseUpdate(scale=WorldScale(...))``, see
  :func:`propose_scale`): the trajectory store owns it (``context.trajectory.world_scale``)
  and every consumer reads metric poses from there. It is also logged, put
  in ``summary.json`` (``info.metric_scale``) and in ``metrics.json``
  (``metric_scale``, ``metric_scale_frames``, ``metric_scale_spread``).
* Monocular sources: the predicted depth, masked by confidence (pixels below the
  ``conf_quantile`` quantile of a frame's confidence are dropped), in the
  prediction's own units (times the metric scale when there is one). The voxel
  size is relative to the scene: ``voxel_fraction`` x the median depth of the
  first fused frame, unless ``voxel_size`` is set.

Scale convergence. Integrating at poses scaled by an early, still-moving scale
estimate would smear the map. Frames are integrated live with the current scale
(so the map, the viewer and "save now" show something during the run); each
fused frame is also kept in a bounded CPU buffer (see below). At the end of the
run, if any frame was integrated with a scale more than ``reintegrate_tol`` away
from the final scale, the grid is rebuilt from the buffer with the final scale.
Frames that arrive before any scale is known are integrated as soon as it is.

Following pose corrections (loop closure, relocalisation; ``follow_corrections``).
Open3D's grid cannot take a frame back out, so every fused frame is kept in the
buffer **in its own camera frame, with its frame index** (:mod:`slam3r_plugins.fusion.tsdf`):
depth as float16 and colour, subsampled by ``buffer_stride`` pixels, at most
``buffer_max_frames`` frames (when full, every second one is dropped and only every
second new frame is kept), i.e. ``h x w x 5`` bytes a frame for the ``[h, w]``
subsampled image (384 KB at 640x480 with stride 2; 115 MB for the default 300
frames). A correction (hook ``slam3r_poses_updated``) marks the map stale when it
moved a fused frame's geometry by more than ``correction_tol_voxels``; the grid is
then rebuilt from the buffer with every frame at its *current* transform
(``context.trajectory.transform(i)``: non-keyframes follow their keyframe; a Sim(3)
correction also scales predicted depth):

* at the end of the run and on "save now" / export, synchronously: ``mesh.ply`` and
  ``points.ply`` always agree with the final poses;
* mid-run, for the live view, at most every ``rebuild_interval`` seconds
  (``live_rebuild``): ``background`` builds a new grid in a thread while frames keep
  being fused into the old one, then swaps it in under the lock (frames buffered
  meanwhile are added first); ``sync`` rebuilds on the frame loop's thread; ``auto``
  (default) is ``background`` once something reads the live mesh (the viewer, the
  rerun recorder) and ``off`` otherwise. ``context.services.map_version``
  counts the swaps (the viewer refreshes its mesh when it changes).

A rebuilt map holds the buffered frames only (all of them until the buffer first
fills, then every second, fourth, ... frame), at ``buffer_stride``. With
``follow_corrections: false`` and no scale to estimate, no buffer is kept.

Lost frames. A frame whose tracking is lost (``estimate.lost``: the frontend said so,
as the ``rgbd`` frontend does on a failed registration, or its confidence map is zero
everywhere; :func:`slam3r_app.types.settle_status`) is never integrated, buffered or used for the scale:
its pose is not to be trusted (the rgbd frontend keeps the last good one), and
its sensor depth would be fused at that wrong pose. Such frames (among those
``frames`` selects) are counted: ``fusion_skipped_lost`` in ``metrics.json`` and
``summary.json`` (``info``), and a log line.

Files: ``mesh.ply`` (coloured triangle mesh, marching cubes) and ``points.ply``
(coloured surface points), written atomically.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.errors import ConfigError
from slam3r_app.hookspecs import hookimpl
from slam3r_app.services import MapMesh, MapPoints, to_uint8
from slam3r_app.types import PoseUpdate, ScaleProvenance, WorldScale

from ..maps.common import (
    confidence_mask,
    median_depth,
    resize_nearest,
    scale_intrinsics,
    valid_depth_mask,
    write_point_cloud,
    write_triangle_mesh,
)
from ..maps.frame_buffer import BufferedFrame, FrameBuffer
from .scale import ScaleEstimator
from .tsdf import GridBuild, displacement, integrate, o3d_device, placement
from .tsdf import make_grid as _make_grid

log = logging.getLogger("slam3r.fusion")

SECTION = "fusion"


class FusionOptions(BaseModel):
    """``fusion:`` TSDF map (Open3D VoxelBlockGrid) -> mesh.ply, points.ply."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="fuse a TSDF map (off: no mesh; the metric scale is still estimated)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Open3D device; auto: CUDA when available")
    frames: Literal["keyframes", "all"] = Field("keyframes", description="integrate keyframes only or every frame")
    depth: Literal["auto", "sensor", "predicted"] = Field(
        "auto", description="depth to fuse; auto: the sensor's when the source has depth, else the prediction")
    voxel_size: Optional[float] = Field(
        None, ge=1e-4, le=10.0, allow_inf_nan=False,
        description="voxel edge in map units (metres when metric); None: voxel_fraction x median depth")
    voxel_fraction: float = Field(0.01, ge=1e-4, le=0.5, allow_inf_nan=False,
                                  description="auto voxel size as a fraction of the median depth")
    trunc_voxels: float = Field(4.0, ge=1, le=32, description="TSDF truncation distance in voxels")
    block_resolution: int = Field(8, ge=2, le=32, description="voxels per block edge")
    block_count: int = Field(20000, ge=100, le=2_000_000, description="initial hash-map capacity in blocks")
    max_memory_gb: float = Field(
        4.0, gt=0, le=1024, allow_inf_nan=False,
        description="memory budget of the TSDF map (host or GPU); a frame whose fusion would pass it is not fused")
    depth_max: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="ignore depth beyond this (map units); None: depth_max_factor x median depth")
    depth_max_factor: float = Field(3.0, gt=1, description="auto depth_max as a multiple of the first frame's median depth")
    conf_quantile: float = Field(
        0.3, ge=0, lt=1, description="drop predicted pixels below this quantile of the frame's confidence")
    integrate_stride: int = Field(1, ge=1, le=8, description="pixel step of the depth used for integration")
    weight_threshold: float = Field(1.0, ge=0, description="min. integration weight of exported surface voxels")
    scale_mode: Literal["auto", "off", "fixed"] = Field(
        "auto", description="metric scale: auto (estimate from sensor depth when the frontend is not metric), "
                            "off (keep the prediction's units), fixed (use scale_value)")
    scale_value: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description="the scale for scale_mode: fixed")
    scale_window: Optional[int] = Field(
        None, ge=1, description="running median over the last N frame estimates (None: all frames)")
    scale_mad_k: float = Field(3.0, gt=0, description="per-frame outlier rejection, in scaled MADs of the log-ratio")
    scale_min_pixels: int = Field(200, ge=10, description="a frame needs this many usable pixels to vote")
    scale_every: int = Field(1, ge=1, description="estimate the scale on every N-th frame")
    scale_stride: int = Field(2, ge=1, le=16, description="pixel step of the depth maps used for the scale")
    reintegrate: bool = Field(True, description="rebuild the map from the buffer when the scale moved during the run")
    reintegrate_tol: float = Field(0.01, gt=0, description="relative scale change that triggers the rebuild")
    buffer_max_frames: int = Field(300, ge=2, description="frames kept on the CPU for the rebuild (bounded memory)")
    buffer_stride: int = Field(2, ge=1, le=8, description="pixel step of the buffered depth / colour")
    follow_corrections: bool = Field(
        True, description="rebuild the map from the buffer at the corrected poses after pose corrections")
    correction_tol_voxels: float = Field(
        0.5, gt=0, description="a correction that moves no fused frame by more than this many voxels is ignored")
    live_rebuild: Literal["auto", "background", "sync", "off"] = Field(
        "auto", description="mid-run rebuilds after corrections: in a thread, on the frame loop, or only at the "
                            "end / on save; auto: background once the live mesh is read (viewer), else off")
    rebuild_interval: float = Field(10.0, ge=0, description="seconds between mid-run rebuilds (0: at once)")
    mesh: bool = Field(True, description="write mesh.ply")
    points: bool = Field(True, description="write points.ply")


class _FusionState:
    def __init__(self, opts: FusionOptions) -> None:
        self.opts = opts
        self.grid = None
        self.device = None
        self.voxel_size: Optional[float] = None
        self.depth_max: Optional[float] = None
        self.estimator = ScaleEstimator(window=opts.scale_window, mad_k=opts.scale_mad_k,
                                        min_pixels=opts.scale_min_pixels)
        self.scale_source = "none"  # metric_frontend | estimated | fixed | none
        self.buffer = FrameBuffer(opts.buffer_max_frames)
        self.pending: list[BufferedFrame] = []  # frames waiting for a first scale
        self.used_scales = _Extremes()  # scales frames were fused at (only the extremes matter: bounded memory)
        self.used: dict[int, np.ndarray] = {}  # buffered frame -> transform (store units) it is in the grid at
        self.stale = False  # a correction moved fused frames: the grid no longer matches the poses
        self.worker: Optional[GridBuild] = None
        self.last_rebuild = -float("inf")  # time.monotonic() of the last mid-run rebuild start
        self.rebuilds: list[dict] = []  # {"frames", "seconds", "when"}
        self.live_readers = False  # someone reads the live mesh (viewer, recorder)
        self.map_version = 0
        self.frames_integrated = 0
        self.frames_seen = 0
        self.skipped_lost = 0  # frames `frames` selected but left out: tracking lost
        self.memory_limited = False  # fusion.max_memory_gb reached: no more frames are fused
        self.warned: set[str] = set()
        self.lock = threading.RLock()  # the grid is read by the live viewer from another thread

    def warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(msg, *args)


class _Extremes:
    """The smallest and largest value appended, in constant memory: iterating yields just those two,
    which is all ``max(|u / s - 1|)`` over every value ``u`` needs (the maximum of a convex function).
    A list of every frame's scale would grow by one float per fused frame for the whole run."""

    def __init__(self, values=()) -> None:
        self.lo: Optional[float] = None
        self.hi: Optional[float] = None
        for v in values:
            self.append(v)

    def append(self, v: float) -> None:
        v = float(v)
        self.lo = v if self.lo is None else min(self.lo, v)
        self.hi = v if self.hi is None else max(self.hi, v)

    def clear(self) -> None:
        self.lo = self.hi = None

    def __iter__(self):
        return iter([] if self.lo is None else [self.lo, self.hi])

    def __bool__(self) -> bool:
        return self.lo is not None


def _state(context) -> _FusionState:
    st = context.state.get("_fusion_state")
    if st is None:
        st = context.state["_fusion_state"] = _FusionState(context.options(SECTION))
    return st


# ----------------------------------------------------------------------------- Open3D
_o3d_device = o3d_device


def make_grid(voxel_size: float, opts: FusionOptions, device):
    """An empty grid with ``opts``' block layout (see :func:`slam3r_plugins.fusion.tsdf.make_grid`)."""
    return _make_grid(voxel_size, opts.block_resolution, opts.block_count, device)


__all__ = ["FusionOptions", "make_grid", "integrate", "live_mesh", "extract", "map_scale"]


# ----------------------------------------------------------------------------- per frame
def _scale_for_frame(st: _FusionState, frame, est, context) -> Optional[float]:
    """Update and return the scale from prediction units to metres (None: not known yet)."""
    opts = st.opts
    if est.depth_is_metric:
        st.scale_source = "metric_frontend"
        return 1.0
    if opts.scale_mode == "fixed":
        if opts.scale_value is None:
            raise ConfigError(f"{context.config.where('fusion.scale_mode')}: scale_mode: fixed needs fusion.scale_value")
        st.scale_source = "fixed"
        return float(opts.scale_value)
    if opts.scale_mode == "off":
        st.scale_source = "none"
        return None
    if frame.depth is None:  # a colour-only frame: keep whatever estimate earlier RGB-D frames gave
        return st.estimator.scale if st.scale_source == "estimated" else None
    st.scale_source = "estimated"
    if est.depth is not None and st.frames_seen % opts.scale_every == 0:
        sensor = np.asarray(frame.depth, dtype=np.float32)
        pred = np.asarray(est.depth, dtype=np.float32)
        if sensor.shape != pred.shape:
            st.warn_once("shape", "fusion: sensor depth %s and predicted depth %s differ in size; no scale estimate",
                         sensor.shape, pred.shape)
        else:
            mask = confidence_mask(est.confidence, opts.conf_quantile, valid_depth_mask(pred))
            before = st.estimator.scale
            k = opts.scale_stride
            s = st.estimator.update(sensor[::k, ::k], pred[::k, ::k], None if mask is None else mask[::k, ::k])
            if s is not None and before is None:
                log.info("metric scale: first estimate %.5g at frame %d", s, frame.index)
            elif s is not None and st.estimator.frames_used % 50 == 0:
                log.debug("metric scale %.5g after %d frames (spread %.3g)", s, st.estimator.frames_used,
                          st.estimator.spread or 0.0)
    return st.estimator.scale


#: relative change of the estimate that is proposed to the store mid-run (the final value always is)
SCALE_PROPOSAL_TOL = 1e-3


def world_scale(st: _FusionState) -> Optional[WorldScale]:
    """The world's scale this plugin knows: fitted from sensor depth, or given; None if it has none."""
    if st.scale_source == "estimated" and st.estimator.scale is not None:
        return WorldScale(float(st.estimator.scale), ScaleProvenance.SENSOR_DEPTH, st.estimator.info())
    if st.scale_source == "fixed":
        return WorldScale(float(st.opts.scale_value), ScaleProvenance.GIVEN, {"method": "fixed (fusion.scale_value)"})
    return None


def propose_scale(context, final: bool) -> Optional[PoseUpdate]:
    """A correction of the world's scale when this plugin's differs from the store's (mid-run: by more than
    ``SCALE_PROPOSAL_TOL``; at the end: at all), so that the store owns the scale every consumer reads."""
    st = context.state.get("_fusion_state")
    want = world_scale(st) if st is not None else None
    if want is None:
        return None
    have = context.trajectory.world_scale
    same_kind = have.provenance == want.provenance
    if same_kind and (have.value == want.value or (not final and abs(want.value / have.value - 1.0) <= SCALE_PROPOSAL_TOL)):
        return None
    return PoseUpdate(scale=want, source=SECTION, reason=f"world scale {want.value:.6g} ({want.provenance.value})",
                      based_on_revision=context.trajectory.revision)


def _depth_for_frame(st: _FusionState, frame, est) -> tuple[Optional[np.ndarray], Optional[np.ndarray], bool]:
    """(depth, K, is_sensor) to fuse for this frame, or (None, None, False)."""
    opts = st.opts
    use_sensor = opts.depth == "sensor" or (opts.depth == "auto" and frame.depth is not None)
    if use_sensor:
        if frame.depth is None:
            st.warn_once("nodepth", "fusion.depth is 'sensor' but frame %d has no depth; such frames are not fused",
                         frame.index)
            return None, None, False
        K = frame.intrinsics if frame.intrinsics is not None else est.intrinsics
        d = np.asarray(frame.depth, dtype=np.float32)
        if d.shape != (frame.height, frame.width):
            st.warn_once("dshape", "fusion: depth %s and colour %s differ in size; frames not fused",
                         d.shape, (frame.height, frame.width))
            return None, None, False
        return d, np.asarray(K, dtype=np.float64), True
    if est.depth is None:
        st.warn_once("nopred", "fusion: the frontend gives no depth; nothing to fuse")
        return None, None, False
    d = np.asarray(est.depth, dtype=np.float32)
    mask = confidence_mask(est.confidence, opts.conf_quantile, valid_depth_mask(d))
    if mask is not None:
        d = np.where(mask, d, 0).astype(np.float32)
    return d, np.asarray(est.intrinsics, dtype=np.float64), False


def _ensure_grid(st: _FusionState, depth_m: np.ndarray) -> bool:
    if st.grid is not None:
        return True
    med = median_depth(depth_m)
    if med is None:
        return False
    opts = st.opts
    st.voxel_size = opts.voxel_size or opts.voxel_fraction * med
    st.depth_max = opts.depth_max or opts.depth_max_factor * med
    st.device = st.device or _o3d_device(opts.device)
    st.grid = make_grid(st.voxel_size, opts, st.device)
    log.info("fusion: TSDF voxel %.4g, depth_max %.4g, truncation %.4g (%s)", st.voxel_size, st.depth_max,
             st.voxel_size * opts.trunc_voxels, st.device)
    return True


def map_scale(st: _FusionState) -> Optional[float]:
    """Map units per store unit now: the metric scale, 1 without one, None while it is still unknown."""
    if st.scale_source == "estimated":
        return st.estimator.scale
    if st.scale_source == "fixed":
        return float(st.opts.scale_value)
    return 1.0


def _transform(context, index: int, fallback: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The frame's current world transform (store units, Sim(3)) from the trajectory store."""
    traj = getattr(context, "trajectory", None)
    if traj is not None and index in traj:
        return traj.transform(index)
    return fallback


# ----------------------------------------------------------------------------- memory guard
class MapMemoryError(ConfigError):
    """The TSDF map would pass ``fusion.max_memory_gb`` (the message says by how much and what to change)."""


def block_bytes(opts: FusionOptions) -> int:
    """Bytes of one voxel block: tsdf, weight (float32) and colour (3 x float32) per voxel, plus its key."""
    return int(opts.block_resolution) ** 3 * 20 + 32


#: Open3D's VoxelBlockGrid touches blocks from every 4th pixel of a depth map, in a hash map of
#: ``(W / 4) * (H / 4) * 4`` blocks (``VoxelBlockGrid::GetUniqueBlockCoordinates``)
_TOUCH_STRIDE = 4
#: blocks next to a sample's own that Open3D touches too, on average (the TUM sample, voxels of 1 mm to
#: 5 cm: the estimate is 0.6 to 2.7 times the count Open3D 0.20 allocates for a first frame)
_NEIGHBOURS = 3.0


def frame_blocks(depth: np.ndarray, K: np.ndarray, voxel: float, opts: FusionOptions, depth_max: float) -> int:
    """Estimated number of voxel blocks one depth map touches (an upper bound for the new blocks it adds).

    As Open3D does: every 4th pixel in both directions activates the blocks of its truncation band
    along its ray (``2 trunc / block + 1`` deep); sampled pixels share a block when the block is larger
    than their spacing at the median depth; at most ``(W / 4) (H / 4) 4`` blocks a frame.
    """
    d = np.asarray(depth, dtype=np.float32)
    sub = d[::_TOUCH_STRIDE, ::_TOUCH_STRIDE]
    valid = np.isfinite(sub) & (sub > 0) & (sub < depth_max)
    n = int(valid.sum())
    if n == 0:
        return 0
    z = float(np.median(sub[valid]))
    f = float(np.mean([K[0][0], K[1][1]]))
    block = voxel * opts.block_resolution
    share = min(1.0, (_TOUCH_STRIDE * z / max(f, 1e-9) / block) ** 2)
    band = 2.0 * opts.trunc_voxels / opts.block_resolution + 1.0
    cap = (d.shape[1] // _TOUCH_STRIDE) * (d.shape[0] // _TOUCH_STRIDE) * 4
    return int(min(cap, np.ceil(n * share * band * _NEIGHBOURS)))


def check_memory(st: "_FusionState", depth: np.ndarray, K: np.ndarray) -> None:
    """Refuse a frame whose fusion would take the map past ``fusion.max_memory_gb``.

    The projection counts the grid's allocated capacity as Open3D grows it (the hash map doubles,
    old and new buffers coexist while it does) with this frame's blocks added.

    Raises:
        MapMemoryError: naming the estimate, the budget and the keys that change it.
    """
    opts = st.opts
    grid = st.grid
    capacity = size = 0
    if grid is not None:
        hm = grid.hashmap()
        size, capacity = int(hm.size()), int(hm.capacity())
    else:
        capacity = int(opts.block_count)
    new = frame_blocks(depth, K, float(st.voxel_size), opts, float(st.depth_max))
    need = size + new
    peak = capacity if need <= capacity else capacity + max(2 * capacity, need)
    gb = peak * block_bytes(opts) / 1e9
    if gb <= opts.max_memory_gb:
        return
    raise MapMemoryError(
        f"fusion: the TSDF map would need about {gb:.1f} GB (voxel_size {st.voxel_size:.3g}, {new:,} blocks of "
        f"{opts.block_resolution}^3 voxels for frame's {int(np.count_nonzero(depth > 0)):,} pixels, {size:,} blocks "
        f"in the map), more than fusion.max_memory_gb = {opts.max_memory_gb:g}; raise fusion.voxel_size (or "
        f"voxel_fraction), lower fusion.depth_max, raise integrate_stride, or raise fusion.max_memory_gb")


def _integrate_entry(st: _FusionState, depth: np.ndarray, rgb: np.ndarray, K: np.ndarray, T: np.ndarray,
                     sensor: bool, scale: float, index: Optional[int] = None) -> None:
    """Integrate one frame into the live grid at transform ``T`` (store units) and map scale ``scale``.

    A frame that would take the map past ``fusion.max_memory_gb`` is not fused: with a map already
    built, the map stops growing (logged once, ``fusion_memory_limited`` in metrics.json); for the
    first frame the configuration cannot work and :class:`MapMemoryError` says so.
    """
    if st.memory_limited:
        return
    factor, c2w = placement(T, scale, sensor)
    d = np.asarray(depth, dtype=np.float32) * np.float32(factor)
    if not _ensure_grid(st, d):
        return
    try:
        check_memory(st, d, K)
    except MapMemoryError as e:
        if st.frames_integrated == 0:
            st.grid = None
            raise
        st.memory_limited = True
        log.error("%s; the map keeps the %d frames fused so far and stops growing", e, st.frames_integrated)
        return
    with st.lock:
        integrate(st.grid, d, rgb, K, c2w, st.depth_max, st.opts.trunc_voxels, st.device)
    st.used_scales.append(scale)
    st.frames_integrated += 1
    if index is not None:
        st.used[index] = np.array(T, dtype=np.float64)


def _keeps_buffer(st: _FusionState) -> bool:
    opts = st.opts
    return opts.follow_corrections or (st.scale_source == "estimated" and opts.reintegrate)


def process(frame, est, context) -> None:
    st = _state(context)
    opts = st.opts
    _poll_rebuild(st, context)
    lost = est.status_reason if est.lost else ""
    scale = None if lost else _scale_for_frame(st, frame, est, context)  # a lost frame has no vote on the scale
    st.frames_seen += 1
    if not opts.enabled or (opts.frames == "keyframes" and not est.is_keyframe):
        return
    if lost:
        st.skipped_lost += 1
        log.debug("fusion: frame %d not fused: %s", frame.index, lost)
        st.warn_once("lost", "fusion: frame %d not fused: %s (lost frames never enter the map)", frame.index, lost)
        return
    depth, K, sensor = _depth_for_frame(st, frame, est)
    if depth is None:
        return
    rgb = np.asarray(frame.rgb)
    if rgb.shape[:2] != depth.shape:  # predicted depth at another resolution: colour follows depth
        import cv2

        rgb = cv2.resize(rgb, (depth.shape[1], depth.shape[0]), interpolation=cv2.INTER_AREA)
    # the frame's transform now (== est.pose): its depth is kept in its own camera frame, placed by index later
    T = _transform(context, frame.index, np.asarray(est.pose, dtype=np.float64))
    entry = None
    buffered = False
    if _keeps_buffer(st) or (st.scale_source == "estimated" and scale is None):
        b = opts.buffer_stride
        entry = BufferedFrame(frame.index, resize_nearest(depth, b).astype(np.float16), resize_nearest(rgb, b).copy(),
                              scale_intrinsics(K, b), sensor)
        if _keeps_buffer(st):
            thinned = st.buffer.thinned
            buffered = st.buffer.add(entry)
            if st.buffer.thinned != thinned:  # forget the frames the buffer dropped
                keep = set(st.buffer.indices())
                st.used = {i: U for i, U in st.used.items() if i in keep}
    if st.scale_source == "estimated":
        if scale is None:  # no scale yet: integrate when there is one
            st.pending.append(entry)
            if len(st.pending) > opts.buffer_max_frames:
                st.pending = st.pending[::2]
            return
        if st.pending:
            log.info("fusion: integrating %d frames that waited for the metric scale", len(st.pending))
            for e in st.pending:
                _integrate_entry(st, e.depth, e.rgb, e.K, _transform(context, e.index, T), e.sensor, scale, e.index)
            st.pending.clear()
    s = 1.0 if scale is None else scale
    k = opts.integrate_stride
    _integrate_entry(st, resize_nearest(depth, k), resize_nearest(rgb, k), scale_intrinsics(K, k), T, sensor, s,
                     frame.index if buffered else None)
    _maybe_rebuild_live(st, context)


# ----------------------------------------------------------------------------- following corrections
def _check_stale(st: _FusionState, context) -> None:
    """Mark the map stale when a buffered frame's current transform is off the one it was fused at."""
    if st.stale or not st.used or st.voxel_size is None:
        return
    s = map_scale(st) or 1.0
    idx = [i for i in st.buffer.indices() if i in st.used]
    now = [_transform(context, i) for i in idx]
    ok = [n is not None for n in now]
    if not any(ok):
        return
    old = np.stack([st.used[i] for i, g in zip(idx, ok) if g])
    new = np.stack([n for n in now if n is not None])
    # displacement in map units of points out to depth_max (map units) from the camera
    moved = displacement(old, new, st.depth_max / s) * s / st.voxel_size
    worst = float(moved.max())
    if worst > st.opts.correction_tol_voxels:
        st.stale = True
        log.info("fusion: pose correction moved %d of %d buffered fused frames by up to %.1f voxels: the map will "
                 "be rebuilt at the corrected poses", int((moved > st.opts.correction_tol_voxels).sum()),
                 len(moved), worst)


def _live_mode(st: _FusionState) -> str:
    mode = st.opts.live_rebuild
    if mode == "auto":
        return "background" if st.live_readers else "off"
    return mode


def _start_rebuild(st: _FusionState, context, background: bool, why: str) -> Optional[GridBuild]:
    """Rebuild the grid from the buffer at the current transforms (None: nothing to rebuild from)."""
    s = map_scale(st)
    # the frames the map holds (a frame refused at fusion.max_memory_gb stays out of the rebuilt map too)
    placed = [(e, _transform(context, e.index, st.used[e.index])) for e in st.buffer.frames() if e.index in st.used]
    placed = [(e, T) for e, T in placed if T is not None]
    if s is None or not placed or st.voxel_size is None:
        return None
    frames = [e for e, _ in placed]
    T = np.stack([T for _, T in placed])
    traj = getattr(context, "trajectory", None)
    log.info("fusion: rebuilding the map from %d buffered frames at %s (%s)%s", len(frames),
             f"scale {s:.5g} and the current poses" if st.scale_source in ("estimated", "fixed") else "the current poses",
             why, " in the background" if background else "")
    return GridBuild(frames, T, s, lambda: make_grid(st.voxel_size, st.opts, st.device), st.depth_max,
                     st.opts.trunc_voxels, st.device, background=background,
                     revision=traj.revision if traj is not None else -1)


def _adopt(st: _FusionState, context, build: GridBuild, when: str) -> bool:
    """Swap a finished build in: frames buffered since it started are added first. False if it failed."""
    if build.error is not None or build.grid is None:
        if build.error is not None:
            log.warning("fusion: rebuilding the map failed (%s: %s); keeping the old map",
                        type(build.error).__name__, build.error)
        return False
    s = build.map_scale
    used = {e.index: T for e, T in zip(build.frames, build.transforms)}
    tail = [e for e in st.buffer.frames() if e.index > build.upto and e.index in st.used]
    for e in tail:  # fused live while the build ran
        T = _transform(context, e.index, st.used.get(e.index))
        if T is None:
            continue
        f, c2w = placement(T, s, e.sensor)
        integrate(build.grid, e.depth.astype(np.float32) * np.float32(f), e.rgb, e.K, c2w, st.depth_max,
                  st.opts.trunc_voxels, st.device)
        used[e.index] = T
    with st.lock:
        st.grid = build.grid
    st.used = used
    st.used_scales = _Extremes([s] if used else [])
    st.frames_integrated = len(used)
    st.stale = False
    st.map_version += 1
    context.services.map_version = st.map_version
    st.rebuilds.append({"frames": len(used), "seconds": round(build.seconds, 4), "when": when,
                        "background": build.background})
    log.info("fusion: map rebuilt from %d frames in %.2f s (%s)", len(used), build.seconds, when)
    _check_stale(st, context)  # corrections that came while it was being built
    return True


def _poll_rebuild(st: _FusionState, context) -> None:
    w = st.worker
    if w is not None and w.done:
        st.worker = None
        _adopt(st, context, w, "mid-run")


def _maybe_rebuild_live(st: _FusionState, context) -> None:
    mode = _live_mode(st)
    if not st.stale or mode == "off" or st.worker is not None:
        return
    now = time.monotonic()
    if now - st.last_rebuild < st.opts.rebuild_interval:
        return
    st.last_rebuild = now
    build = _start_rebuild(st, context, background=mode == "background", why="pose correction")
    if build is None:
        return
    if build.background:
        st.worker = build
    else:
        _adopt(st, context, build, "mid-run")


def _cancel_worker(st: _FusionState) -> None:
    if st.worker is not None:
        st.worker.cancel()
        st.worker = None


def _finish_worker(st: _FusionState, context) -> None:
    """Wait for a background rebuild still running and swap it in (it is no longer than a new one)."""
    w = st.worker
    if w is not None:
        w.wait()
        st.worker = None
        _adopt(st, context, w, "mid-run")


def bring_up_to_date(st: _FusionState, context, when: str) -> None:
    """Rebuild now (on this thread) if a correction left the map stale: before export / save now."""
    if not st.opts.enabled:
        return
    _finish_worker(st, context)
    _check_stale(st, context)
    if not st.stale:
        return
    build = _start_rebuild(st, context, background=False, why=when)
    if build is not None:
        _adopt(st, context, build, when)


def on_poses_updated(update, context) -> None:
    st = context.state.get("_fusion_state")
    if st is None or not st.opts.enabled or not st.opts.follow_corrections:
        return
    _check_stale(st, context)
    _maybe_rebuild_live(st, context)


def finish(context, result=None) -> None:
    """End of run: final scale; rebuild from the buffer when the scale moved or corrections moved frames."""
    st = context.state.get("_fusion_state")
    if st is None:
        return
    opts = st.opts
    _finish_worker(st, context)
    if st.skipped_lost:
        log.info("fusion: %d frames not fused because their tracking was lost", st.skipped_lost)
    if result is not None and opts.enabled:
        result.info["fusion_skipped_lost"] = st.skipped_lost
    s = map_scale(st)
    reasons = []
    if st.scale_source == "estimated":
        if s is None:
            if st.pending or len(st.buffer):
                log.warning("fusion: no metric scale could be estimated (%d frames rejected: too few confident pixels "
                            "with both sensor and predicted depth); %d frames were not fused",
                            st.estimator.frames_rejected, len(st.pending))
        else:
            info = st.estimator.info()
            log.info("metric scale %.5g (from %d frames, relative spread %s)", s, info["frames_used"],
                     f"{info['relative_spread']:.3g}" if info["relative_spread"] is not None else "n/a")
            if result is not None:
                result.info["metric_scale"] = s
                result.info["metric_scale_frames"] = info["frames_used"]
            dev = max((abs(u / s - 1.0) for u in st.used_scales), default=0.0)
            if opts.reintegrate and dev > opts.reintegrate_tol:
                reasons.append(f"the scale moved by up to {100 * dev:.1f}% during the run")
    if opts.enabled and opts.follow_corrections:
        _check_stale(st, context)
        if st.stale:
            reasons.append("pose corrections")
    if opts.enabled and s is not None and reasons and len(st.buffer):
        build = _start_rebuild(st, context, background=False, why="end of run: " + ", ".join(reasons))
        if build is not None:
            _adopt(st, context, build, "end of run")
    elif opts.enabled and s is not None and st.pending:
        for e in st.pending:
            T = _transform(context, e.index)
            if T is not None:
                _integrate_entry(st, e.depth, e.rgb, e.K, T, e.sensor, s, e.index)
    st.pending.clear()
    if result is not None and opts.enabled:
        result.info["fusion_rebuilds"] = list(st.rebuilds)
        result.info["fusion_buffer"] = {"frames": len(st.buffer), "bytes": st.buffer.nbytes,
                                        "max_frames": opts.buffer_max_frames, "thinned": st.buffer.thinned}
    st.buffer.clear()
    st.used.clear()


def extract(st: _FusionState):
    """(legacy mesh or None, (xyz, rgb01) or None) from the grid."""
    if st.grid is None:
        return None, None
    with st.lock:
        return _extract(st)


def _extract(st: _FusionState):
    wt = st.opts.weight_threshold
    tmesh = st.grid.extract_triangle_mesh(weight_threshold=wt)
    mesh = tmesh.to_legacy() if tmesh.vertex.positions.shape[0] > 0 else None
    tpcd = st.grid.extract_point_cloud(weight_threshold=wt)
    pts = None
    if tpcd.point.positions.shape[0] > 0:
        xyz = tpcd.point.positions.cpu().numpy()
        rgb = tpcd.point.colors.cpu().numpy() if "colors" in tpcd.point else None
        pts = (xyz, rgb)
    elif mesh is not None:  # surfaces lying exactly on voxel boundaries: use the mesh vertices
        pts = (np.asarray(mesh.vertices), np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None)
    return mesh, pts


def live_mesh(context):
    """The current TSDF mesh for live display (viewer, recorder), or None while the map is empty.

    Returns ``(vertices [N, 3] float32, faces [M, 3] int32, colours [N, 3] uint8 or None)`` with
    the vertices in the frontend's units (the map's metric scale, if any, divided out), so that
    they line up with the estimated poses. Offered as ``context.services.mesh`` while fusion
    is on; cost: one marching-cubes pass.
    """
    st = context.state.get("_fusion_state")
    if st is None:
        return None
    st.live_readers = True  # live_rebuild: auto rebuilds mid-run from now on
    if st.grid is None:
        return None
    with st.lock:
        grid = st.grid
        if grid is None:
            return None
        tmesh = grid.extract_triangle_mesh(weight_threshold=st.opts.weight_threshold)
    if tmesh.vertex.positions.shape[0] == 0 or tmesh.triangle.indices.shape[0] == 0:
        return None
    verts = tmesh.vertex.positions.cpu().numpy().astype(np.float32)
    faces = tmesh.triangle.indices.cpu().numpy().astype(np.int32)
    cols = None
    if "colors" in tmesh.vertex:
        cols = (np.clip(tmesh.vertex.colors.cpu().numpy(), 0, 1) * 255).astype(np.uint8)
    scale = map_scale(st)
    if scale and scale != 1.0:
        verts /= np.float32(scale)
    return verts, faces, cols


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: FusionOptions}


@hookimpl
def slam3r_run_start(context):
    opts: FusionOptions = context.options(SECTION)
    if opts.scale_mode == "fixed" and opts.scale_value is None:
        raise ConfigError(f"{context.config.where('fusion.scale_mode')}: scale_mode: fixed needs fusion.scale_value")
    context.state.pop("_fusion_state", None)
    st = _state(context)
    if opts.enabled:
        st.device = _o3d_device(opts.device)
        context.services.mesh = lambda: live_mesh(context)


@hookimpl(tryfirst=True)
def slam3r_process_frame(frame, estimate, context):
    process(frame, estimate, context)


@hookimpl
def slam3r_poses_updated(update, context):
    on_poses_updated(update, context)


@hookimpl
def slam3r_reset(context):
    st = context.state.get("_fusion_state")
    if st is not None:
        _cancel_worker(st)
        context.state["_fusion_state"] = _FusionState(st.opts)
        context.state["_fusion_state"].device = st.device


@hookimpl
def slam3r_propose_corrections(context, final):
    return propose_scale(context, final)


@hookimpl
def slam3r_run_end(result, context):
    finish(context, result)


@hookimpl
def slam3r_export(result, context):
    st = context.state.get("_fusion_state")
    if st is None or not st.opts.enabled or st.grid is None:
        return None
    bring_up_to_date(st, context, "save now" if context.saving_now else "export")
    mesh, pts = extract(st)
    written = {}
    exported = context.services.exported  # handed to the export hooks after this one, in memory
    if st.opts.mesh and mesh is not None:
        written["mesh"] = str(write_triangle_mesh(context.out.file("mesh.ply"), mesh))
        cols = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None
        exported.mesh = MapMesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int32),
                                None if cols is None else to_uint8(cols), written["mesh"])
    if st.opts.points and pts is not None:
        written["points"] = str(write_point_cloud(context.out.file("points.ply"), pts[0], pts[1]))
        exported.surface_points = MapPoints.from_rgb01(pts[0], pts[1], written["points"])
    if not written:
        log.warning("fusion: the map is empty (no surface with weight >= %g); nothing written", st.opts.weight_threshold)
    return written


@hookimpl
def slam3r_evaluate(result, context):
    st = context.state.get("_fusion_state")
    if st is None:
        return None
    out = {}
    if st.scale_source == "estimated" and st.estimator.scale is not None:
        info = st.estimator.info()
        out.update(metric_scale=info["scale"], metric_scale_frames=info["frames_used"],
                   metric_scale_spread=info["relative_spread"], metric_scale_method="sensor/predicted depth")
    elif st.scale_source == "fixed":
        out.update(metric_scale=float(st.opts.scale_value), metric_scale_method="fixed")
    if st.opts.enabled and st.grid is not None:
        out.update(fusion_voxel_size=st.voxel_size, fusion_frames=st.frames_integrated,
                   fusion_rebuilds=len(st.rebuilds))
        if st.memory_limited:
            out["fusion_memory_limited"] = True
    if st.opts.enabled and (st.grid is not None or st.skipped_lost):
        out["fusion_skipped_lost"] = st.skipped_lost
    return out or None
