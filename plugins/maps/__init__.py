"""Map building blocks: public, documented, tested; the built-in maps use them and so may a third-party plugin.

Conventions: poses are camera-to-world ``[4, 4]`` float64 (OpenCV axes: x right, y down, z forward);
world transforms from ``context.trajectory.transform(i)`` may carry a Sim(3) scale; points are
``[N, 3]`` float64, colours ``[N, 3]`` in 0..255; depth ``[H, W]`` float32 along the optical axis, 0 =
unknown; intrinsics ``[3, 3]`` float64 in pixels of the image they belong to.

How a map follows pose corrections (hook ``slam3r_poses_updated``): keep geometry **in the camera
frame of the keyframe that saw it** (:class:`AnchoredPoints`, keyed by the keyframe's index; a frame's
anchor is :func:`anchor_of`) and pose it with the keyframe's *current* transform when you need the
world (``anchored.merged(lambda k: context.trajectory.transform(k))``): a correction then moves it
without any work. Dense maps that cannot take a frame back out keep the frames they fused in a
:class:`FrameBuffer` and rebuild from it at the current transforms. Metres: multiply by
``context.trajectory.world_scale.value`` where ``world_scale.metric`` (or read
``context.trajectory.metric_poses()``).

Modules:

* :mod:`.anchored`: :class:`AnchoredPoints` (bounded, per-keyframe voxel chunks), :func:`transform_chunk`;
* :mod:`.points`: :func:`frame_points` / :func:`camera_points` (an estimate's confident points),
  :func:`anchor_of`;
* :mod:`.frame_buffer`: :class:`FrameBuffer`, :class:`BufferedFrame`;
* :mod:`.images`: :func:`colorize`, :func:`thumbnail` (display);
* :mod:`.common`: :func:`unproject`, depth / confidence masks, :func:`voxel_keys`,
  :class:`VoxelAccumulator`, ``.ply`` writers.
"""
from .anchored import BYTES_PER_POINT, AnchoredPoints, transform_chunk
from .common import (
                     VoxelAccumulator,
                     confidence_mask,
                     median_depth,
                     unproject,
                     valid_depth_mask,
                     voxel_keys,
                     write_point_cloud,
                     write_triangle_mesh,
)
from .frame_buffer import BufferedFrame, FrameBuffer
from .points import PointSelection, anchor_of, camera_points, frame_points

__all__ = [
    "BYTES_PER_POINT", "AnchoredPoints", "BufferedFrame", "FrameBuffer", "PointSelection", "VoxelAccumulator",
    "anchor_of", "camera_points", "confidence_mask", "frame_points", "median_depth", "transform_chunk",
    "unproject", "valid_depth_mask", "voxel_keys", "write_point_cloud", "write_triangle_mesh",
]
