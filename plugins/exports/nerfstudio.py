"""The ``nerfstudio`` export: ``transforms.json`` in nerfstudio's documented data format.

``ns-train nerfacto --data DIR`` (or ``splatfacto``, ``depth-nerfacto``) reads it as it is:

* ``camera_model: "OPENCV"`` with zero distortion; ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` at
  the top level when every frame shares them, else in each frame. nerfstudio, like COLMAP, puts the
  centre of the top-left pixel at (0.5, 0.5): ``cx``, ``cy`` are slam3r's (OpenCV's) + 0.5.
* ``frames[].transform_matrix``: camera-to-world in nerfstudio's OpenGL camera axes (x right,
  y up, z backwards), i.e. slam3r's OpenCV camera-to-world with its y and z camera axes flipped:
  ``c2w @ diag(1, -1, -1, 1)``. The world frame is the run's (the first camera's); no
  ``applied_transform`` is used (nerfstudio orients and centres the poses itself by default).
* ``frames[].file_path``: ``images/<timestamp>.png``; ``frames[].depth_file_path``:
  ``depth/<timestamp>.png`` (16-bit millimetres, nerfstudio's default ``depth_unit_scale_factor``
  1e-3) when the frame has depth.
* ``ply_file_path: "sparse_pc.ply"``: the map's coloured points in the same world frame (splatfacto
  starts from them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slam3r_app.io import write_json

from .scene import ExportError, ExportScene

#: OpenCV camera axes -> OpenGL camera axes (flip y and z), applied on the right of camera-to-world.
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
PIXEL_OFFSET = 0.5
PLY_NAME = "sparse_pc.ply"


def nerfstudio_matrix(c2w: np.ndarray) -> np.ndarray:
    """nerfstudio's ``transform_matrix`` (OpenGL camera axes) from a slam3r camera-to-world (OpenCV axes)."""
    return np.asarray(c2w, dtype=np.float64) @ OPENCV_TO_OPENGL


def _intrinsics(f) -> dict[str, Any]:
    return {"fl_x": float(f.K[0, 0]), "fl_y": float(f.K[1, 1]), "cx": float(f.K[0, 2]) + PIXEL_OFFSET,
            "cy": float(f.K[1, 2]) + PIXEL_OFFSET, "w": int(f.width), "h": int(f.height)}


def transforms(scene: ExportScene, ply_file: str | None = None) -> dict[str, Any]:
    """The ``transforms.json`` content for the scene's frames that have an image."""
    frames = [f for f in scene.frames if f.image]
    if not frames:
        raise ExportError("nerfstudio export: no frame has a colour image to reference")
    shared = ExportScene(frames=frames).shared_intrinsics()
    data: dict[str, Any] = {"camera_model": "OPENCV"}
    if shared:
        data.update(_intrinsics(frames[0]))
    data.update({"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    out_frames = []
    for f in frames:
        fr: dict[str, Any] = {"file_path": f.image, "transform_matrix": nerfstudio_matrix(f.pose).tolist()}
        if not shared:
            fr.update(_intrinsics(f))
        if f.depth_png:
            fr["depth_file_path"] = f.depth_png
        fr["timestamp"] = f.timestamp
        out_frames.append(fr)
    data["frames"] = out_frames
    if ply_file:
        data["ply_file_path"] = ply_file
    data["slam3r"] = {"units": scene.units, "scale": scene.units_note,
                      "convention": "transform_matrix = slam3r camera-to-world @ diag(1,-1,-1,1); cx, cy = OpenCV + 0.5",
                      **scene.info}
    return data


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray | None) -> Path:
    """The points nerfstudio's ``ply_file_path`` points to (Open3D PLY, colours from uint8)."""
    from slam3r_plugins.maps.common import write_point_cloud

    return write_point_cloud(path, xyz, None if rgb is None else np.asarray(rgb, np.float64) / 255.0)


def write_nerfstudio(scene: ExportScene, root: Path) -> dict[str, str]:
    """Write ``root/transforms.json`` (and ``root/sparse_pc.ply`` when the scene has points)."""
    written: dict[str, str] = {}
    ply = None
    if scene.points is not None and len(scene.points):
        written["nerfstudio_points"] = str(write_ply(root / PLY_NAME, scene.points, scene.colors))
        ply = PLY_NAME
    written["nerfstudio"] = str(write_json(root / "transforms.json", transforms(scene, ply)))
    return written
