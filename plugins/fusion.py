"""TSDF map fusion (plugin ``fusion``): Open3D tensor ``VoxelBlockGrid`` on CPU or CUDA.

What is fused (``depth: auto``):

* RGB-D sources (``frame.depth`` present): the sensor depth, at the predicted
  poses. A learned frontend predicts poses up to an unknown scale
  (``estimate.depth_is_metric`` False); the predicted trajectory is brought to
  metric scale with a robust scale from sensor vs predicted depth over confident
  pixels (:mod:`slam3r_plugins.scale`: per frame a median of ratios with MAD
  outlier rejection; over time a running median). The scale is published as
  ``context.state["metric_scale"]`` (the trajectory export uses it), logged, put
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
fused frame is also kept in a bounded CPU buffer (depth as float16 and colour,
subsampled by ``buffer_stride`` pixels, at most ``buffer_max_frames`` frames:
when full, every second one is dropped and only every second new frame is kept).
At the end of the run, if any frame was integrated with a scale more than
``reintegrate_tol`` away from the final scale, the grid is rebuilt from the
buffer with the final scale. Frames that arrive before any scale is known are
integrated as soon as it is. With a metric frontend, a fixed ``scale_value`` or
monocular input no buffer is kept.

Lost frames. A frame whose tracking is lost (``estimate.extras["tracking"] ==
"lost"``, as the ``rgbd`` frontend marks a failed registration, or a confidence
map that is zero everywhere) is never integrated, buffered or used for the scale:
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
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.errors import ConfigError
from slam3r_app.hookspecs import hookimpl
from slam3r_app.trajectory import invert_pose

from ._common import (confidence_mask, median_depth, resize_nearest, scale_intrinsics, scale_pose,
                      tracking_lost, valid_depth_mask, write_point_cloud, write_triangle_mesh)
from .scale import ScaleEstimator

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
        None, gt=0, description="voxel edge in map units (metres when metric); None: voxel_fraction x median depth")
    voxel_fraction: float = Field(0.01, gt=0, le=0.5, description="auto voxel size as a fraction of the median depth")
    trunc_voxels: float = Field(4.0, ge=1, le=32, description="TSDF truncation distance in voxels")
    block_resolution: int = Field(8, ge=2, le=32, description="voxels per block edge")
    block_count: int = Field(20000, ge=100, description="initial hash-map capacity in blocks")
    depth_max: Optional[float] = Field(
        None, gt=0, description="ignore depth beyond this (map units); None: depth_max_factor x median depth")
    depth_max_factor: float = Field(3.0, gt=1, description="auto depth_max as a multiple of the first frame's median depth")
    conf_quantile: float = Field(
        0.3, ge=0, lt=1, description="drop predicted pixels below this quantile of the frame's confidence")
    integrate_stride: int = Field(1, ge=1, le=8, description="pixel step of the depth used for integration")
    weight_threshold: float = Field(1.0, ge=0, description="min. integration weight of exported surface voxels")
    scale_mode: Literal["auto", "off", "fixed"] = Field(
        "auto", description="metric scale: auto (estimate from sensor depth when the frontend is not metric), "
                            "off (keep the prediction's units), fixed (use scale_value)")
    scale_value: Optional[float] = Field(None, gt=0, description="the scale for scale_mode: fixed")
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
    mesh: bool = Field(True, description="write mesh.ply")
    points: bool = Field(True, description="write points.ply")


@dataclass
class _Buffered:
    index: int
    depth: np.ndarray  # float16, map units before scaling (sensor: metres; predicted: prediction units)
    rgb: np.ndarray  # uint8
    pose: np.ndarray  # predicted c2w (unscaled)
    K: np.ndarray  # intrinsics of the buffered (subsampled) depth
    sensor: bool  # sensor depth (metric) or predicted depth (to be scaled)


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
        self.buffer: list[_Buffered] = []
        self.buffer_keep_every = 1
        self.buffer_candidates = 0
        self.pending: list[_Buffered] = []  # frames waiting for a first scale
        self.used_scales: list[float] = []
        self.frames_integrated = 0
        self.frames_seen = 0
        self.skipped_lost = 0  # frames `frames` selected but left out: tracking lost
        self.warned: set[str] = set()
        self.lock = threading.RLock()  # the grid is read by the live viewer from another thread

    def warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(msg, *args)


def _state(context) -> _FusionState:
    st = context.state.get("_fusion_state")
    if st is None:
        st = context.state["_fusion_state"] = _FusionState(context.options(SECTION))
    return st


# ----------------------------------------------------------------------------- Open3D
def _o3d_device(name: str):
    import open3d.core as o3c

    cuda_ok = False
    try:
        cuda_ok = bool(o3c.cuda.is_available())
    except Exception:  # pragma: no cover - builds without CUDA module
        cuda_ok = False
    if name == "cuda" and not cuda_ok:
        raise ConfigError("fusion.device: cuda was requested but this Open3D build has no CUDA device "
                          "(use device: auto or cpu)")
    if name == "cuda" or (name == "auto" and cuda_ok):
        return o3c.Device("CUDA:0")
    return o3c.Device("CPU:0")


def make_grid(voxel_size: float, opts: FusionOptions, device):
    import open3d as o3d
    import open3d.core as o3c

    return o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=float(voxel_size),
        block_resolution=int(opts.block_resolution),
        block_count=int(opts.block_count),
        device=device,
    )


def integrate(grid, depth_m: np.ndarray, rgb: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth_max: float,
              trunc_voxels: float, device) -> None:
    """Integrate one metric (map-unit) depth map with its colour at camera-to-world ``c2w``."""
    import open3d as o3d
    import open3d.core as o3c

    d = np.ascontiguousarray(np.where(np.isfinite(depth_m), depth_m, 0), dtype=np.float32)
    c = np.ascontiguousarray(rgb, dtype=np.float32) / 255.0
    dimg = o3d.t.geometry.Image(o3c.Tensor(d)).to(device)
    cimg = o3d.t.geometry.Image(o3c.Tensor(c)).to(device)
    intr = o3c.Tensor(np.asarray(K, dtype=np.float64))
    extr = o3c.Tensor(invert_pose(np.asarray(c2w, dtype=np.float64)))
    coords = grid.compute_unique_block_coordinates(dimg, intr, extr, 1.0, float(depth_max), float(trunc_voxels))
    grid.integrate(coords, dimg, cimg, intr, intr, extr, 1.0, float(depth_max), float(trunc_voxels))


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


def _publish_scale(st: _FusionState, context) -> None:
    if st.scale_source == "estimated" and st.estimator.scale is not None:
        context.state["metric_scale"] = st.estimator.scale
        context.state["metric_scale_info"] = st.estimator.info()
    elif st.scale_source == "fixed":
        context.state["metric_scale"] = float(st.opts.scale_value)
        context.state["metric_scale_info"] = {"scale": float(st.opts.scale_value), "method": "fixed (fusion.scale_value)"}


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


def _integrate_entry(st: _FusionState, depth: np.ndarray, rgb: np.ndarray, K: np.ndarray, pose: np.ndarray,
                     sensor: bool, scale: float) -> None:
    d = np.asarray(depth, dtype=np.float32) * (1.0 if sensor else scale)
    if not _ensure_grid(st, d):
        return
    with st.lock:
        integrate(st.grid, d, rgb, K, scale_pose(pose, scale), st.depth_max, st.opts.trunc_voxels, st.device)
    st.used_scales.append(scale)
    st.frames_integrated += 1


def _buffer(st: _FusionState, entry: _Buffered) -> None:
    st.buffer_candidates += 1
    if (st.buffer_candidates - 1) % st.buffer_keep_every:
        return
    st.buffer.append(entry)
    if len(st.buffer) > st.opts.buffer_max_frames:
        st.buffer = st.buffer[::2]
        st.buffer_keep_every *= 2
        log.debug("fusion buffer full: keeping every %d-th frame from now on", st.buffer_keep_every)


def process(frame, est, context) -> None:
    st = _state(context)
    opts = st.opts
    lost = tracking_lost(est)
    scale = None if lost else _scale_for_frame(st, frame, est, context)  # a lost frame has no vote on the scale
    st.frames_seen += 1
    _publish_scale(st, context)
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
    pose = np.asarray(est.pose, dtype=np.float64)
    if st.scale_source == "estimated":  # the scale may still move: keep a copy for the final rebuild
        b = opts.buffer_stride
        entry = _Buffered(frame.index, resize_nearest(depth, b).astype(np.float16), resize_nearest(rgb, b).copy(),
                          pose.copy(), scale_intrinsics(K, b), sensor)
        if opts.reintegrate:
            _buffer(st, entry)
        if scale is None:  # no scale yet: integrate when there is one
            st.pending.append(entry)
            if len(st.pending) > opts.buffer_max_frames:
                st.pending = st.pending[::2]
            return
        if st.pending:
            log.info("fusion: integrating %d frames that waited for the metric scale", len(st.pending))
            for e in st.pending:
                _integrate_entry(st, e.depth, e.rgb, e.K, e.pose, e.sensor, scale)
            st.pending.clear()
    s = 1.0 if scale is None else scale
    st_d = resize_nearest(depth, opts.integrate_stride)
    _integrate_entry(st, st_d, resize_nearest(rgb, opts.integrate_stride), scale_intrinsics(K, opts.integrate_stride),
                     pose, sensor, s)


def finish(context, result=None) -> None:
    """End of run: final scale, rebuild from the buffer when the scale moved."""
    st = context.state.get("_fusion_state")
    if st is None:
        return
    opts = st.opts
    _publish_scale(st, context)
    if st.skipped_lost:
        log.info("fusion: %d frames not fused because their tracking was lost", st.skipped_lost)
    if result is not None and opts.enabled:
        result.info["fusion_skipped_lost"] = st.skipped_lost
    s = st.estimator.scale if st.scale_source == "estimated" else None
    if st.scale_source == "estimated":
        if s is None:
            if st.pending or st.buffer:
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
            if opts.enabled and opts.reintegrate and st.buffer and dev > opts.reintegrate_tol:
                log.info("fusion: the scale moved by up to %.1f%% during the run; rebuilding the map from %d buffered "
                         "frames at scale %.5g", 100 * dev, len(st.buffer), s)
                st.grid = None
                st.used_scales.clear()
                st.frames_integrated = 0
                for e in st.buffer:
                    _integrate_entry(st, e.depth, e.rgb, e.K, e.pose, e.sensor, s)
            elif opts.enabled and st.pending:
                for e in st.pending:
                    _integrate_entry(st, e.depth, e.rgb, e.K, e.pose, e.sensor, s)
            st.pending.clear()
            st.buffer.clear()


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
    they line up with the estimated poses. Published as ``context.state["fusion_mesh"]``
    (a callable without arguments) while fusion is on; cost: one marching-cubes pass.
    """
    st = context.state.get("_fusion_state")
    if st is None or st.grid is None:
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
    scale = None
    if st.scale_source == "estimated":
        scale = st.estimator.scale
    elif st.scale_source == "fixed":
        scale = st.opts.scale_value
    if scale:
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
        context.state["fusion_mesh"] = lambda: live_mesh(context)


@hookimpl(tryfirst=True)
def slam3r_process_frame(frame, estimate, context):
    process(frame, estimate, context)


@hookimpl
def slam3r_reset(context):
    st = context.state.get("_fusion_state")
    if st is not None:
        context.state["_fusion_state"] = _FusionState(st.opts)
        context.state["_fusion_state"].device = st.device
    context.state.pop("metric_scale", None)
    context.state.pop("metric_scale_info", None)


@hookimpl
def slam3r_run_end(result, context):
    finish(context, result)


@hookimpl
def slam3r_export(result, context):
    st = context.state.get("_fusion_state")
    if st is None or not st.opts.enabled or st.grid is None:
        return None
    mesh, pts = extract(st)
    written = {}
    if st.opts.mesh and mesh is not None:
        written["mesh"] = str(write_triangle_mesh(context.out.file("mesh.ply"), mesh))
    if st.opts.points and pts is not None:
        written["points"] = str(write_point_cloud(context.out.file("points.ply"), pts[0], pts[1]))
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
        out.update(fusion_voxel_size=st.voxel_size, fusion_frames=st.frames_integrated)
    if st.opts.enabled and (st.grid is not None or st.skipped_lost):
        out["fusion_skipped_lost"] = st.skipped_lost
    return out or None
