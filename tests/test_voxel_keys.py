"""The voxel keys shared by the point-cloud map (VoxelAccumulator) and the viewer (PointMap).

Truth: voxel indices computed point by point with math.floor, in plain Python.
"""
from __future__ import annotations

import math

import numpy as np

from slam3r_plugins.maps.common import VoxelAccumulator, voxel_keys
from slam3r_plugins.viewer.plugin import PointMap


def _cells(xyz: np.ndarray, voxel: float) -> list[tuple[int, int, int]]:
    return [tuple(math.floor(float(c) / voxel) for c in p) for p in xyz]


def test_same_key_exactly_when_same_voxel():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-3.0, 3.0, (400, 3))
    xyz[:50] = np.round(xyz[:50], 1)  # points on voxel faces (negative ones too)
    voxel = 0.1
    keys = voxel_keys(xyz, voxel)
    cells = _cells(xyz, voxel)
    for i in range(0, 400, 7):
        for j in range(400):
            assert (keys[i] == keys[j]) == (cells[i] == cells[j])


def test_accumulator_and_viewer_map_occupy_the_same_voxels():
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-1.0, 1.0, (3000, 3))
    voxel = 0.25
    distinct = len(set(_cells(xyz, voxel)))
    acc = VoxelAccumulator(voxel, max_points=10 ** 6)
    acc.add(xyz)  # first merge bins the raw points themselves
    assert len(acc) == distinct
    pm = PointMap(voxel, max_points=10 ** 6)
    # one frame at the world origin: its camera-frame points are world points
    pts, _, rebuilt = pm.add(0, xyz, np.zeros_like(xyz, dtype=np.uint8), np.eye(4), lambda i: np.eye(4))
    assert not rebuilt and len(pts) == distinct
    # the point sent for a voxel lies in it
    assert sorted(set(_cells(pts, voxel))) == sorted(set(_cells(xyz, voxel)))
