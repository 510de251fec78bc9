"""The ``depth`` export: the per-frame depth files' index, with the final poses.

The depth maps themselves (``depth/<name>.png`` in millimetres and ``depth/<name>.npz`` with float32
depth, confidence and intrinsics; :mod:`.frame_files`) are written as the frames go during a run,
or from the source's sensor depth by the offline ``export`` command. Poses can still change after a
frame was written (loop closure), so they are not in those files: this index, written at the end,
holds them.

``depth/frames.json``::

    {"format": "slam3r depth 1", "metric": true, "depth_unit": "metres",
     "png_unit": "millimetres", "pose": "camera-to-world 4x4, OpenCV camera axes (x right, y down, z forward)",
     "intrinsics": "pixels, OpenCV convention (pixel centres at integer coordinates)",
     "frames": [{"index": 0, "timestamp": 0.0, "depth_png": "depth/0.000000.png", "depth_npz": "depth/0.000000.npz",
                 "width": 320, "height": 240, "fx": ..., "fy": ..., "cx": ..., "cy": ...,
                 "keyframe": true, "pose": [[...4 rows...]]}, ...]}

``depth/trajectory.txt``: the same poses in the TUM format.
"""
from __future__ import annotations

from pathlib import Path

from slam3r_app.io import write_json
from slam3r_app.trajectory import write_tum

from .scene import DEPTH_DIR, ExportError, ExportScene


def write_depth_index(scene: ExportScene, root: Path) -> dict[str, str]:
    """Write ``depth/frames.json`` and ``depth/trajectory.txt`` for the frames that have depth files."""
    frames = [f for f in scene.frames if f.depth_npz]
    if not frames:
        raise ExportError("depth export: no frame has a depth map (the source has no depth and the run wrote "
                          "none; set exports.formats: [depth] in the run's config to keep the predicted depth)")
    metric = scene.metric if scene.depth_metric is None else scene.depth_metric
    data = {
        "format": "slam3r depth 1",
        "metric": metric,
        "depth_unit": "metres" if metric else "the run's units (not metric)",
        "png_unit": "millimetres" if metric else "thousandths of the run's unit",
        "pose_unit": scene.units,
        "pose": "camera-to-world 4x4, OpenCV camera axes (x right, y down, z forward)",
        "intrinsics": "pixels, OpenCV convention (pixel centres at integer coordinates)",
        "scale": scene.units_note,
        "frames": [{
            "index": f.index, "timestamp": f.timestamp, "depth_png": f.depth_png, "depth_npz": f.depth_npz,
            "image": f.image, "width": f.width, "height": f.height,
            "fx": float(f.K[0, 0]), "fy": float(f.K[1, 1]), "cx": float(f.K[0, 2]), "cy": float(f.K[1, 2]),
            "keyframe": f.keyframe, "pose": f.pose.tolist(),
        } for f in frames],
        **({"info": scene.info} if scene.info else {}),
    }
    index = write_json(root / DEPTH_DIR / "frames.json", data)
    traj = write_tum(root / DEPTH_DIR / "trajectory.txt", [f.timestamp for f in frames],
                     scene.poses()[[i for i, f in enumerate(scene.frames) if f.depth_npz]],
                     header=f"poses of the depth frames, camera-to-world (OpenCV axes); {scene.units_note}")
    return {"depth_frames": str(index), "depth_trajectory": str(traj)}
