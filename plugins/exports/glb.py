"""The ``glb`` export: the scene as upstream's demo shows it -- coloured points (or the mesh) and camera frustums.

One binary glTF (``DIR/scene.glb``, written with trimesh) that opens in a browser
(https://gltf-viewer.donmccurdy.com, three.js editor), Blender (File > Import > glTF 2.0) or
``trimesh.load``:

* node ``points``: the map's coloured points (a glTF POINTS primitive), and/or node ``mesh``: the
  run's ``mesh.ply`` (``geometry: mesh`` / ``both``);
* nodes ``camera_<timestamp>``: one frustum (lines) per exported camera, at most ``max_cameras``
  (keyframes first, evenly spread), drawn in the camera's own axes (OpenCV: x right, y down,
  z forward) with the camera's pose as the node's transform.

glTF's +Y is up, slam3r's world is the first camera's (y down): every node's transform is
``W @ pose`` with ``W = diag(1, -1, -1, 1)`` (180 degrees about x), so the scene stands upright.
``scene.metadata["slam3r"]`` (glTF ``extras``) holds ``W`` as ``world_from_slam3r``, the units and,
per camera node, its timestamp.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from slam3r_app.io import atomic_path

from .scene import ExportError, ExportFrame, ExportScene, require

#: slam3r world (first camera: y down, z forward) -> glTF world (y up).
WORLD_FROM_SLAM3R = np.diag([1.0, -1.0, -1.0, 1.0])
GEOMETRIES = ("points", "mesh", "both")


def frustum_segments(K: np.ndarray, width: int, height: int, size: float) -> np.ndarray:
    """``[10, 2, 3]`` line segments of a camera frustum in camera axes (OpenCV), image plane at depth ``size``.

    Four edges from the centre to the image corners, the image rectangle, and a small triangle
    above the top edge that marks the camera's up direction.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    def ray(u: float, v: float) -> np.ndarray:
        return np.array([(u - cx) / fx * size, (v - cy) / fy * size, size])

    x0, x1, y0, y1 = -0.5, width - 0.5, -0.5, height - 0.5
    c = [ray(x0, y0), ray(x1, y0), ray(x1, y1), ray(x0, y1)]
    o = np.zeros(3)
    tip = ray((x0 + x1) / 2, y0 - 0.25 * height)
    segs = [(o, c[i]) for i in range(4)] + [(c[i], c[(i + 1) % 4]) for i in range(4)]
    segs += [(ray(x0 + 0.3 * width, y0), tip), (tip, ray(x1 - 0.3 * width, y0))]
    return np.array(segs, dtype=np.float64)


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices evenly spread over ``range(n)``."""
    if k <= 0 or n <= 0:
        return []
    return [int(i) for i in np.unique(np.linspace(0, n - 1, k).round().astype(int))]


def pick_cameras(frames: list[ExportFrame], max_cameras: int) -> list[ExportFrame]:
    """At most ``max_cameras`` frames, in frame order: keyframes first (evenly spread when too many), the
    rest of the budget evenly spread over the other frames."""
    if len(frames) <= max_cameras:
        return list(frames)
    kf = [f for f in frames if f.keyframe]
    if len(kf) >= max_cameras:
        return [kf[i] for i in _spread(len(kf), max_cameras)]
    rest = [f for f in frames if not f.keyframe]
    chosen = {f.index for f in kf} | {rest[i].index for i in _spread(len(rest), max_cameras - len(kf))}
    return [f for f in frames if f.index in chosen]


def frustum_size(scene: ExportScene) -> float:
    """A frustum depth that reads well: 5 % of the extent of cameras and points (robust to outliers)."""
    parts = [scene.poses()[:, :3, 3]] if scene.frames else []
    if scene.points is not None and len(scene.points):
        parts.append(np.asarray(scene.points, np.float64))
    if not parts:
        return 0.1
    xyz = np.concatenate(parts)
    lo, hi = np.percentile(xyz, 5, axis=0), np.percentile(xyz, 95, axis=0)
    extent = float(np.linalg.norm(hi - lo))
    return 0.05 * extent if extent > 1e-9 else 0.1


def build_scene(scene: ExportScene, geometry: str = "points", max_cameras: int = 200, size: Optional[float] = None):
    """The ``trimesh.Scene`` written to ``scene.glb`` (see the module docstring for its nodes)."""
    trimesh = require("trimesh", "export", "the GLB export")
    if geometry not in GEOMETRIES:
        raise ExportError(f"glb geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    out = trimesh.Scene()
    W = WORLD_FROM_SLAM3R
    has_points = scene.points is not None and len(scene.points) > 0
    mesh_ok = scene.mesh is not None or (scene.mesh_path is not None and Path(scene.mesh_path).is_file())
    if geometry in ("mesh", "both") and mesh_ok:
        if scene.mesh is not None:  # handed over in memory during the run
            m = scene.mesh
            mesh = trimesh.Trimesh(vertices=m.vertices, faces=m.faces, vertex_colors=m.colors, process=False)
        else:  # a finished run's file (the offline exporter)
            mesh = trimesh.load(str(scene.mesh_path), process=False, force="mesh")
        out.add_geometry(mesh, node_name="mesh", geom_name="mesh", transform=W)
    if has_points and (geometry in ("points", "both") or not mesh_ok):
        rgb = np.zeros((len(scene.points), 3), np.uint8) if scene.colors is None else np.asarray(scene.colors, np.uint8)
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
        out.add_geometry(trimesh.PointCloud(np.asarray(scene.points, np.float64), colors=rgba),
                         node_name="points", geom_name="points", transform=W)
    size = frustum_size(scene) if size is None else float(size)
    cams = pick_cameras(scene.frames, max_cameras)
    shared = ExportScene(frames=cams).shared_intrinsics()
    meta_cams = {}
    for k, f in enumerate(cams):
        node = f"camera_{f.name}"
        geom = "camera_frustum" if shared else f"camera_frustum_{f.name}"
        T = W @ f.pose
        if not shared or k == 0:
            path = trimesh.load_path(frustum_segments(f.K, f.width, f.height, size))
            out.add_geometry(path, node_name=node, geom_name=geom, transform=T)
        else:
            out.graph.update(frame_from=out.graph.base_frame, frame_to=node, matrix=T, geometry=geom)
        meta_cams[node] = {"index": f.index, "timestamp": f.timestamp, "keyframe": f.keyframe}
    out.metadata["slam3r"] = {
        "world_from_slam3r": W.tolist(),
        "units": scene.units, "scale": scene.units_note,
        "points_from": scene.points_from, "frustum_size": size,
        "cameras": meta_cams, **scene.info,
    }
    return out


def write_glb(scene: ExportScene, root: Path, geometry: str = "points", max_cameras: int = 200,
              name: str = "scene.glb") -> dict[str, str]:
    """Write ``root/scene.glb`` atomically."""
    if not scene.frames and (scene.points is None or not len(scene.points)):
        raise ExportError("GLB export: nothing to draw (no cameras, no points)")
    data = build_scene(scene, geometry, max_cameras).export(file_type="glb")
    path = root / name
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"glb": str(path)}
