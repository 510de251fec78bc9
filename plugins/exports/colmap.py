"""The ``colmap`` export: a sparse COLMAP model written with pycolmap (no hand-written COLMAP files).

``DIR/sparse/0/{cameras,images,points3D,rigs,frames}.bin`` next to ``DIR/images/``: the layout COLMAP
(``colmap gui``, import the model with ``DIR/images`` as image folder), gsplat's and 3DGS's
trainers (``--data_dir DIR``) and nerfstudio (``ns-train splatfacto --data DIR colmap
--colmap-path sparse/0``) read without conversion.

* Cameras: ``PINHOLE`` (fx, fy, cx, cy), one shared camera when every frame has the same size and
  intrinsics, else one per image. COLMAP's pixel convention puts the centre of the top-left pixel
  at (0.5, 0.5) where slam3r's (OpenCV's) puts it at (0, 0): ``cx``, ``cy`` are written +0.5.
* Images: named after their file in ``images/``; the pose is COLMAP's ``cam_from_world``, the
  inverse of slam3r's camera-to-world (same camera axes: x right, y down, z forward); COLMAP's text
  format writes its quaternion scalar first (``QW QX QY QZ``) where TUM files write it last.
* Points: the map's points with their colours; tracks and 2D keypoints (+0.5 as above) from the
  keyframes whose depth sees them (:mod:`.tracks`: the exported depth files, the source's sensor
  depth offline, or the depth thumbnails of the app's keyframe store in a metric run); a point no
  depth map saw has an empty track.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from slam3r_app.trajectory import invert_pose

from .scene import ExportError, ExportScene, require
from .tracks import TrackBuilder

#: COLMAP's pixel centre offset relative to OpenCV's.
PIXEL_OFFSET = 0.5
SPARSE_DIR = "sparse/0"


def colmap_params(K: np.ndarray) -> list[float]:
    """``PINHOLE`` parameters ``[fx, fy, cx, cy]`` in COLMAP's pixel convention from an OpenCV ``K``."""
    return [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]) + PIXEL_OFFSET, float(K[1, 2]) + PIXEL_OFFSET]


def build_reconstruction(scene: ExportScene, tracks: Optional[TrackBuilder] = None):
    """A ``pycolmap.Reconstruction`` of the scene's frames that have an image, and its points.

    Image ids are 1, 2, ... in frame order; camera ids 1 (shared) or equal to the image id.
    ``tracks.observations`` is keyed by frame index.
    """
    pycolmap = require("pycolmap", "export", "the COLMAP export")
    frames = [f for f in scene.frames if f.image]
    if not frames:
        raise ExportError("COLMAP export: no frame has a colour image to reference")
    rec = pycolmap.Reconstruction()
    shared = ExportScene(frames=frames).shared_intrinsics()
    if shared:
        f0 = frames[0]
        rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="PINHOLE", width=f0.width,
                                                        height=f0.height, params=colmap_params(f0.K)))
    per_point: list[np.ndarray] = []  # rows: point index, image id, point2D index
    for image_id, f in enumerate(frames, start=1):
        camera_id = 1 if shared else image_id
        if not shared:
            rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=camera_id, model="PINHOLE", width=f.width,
                                                            height=f.height, params=colmap_params(f.K)))
        idx, uv = (tracks.observations.get(f.index) if tracks is not None else None) or (np.zeros(0, np.int64),
                                                                                          np.zeros((0, 2)))
        image = pycolmap.Image(name=Path(f.image).name, keypoints=np.asarray(uv, np.float64).reshape(-1, 2) + PIXEL_OFFSET,
                               camera_id=camera_id, image_id=image_id)
        w2c = invert_pose(f.pose)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3]))
        if len(idx):
            per_point.append(np.stack([idx, np.full(len(idx), image_id), np.arange(len(idx))], axis=1))
    if scene.points is not None and len(scene.points):
        _add_points(pycolmap, rec, scene.points, scene.colors, per_point)
    return rec


def _add_points(pycolmap, rec, points: np.ndarray, colors: Optional[np.ndarray], per_point: list[np.ndarray]) -> None:
    obs = np.concatenate(per_point) if per_point else np.zeros((0, 3), np.int64)
    obs = obs[np.argsort(obs[:, 0], kind="stable")]
    starts = np.searchsorted(obs[:, 0], np.arange(len(points) + 1))
    rgb = np.zeros((len(points), 3), np.uint8) if colors is None else np.asarray(colors, np.uint8)
    for j in range(len(points)):
        track = pycolmap.Track()
        for _, image_id, p2d in obs[starts[j]:starts[j + 1]]:
            track.add_element(int(image_id), int(p2d))
        rec.add_point3D(np.asarray(points[j], np.float64), track, rgb[j])


def write_colmap(scene: ExportScene, root: Path, tracks: Optional[TrackBuilder] = None) -> dict[str, str]:
    """Write ``root/sparse/0/*.bin``; each file replaces the old one atomically."""
    rec = build_reconstruction(scene, tracks)
    target = root / SPARSE_DIR
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".colmap.", dir=target.parent))
    try:
        rec.write(str(tmp))
        for f in sorted(tmp.iterdir()):
            os.replace(f, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"colmap": str(target)}
