"""``cameras.json`` in the run folder: the intrinsics and image size the run used, per frame.

Written by the ``exports`` plugin at the end of every run (and on "save now"), so that the offline
``export`` command uses exactly the intrinsics the poses were estimated with (a learned frontend
may predict its own) without re-reading the source for them::

    {"format": "slam3r cameras 1",
     "intrinsics": "pixels, OpenCV convention (pixel centres at integer coordinates)",
     "width": 640, "height": 480,
     "source": {"type": "tum", "path": "/abs/path/to/sequence", ...},
     "frames": [{"index": 0, "timestamp": 1305031102.175304, "fx": 517.3, "fy": 516.5,
                 "cx": 318.6, "cy": 255.3, "keyframe": true, "status": "tracked"}, ...]}

``status`` is the frame's final tracking status (``tracked``, ``lost``, ``relocalized``); the
exports leave ``lost`` frames out (their pose is a placeholder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from slam3r_app.io import write_json

from .scene import ExportError

CAMERAS_FILE = "cameras.json"


@dataclass
class CameraRow:
    """One frame of ``cameras.json``: ``K`` ``[3, 3]`` (OpenCV convention), keyframe flag, tracking status."""

    index: int
    timestamp: float
    K: np.ndarray
    keyframe: bool
    status: str = "tracked"


def write_cameras(path: Path, rows: list[CameraRow], width: Optional[int], height: Optional[int],
                  source: dict[str, Any]) -> Path:
    """Write ``cameras.json`` atomically."""
    return write_json(path, {
        "format": "slam3r cameras 1",
        "intrinsics": "pixels, OpenCV convention (pixel centres at integer coordinates)",
        "width": width, "height": height, "source": source,
        "frames": [{"index": r.index, "timestamp": r.timestamp, "fx": float(r.K[0, 0]), "fy": float(r.K[1, 1]),
                    "cx": float(r.K[0, 2]), "cy": float(r.K[1, 2]), "keyframe": bool(r.keyframe),
                    "status": str(r.status)} for r in rows],
    })


def read_cameras(path: Path) -> dict[str, Any]:
    """``{"width", "height", "source", "frames": [CameraRow, ...]}`` from ``cameras.json``.

    Raises:
        ExportError: the file is not valid JSON or lacks a key (named).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = []
        for _k, f in enumerate(data["frames"]):
            K = np.array([[f["fx"], 0.0, f["cx"]], [0.0, f["fy"], f["cy"]], [0.0, 0.0, 1.0]], dtype=np.float64)
            rows.append(CameraRow(int(f["index"]), float(f["timestamp"]), K, bool(f.get("keyframe", False)),
                                  str(f.get("status", "tracked"))))
        return {"width": data.get("width"), "height": data.get("height"), "source": data.get("source") or {},
                "frames": rows}
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise ExportError(f"{path}: malformed cameras file (missing or bad key {e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: cannot be read ({e})") from None
