"""What plugins share during a run: typed services on ``context.services`` (not keys in ``context.state``).

One :class:`SharedServices` per run. Each field has one writer (named below); any plugin may read
it. A plugin's private state stays its own object (``context.state["_fusion_state"]`` and the
like are private to the plugin that made them: no other plugin reads them).

Poses, the world's scale and keyframe payloads are not here: they are the core's stores
(``context.trajectory``, ``context.keyframes``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

#: ``() -> (vertices [N, 3] float32, faces [M, 3] int32, colours [N, 3] uint8 or None)`` or None
MeshFn = Callable[[], Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]]
#: ``() -> (xyz [M, 3] float64, rgb [M, 3] float64 in 0..1)``
PointsFn = Callable[[], tuple[np.ndarray, np.ndarray]]


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
    """Colours in 0..1 ``[N, 3]`` -> uint8 ``[N, 3]`` (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(rgb01, np.float64) * 255), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class MapMesh:
    """A triangle mesh handed from the plugin that wrote it to the export hooks after it, in memory.

    Attributes:
        vertices: ``[N, 3]`` float64, world frame, in the units of ``trajectory.txt`` (metres where
            the world's scale is known).
        faces: ``[M, 3]`` int32 vertex indices.
        colors: ``[N, 3]`` uint8 per vertex, or None.
        path: the file the writer wrote (``<run>/mesh.ply``), for reference only.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: Optional[np.ndarray] = None
    path: str = ""


@dataclass(frozen=True)
class MapPoints:
    """A point map handed from its writer to the export hooks after it, in memory.

    Attributes:
        xyz: ``[N, 3]`` float64, world frame, in the units of ``trajectory.txt``.
        rgb: ``[N, 3]`` uint8, or None.
        path: the file the writer wrote (``points.ply`` / ``pointcloud.ply``), for reference only.
    """

    xyz: np.ndarray
    rgb: Optional[np.ndarray] = None
    path: str = ""

    @classmethod
    def from_rgb01(cls, xyz: np.ndarray, rgb01: Optional[np.ndarray], path: str = "") -> "MapPoints":
        """From ``xyz [N, 3]`` and colours ``[N, 3]`` in 0..1 (Open3D's convention), or None."""
        rgb = None if rgb01 is None or len(rgb01) != len(xyz) else to_uint8(rgb01)
        return cls(np.asarray(xyz, np.float64), rgb, str(path))


@dataclass
class ExportedMaps:
    """The maps written by ``slam3r_export`` hooks, for the export hooks that run after them.

    A map writer sets its field in its own ``slam3r_export`` (one writer each); a consumer such as
    the ``exports`` plugin runs ``trylast`` and reads them here instead of reading the writers'
    files back from the run folder. Reset at the start of every export pass ("save now" included).

    Attributes:
        mesh: the TSDF mesh (``fusion``; what ``mesh.ply`` holds).
        surface_points: the TSDF's surface points (``fusion``; ``points.ply``).
        pointcloud: the keyframe point map (``pointcloud``; ``pointcloud.ply``).
    """

    mesh: Optional[MapMesh] = None
    surface_points: Optional[MapPoints] = None
    pointcloud: Optional[MapPoints] = None


@dataclass
class SharedServices:
    """The run's shared services (``context.services``).

    Attributes:
        mesh: the current TSDF mesh in the store's (frontend's) units, so that it lines up
            with ``context.trajectory`` poses; set by the ``fusion`` plugin while it is on
            (one marching-cubes pass a call). None: no mesh is offered.
        map_version: bumped by ``fusion`` each time the map is replaced whole (a rebuild at
            corrected poses): a reader that caches the mesh re-reads it when this changes.
        points: the point map at the current (corrected) poses, in metres where the world's
            scale is known; set by the ``pointcloud`` plugin while it is on.
        viewer_url: the live viewer's address; set by the ``viewer`` plugin.
        fps: frames per second of the frame loop (smoothed); set by the core each frame.
        dropped: frames a live source threw away so far; set by the core each frame.
        after_outputs: callables the frame loop runs once every output is written, in its own
            thread (the viewer kept open after the run); a signal ends them.
        exported: the maps the export hooks wrote in this export pass (:class:`ExportedMaps`);
            set by ``fusion`` and ``pointcloud``, read by ``exports``.
    """

    mesh: Optional[MeshFn] = None
    map_version: int = 0
    points: Optional[PointsFn] = None
    viewer_url: Optional[str] = None
    fps: float = 0.0
    dropped: int = 0
    after_outputs: list[Callable[[], Any]] = field(default_factory=list)
    exported: ExportedMaps = field(default_factory=ExportedMaps)
