"""What every export writer reads: the exported frames (pose, intrinsics, files) and the map's points.

Built at the end of a run from its result (:mod:`.plugin`) or from a run folder (:mod:`.offline`);
the writers (:mod:`.colmap`, :mod:`.nerfstudio`, :mod:`.glb`, :mod:`.depth`) only read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from slam3r_app.errors import Slam3rError
from slam3r_app.services import MapMesh

#: Export formats, in the order they are written.
FORMATS = ("depth", "colmap", "nerfstudio", "glb")
#: Formats that need the colour images under ``images/``.
NEEDS_IMAGES = ("colmap", "nerfstudio")

IMAGES_DIR = "images"
DEPTH_DIR = "depth"


def stamp_name(timestamp: float) -> str:
    """The file stem of a frame: its timestamp with 6 decimals (``"1305031102.175304"``), as TUM names files."""
    return f"{float(timestamp):.6f}"


def unique_names(timestamps: "np.ndarray | list[float]", indices: "list[int]") -> list[str]:
    """One file stem per frame: :func:`stamp_name`, with ``_<index>`` added where two frames share a stamp."""
    names = [stamp_name(t) for t in timestamps]
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n}_{i}" if seen[n] > 1 else n for n, i in zip(names, indices)]


@dataclass
class ExportFrame:
    """One exported frame.

    Attributes:
        index: the frame's index in the run (``Frame.index``).
        timestamp: seconds (the source's own timestamps).
        name: file stem (:func:`stamp_name`).
        pose: ``[4, 4]`` float64 camera-to-world, OpenCV camera axes, in the export's units
            (:attr:`ExportScene.units`).
        K: ``[3, 3]`` float64 intrinsics in pixels, OpenCV convention (pixel centres at integers).
        width, height: image size in pixels.
        keyframe: the run made it a keyframe.
        image: colour file relative to the export folder (``images/<name>.png``), or None.
        depth_png: 16-bit millimetre depth relative to the export folder, or None.
        depth_npz: float32 depth / confidence / intrinsics relative to the export folder, or None.
    """

    index: int
    timestamp: float
    name: str
    pose: np.ndarray
    K: np.ndarray
    width: int
    height: int
    keyframe: bool = False
    image: Optional[str] = None
    depth_png: Optional[str] = None
    depth_npz: Optional[str] = None


@dataclass
class ExportScene:
    """Everything the writers need.

    Attributes:
        frames: the exported frames, in frame order.
        points: ``[N, 3]`` float64 world points of the map (export units), or None.
        colors: ``[N, 3]`` uint8 RGB of ``points``, or None.
        points_from: where the points came from (``"points.ply"``, ``"depth"``, ...), for messages.
        mesh: the run's TSDF mesh handed over in memory by ``fusion`` during a run
            (:class:`slam3r_app.services.MapMesh`), or None (GLB with ``glb_geometry: mesh``).
        mesh_path: a finished run's ``mesh.ply`` (the offline exporter), used when ``mesh`` is None.
        metric: poses (and points) are in metres.
        depth_metric: depth files are in metres; None: as ``metric`` (sensor depth is metric even when
            the poses are not).
        units_note: the trajectory's scale note (``"scale: metric ..."``).
        info: free-form provenance (run folder, source) written into the files' metadata.
    """

    frames: list[ExportFrame]
    points: Optional[np.ndarray] = None
    colors: Optional[np.ndarray] = None
    points_from: str = ""
    mesh: Optional[MapMesh] = None
    mesh_path: Optional[Path] = None
    metric: bool = False
    depth_metric: Optional[bool] = None
    units_note: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def units(self) -> str:
        return "metres" if self.metric else "the run's arbitrary units"

    def shared_intrinsics(self, tol: float = 1e-9) -> bool:
        """True when every frame has the same size and intrinsics (one COLMAP camera, top-level nerfstudio keys)."""
        if not self.frames:
            return True
        f0 = self.frames[0]
        return all(f.width == f0.width and f.height == f0.height and np.allclose(f.K, f0.K, rtol=0, atol=tol)
                   for f in self.frames[1:])

    def poses(self) -> np.ndarray:
        """``[N, 4, 4]`` camera-to-world poses of :attr:`frames`."""
        if not self.frames:
            return np.zeros((0, 4, 4))
        return np.stack([f.pose for f in self.frames])


def subsample_points(xyz: np.ndarray, rgb: Optional[np.ndarray], max_points: int,
                     seed: int = 0) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """At most ``max_points`` of ``xyz`` ``[N,3]`` (and their colours), a seeded random subset in the original order."""
    n = len(xyz)
    if n <= max_points:
        return xyz, rgb
    keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    return xyz[keep], (None if rgb is None else rgb[keep])


class ExportError(Slam3rError):
    """An export cannot be written (missing run file, no frames matched, missing optional library...)."""


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional library, or raise an :class:`ExportError` saying how to install it.

    Args:
        module: import name (``"pycolmap"``).
        extra: the slam3r extra that installs it (``"export"``).
        what: what needs it, for the message (``"the COLMAP export"``).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"{what} needs the '{module}' package ({e}); install it with "
                          f"pip install 'slam3r[{extra}]' (scripts/setup.sh installs it)") from None
