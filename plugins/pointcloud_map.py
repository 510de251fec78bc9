"""Point-cloud map without TSDF (plugin ``pointcloud``): for monocular and dynamic scenes.

Per fused frame (keyframes by default) the frontend's confident geometry is added
to the map: its world points (``estimate.points``) or, without them, its depth
unprojected at the predicted pose. Pixels below the ``conf_quantile`` quantile of
the frame's confidence and beyond ``depth_max_factor`` x the frame's median depth
are dropped.

Following corrections. The points are kept **per keyframe, in that keyframe's camera
frame** (:class:`~slam3r_plugins.maps.anchored.AnchoredPoints`): a frame's points join the
chunk of its reference keyframe (``context.trajectory.reference_keyframe(i)``), averaged
per voxel (size ``voxel_size``, or ``voxel_fraction`` x the first frame's median depth).
The map is placed in the world only when it is asked for -- at export and through
``context.services.points()`` -- with every keyframe's *current* transform
(``context.trajectory.transform(k)``, a Sim(3) after a monocular correction), then merged
into one voxel map at the same voxel size. A pose correction therefore costs nothing
here; ``pointcloud.ply`` always follows the corrected poses. All keyframes together never
keep more than ``max_points`` voxels (19 bytes each): when they would, the voxel grows
by 25 % and every keyframe's chunk is re-binned -- memory stays bounded whatever the
length of the run.

The map lives in the prediction's units; at export it is multiplied by the world's
metric scale (``context.trajectory.world_scale``) when one is known (scaling the whole
world about the origin is exact for a single-scale reconstruction).

Frames whose tracking is lost (``estimate.lost``, the core's one rule:
:func:`slam3r_app.types.settle_status`) add nothing (:func:`frame_points` gives
no points for them, so the live viewer leaves them out too); the frames
``frames`` selected but left out are counted as ``pointcloud_skipped_lost`` in
``metrics.json``.

File: ``pointcloud.ply`` (coloured points), written atomically.
"""
from __future__ import annotations

import logging
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.hookspecs import hookimpl
from slam3r_app.services import MapPoints
from slam3r_app.sim3 import sim3_inverse

from .maps.anchored import BYTES_PER_POINT, AnchoredPoints, transform_chunk
from .maps.common import write_point_cloud
from .maps.points import anchor_of, frame_points

log = logging.getLogger("slam3r.pointcloud")

SECTION = "pointcloud"


class PointCloudOptions(BaseModel):
    """``pointcloud:`` confidence-filtered point-cloud map (no TSDF) -> pointcloud.ply."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="build the point-cloud map")
    frames: Literal["keyframes", "all"] = Field("keyframes", description="add keyframes only or every frame")
    points: Literal["auto", "world", "depth"] = Field(
        "auto", description="world: the frontend's world points; depth: unproject its depth; auto: world if given")
    conf_quantile: float = Field(0.5, ge=0, lt=1, description="drop pixels below this quantile of the frame's confidence")
    depth_max_factor: Optional[float] = Field(
        5.0, gt=1, description="drop pixels deeper than this multiple of the frame's median depth (None: keep)")
    pixel_stride: int = Field(2, ge=1, le=16, description="use every N-th pixel in both directions")
    voxel_size: Optional[float] = Field(None, gt=0, description="voxel edge in prediction units; None: voxel_fraction")
    voxel_fraction: float = Field(0.005, gt=0, le=0.5, description="auto voxel size as a fraction of the median depth")
    max_points: int = Field(1_000_000, ge=1000, description="point budget; the voxel size grows to respect it")
    min_count: int = Field(1, ge=1, description="export voxels seen at least this many times (>1 drops movers)")
    metric_scale: bool = Field(True, description="scale the exported map by the world's metric scale if known")


class _PcState:
    """The map of one run: chunks per anchor keyframe (camera frame) and each anchor's pose when first seen."""

    def __init__(self) -> None:
        self.acc: Optional[AnchoredPoints] = None
        self.frames = 0
        self.skipped_lost = 0
        self.exported_points: Optional[int] = None


def _state(context) -> _PcState:
    st = context.state.get("_pointcloud_state")
    if st is None:
        st = context.state["_pointcloud_state"] = _PcState()
    return st


def map_points(context, metric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The point-cloud map at the current (corrected) poses: ``(xyz [M, 3] float64, rgb [M, 3] float64 0..1)``.

    In the prediction's units, times the world's metric scale (``context.trajectory.world_scale``) when
    ``metric`` and known.
    Cost: one transform and one voxel merge of the points kept (about 0.1 s per million points).
    """
    opts: PointCloudOptions = context.options(SECTION)
    st = context.state.get("_pointcloud_state")
    if st is None or st.acc is None or len(st.acc) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    traj = context.trajectory
    xyz, rgb = st.acc.merged(lambda k: traj.transform(k) if k in traj else None, min_count=opts.min_count)
    s = _metric_factor(context) if (metric and opts.metric_scale) else 1.0
    if s != 1.0:
        xyz = xyz * s
    return xyz, rgb / 255.0


def _metric_factor(context) -> float:
    """Metres per world unit where the world's scale is known (the store's), else 1."""
    scale = context.trajectory.world_scale
    return float(scale.value) if scale.metric else 1.0


@hookimpl
def slam3r_config_sections():
    return {SECTION: PointCloudOptions}


@hookimpl
def slam3r_run_start(context):
    context.state["_pointcloud_state"] = _PcState()
    if context.options(SECTION).enabled:
        context.services.points = lambda: map_points(context)


@hookimpl
def slam3r_process_frame(frame, estimate, context):
    opts: PointCloudOptions = context.options(SECTION)
    if not opts.enabled or (opts.frames == "keyframes" and not estimate.is_keyframe):
        return
    st = _state(context)
    lost = estimate.status_reason if estimate.lost else ""
    if lost:
        st.skipped_lost += 1
        log.debug("pointcloud: frame %d not added: %s", frame.index, lost)
        return
    pts, col, med = frame_points(frame, estimate, opts)
    if len(pts) == 0:
        return
    if st.acc is None:
        vs = opts.voxel_size or (opts.voxel_fraction * med if med else None)
        if not vs:
            return
        st.acc = AnchoredPoints(vs, opts.max_points)
        log.debug("pointcloud: voxel %.4g (prediction units), at most %d points (%.1f MB)", vs, opts.max_points,
                  opts.max_points * BYTES_PER_POINT / 2**20)
    anchor = anchor_of(context.trajectory, frame.index)
    T_anchor = context.trajectory.transform(anchor)
    # the frame's world points (at its pose now) into the anchor keyframe's camera frame
    voxel_before = st.acc.voxel
    st.acc.add(anchor, transform_chunk(sim3_inverse(T_anchor), pts), col)
    if st.acc.voxel != voxel_before:
        log.info("pointcloud: %d points kept over %d keyframes: voxel grown to %.4g (max_points %d)", len(st.acc),
                 len(st.acc.chunks), st.acc.voxel, opts.max_points)
    st.frames += 1


@hookimpl
def slam3r_reset(context):
    context.state["_pointcloud_state"] = _PcState()


@hookimpl
def slam3r_export(result, context):
    opts: PointCloudOptions = context.options(SECTION)
    st = context.state.get("_pointcloud_state")
    if not opts.enabled or st is None or st.acc is None or len(st.acc) == 0:
        return None
    xyz, rgb01 = map_points(context)
    st.exported_points = len(xyz)
    path = write_point_cloud(context.out.file("pointcloud.ply"), xyz, rgb01)
    context.services.exported.pointcloud = MapPoints.from_rgb01(xyz, rgb01, str(path))
    return {"pointcloud": str(path)}


@hookimpl
def slam3r_evaluate(result, context):
    st = context.state.get("_pointcloud_state")
    if st is None or not context.options(SECTION).enabled or (st.acc is None and not st.skipped_lost):
        return None
    out = {"pointcloud_skipped_lost": st.skipped_lost}
    if st.acc is not None:
        s = _metric_factor(context) if context.options(SECTION).metric_scale else 1.0
        n = st.exported_points if st.exported_points is not None else len(st.acc)
        out.update(pointcloud_points=n, pointcloud_points_kept=len(st.acc), pointcloud_keyframes=len(st.acc.chunks),
                   pointcloud_voxel_size=st.acc.voxel * s)
    return out
