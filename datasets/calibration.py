"""Camera calibration as the sensor has it: lens distortion and unregistered depth, removed once, in the reader.

Every consumer downstream of a reader (frontends, fusion, loop closure, exports) assumes a pinhole
camera whose depth is registered to the colour image. Real sensors are not like that:

* **Lens distortion.** TUM's freiburg1 / freiburg2 Kinects and Bonn's Xtion deliver images that are
  not undistorted (TUM freiburg1: k1 = 0.26). :class:`Undistorter` resamples a frame once onto the
  pinhole camera with the *same* intrinsics ``K`` (OpenCV ``initUndistortRectifyMap`` with
  ``newCameraMatrix = K``, then ``remap``): colour bilinearly, depth with the nearest neighbour (no
  depth is blended across an edge; an invalid 0 stays invalid), pixels whose source lies outside
  the image become black / invalid. The frame keeps ``K``, so the intrinsics every export writes
  describe the images it writes.
* **Unregistered depth** (7-Scenes, a raw Kinect): the depth image comes from another camera.
  :class:`DepthRegistration` undistorts it in its own camera, lifts every valid pixel to 3D, moves
  it into the colour camera (``T_color_depth``) and projects it with ``K``, keeping the nearest
  surface where several land on one pixel (a z-buffer); colour pixels no depth lands on stay 0.

Distortion coefficients follow OpenCV's order ``k1 k2 p1 p2 [k3 [k4 k5 k6]]`` (TUM's and Bonn's
pages list ``d0..d4`` in this order). Arrays: colour ``[H, W, 3]`` uint8, depth ``[H, W]`` float32
metres (0 = invalid), ``K`` ``[3, 3]`` float64; ``T_color_depth`` ``[4, 4]`` float64 maps points of
the depth camera into the colour camera (OpenCV axes, x right, y down, z forward).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import SourceError
from slam3r_app.sim3 import strip_scale
from slam3r_app.types import Frame

log = logging.getLogger("slam3r.source")

#: TUM RGB-D colour-camera distortion (d0..d4 = k1 k2 p1 p2 k3), from the dataset's calibration page.
#: freiburg3's images were undistorted by the dataset's authors (zero distortion).
TUM_DISTORTION = {
    "freiburg1": (0.2624, -0.9531, -0.0054, 0.0026, 1.1633),
    "freiburg2": (0.2312, -0.7849, -0.0033, -0.0001, 0.9172),
    "freiburg3": (0.0, 0.0, 0.0, 0.0, 0.0),
}
#: Bonn RGB-D Dynamic (ASUS Xtion, one calibration for every sequence), from the dataset page.
BONN_DISTORTION = (0.039903, -0.099343, -0.000730, -0.000144, 0.0)
#: Bonn RGB-D Dynamic ground truth: ``groundtruth.txt`` holds the pose of the motion-capture marker
#: body, not of the camera. The dataset page gives two transforms, ``T_ros`` (an axis permutation) and
#: ``T_m`` (marker to camera, from its calibration); the colour camera's pose is
#: ``G @ T_ros @ T_m`` (rotation re-orthonormalised: ``T_m`` is printed to 4 digits). Checked here
#: against the tracker's relative rotations on two Bonn crowd chunks (README, "Measured results").
BONN_T_ROS = np.array([[-1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
BONN_T_M = np.array([[1.0157, 0.1828, -0.2389, 0.0113], [0.0009, -0.8431, -0.6413, -0.0098],
                     [-0.3009, 0.6147, -0.8085, 0.0111], [0, 0, 0, 1.0]])
#: ``[4, 4]`` marker body -> colour camera: ``camera_pose = groundtruth_pose @ BONN_MARKER_TO_CAMERA``
BONN_MARKER_TO_CAMERA = strip_scale(BONN_T_ROS @ BONN_T_M)
#: the image size (width, height) both datasets' calibrations are for
DATASET_CALIBRATION_SIZE = (640, 480)

_LENGTHS = (4, 5, 8, 12, 14)

DistortionLike = Union[None, str, Sequence[float], np.ndarray]


def as_distortion(value: DistortionLike, what: str = "source.distortion") -> Optional[np.ndarray]:
    """``None`` / ``"none"`` / ``[]`` / all zeros -> None; 4, 5, 8, 12 or 14 finite numbers -> float64 array.

    Raises:
        SourceError: naming ``what`` for any other value.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("none", "off", ""):
            return None
        raise SourceError(f"{what}: expected 'none' or a list of k1 k2 p1 p2 [k3 ...] coefficients, got {value!r}")
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SourceError(f"{what}: expected a list of numbers (k1 k2 p1 p2 [k3 ...]), got {value!r}") from None
    if a.size == 0:
        return None
    if a.size not in _LENGTHS:
        raise SourceError(f"{what}: OpenCV distortion has 4, 5, 8, 12 or 14 coefficients (k1 k2 p1 p2 [k3 ...]), "
                          f"got {a.size}: {a.tolist()}")
    if not np.all(np.isfinite(a)):
        raise SourceError(f"{what}: coefficients must be finite numbers, got {a.tolist()}")
    if not np.any(a):
        return None
    return a


def as_transform(value: Any, what: str) -> np.ndarray:
    """A ``[4, 4]`` rigid transform from a 4x4 / 3x4 nested list or 12 / 16 numbers (row-major).

    Raises:
        SourceError: naming ``what`` when it is not a finite rigid transform (rotation orthonormal).
    """
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SourceError(f"{what}: expected a 4x4 (or 3x4) matrix, got {value!r}") from None
    if a.size in (12, 16):
        a = a.reshape(-1, 4)
    if a.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(a)):
        raise SourceError(f"{what}: expected a finite 4x4 (or 3x4) matrix, got shape {list(a.shape)}")
    T = np.eye(4)
    T[: a.shape[0]] = a
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0 or not np.allclose(T[3], (0, 0, 0, 1)):
        raise SourceError(f"{what}: not a rigid transform (the rotation must be orthonormal with determinant +1)")
    return T


class Undistorter:
    """Resamples frames of a distorted camera onto the pinhole camera with the same ``K`` (once, in the reader).

    Args:
        K: ``[3, 3]`` intrinsics of the colour camera (kept by the output).
        dist: OpenCV distortion coefficients (:func:`as_distortion`).
        size: ``(width, height)`` the calibration is for (a dataset's published one): frames of
            another size are passed on unchanged, with one warning. None: any size.

    The remap tables are built for the first frame size seen and rebuilt if it changes.
    """

    def __init__(self, K: np.ndarray, dist: np.ndarray, size: Optional[tuple[int, int]] = None) -> None:
        self.K = np.asarray(K, dtype=np.float64).copy()
        self.dist = np.asarray(dist, dtype=np.float64).copy()
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self._warned = False
        self._size: Optional[tuple[int, int]] = None
        self._maps: Optional[tuple[np.ndarray, np.ndarray]] = None

    def maps(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """``(map_x, map_y)`` float32 ``[H, W]``: where each pinhole pixel lies in the distorted image."""
        import cv2

        if self._size != (width, height) or self._maps is None:
            self._maps = cv2.initUndistortRectifyMap(self.K, self.dist, None, self.K, (int(width), int(height)),
                                                     cv2.CV_32FC1)
            self._size = (width, height)
        return self._maps

    def color(self, rgb: np.ndarray) -> np.ndarray:
        """Undistorted colour (bilinear; pixels whose source is outside the image are 0)."""
        import cv2

        mx, my = self.maps(rgb.shape[1], rgb.shape[0])
        return cv2.remap(np.ascontiguousarray(rgb), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)

    def depth(self, depth: np.ndarray) -> np.ndarray:
        """Undistorted depth (nearest neighbour: values are never blended; invalid stays 0, outside is 0)."""
        import cv2

        mx, my = self.maps(depth.shape[1], depth.shape[0])
        d = np.asarray(depth, dtype=np.float32)
        d = np.where(np.isfinite(d), d, 0).astype(np.float32)
        return cv2.remap(d, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def __call__(self, frame: Frame, depth_registered: bool = True) -> Frame:
        """The frame on the pinhole camera (``depth_registered``: its depth lies on the colour pixel grid)."""
        if self.size is not None and (frame.width, frame.height) != self.size:
            if not self._warned:
                self._warned = True
                log.warning("%s: the camera's distortion is calibrated for %dx%d images but the frames are %dx%d: "
                            "not undistorted", frame.name or "frame", *self.size, frame.width, frame.height)
            return frame
        depth = frame.depth
        if depth is not None and depth_registered:
            depth = self.depth(depth)
        return dataclasses.replace(frame, rgb=self.color(frame.rgb), depth=depth)

    def describe(self) -> dict[str, Any]:
        return {"model": "opencv", "coefficients": [float(x) for x in self.dist], "undistorted": "in the reader"}


class DepthRegistration:
    """Registers depth of a separate depth camera to the (undistorted) colour camera.

    Args:
        K_depth: ``[3, 3]`` intrinsics of the depth camera.
        dist_depth: its distortion (None: pinhole).
        T_color_depth: ``[4, 4]`` transform from depth-camera to colour-camera coordinates.
        K_color: ``[3, 3]`` intrinsics of the colour camera the depth is projected into.
    """

    def __init__(self, K_depth: np.ndarray, dist_depth: Optional[np.ndarray], T_color_depth: np.ndarray,
                 K_color: np.ndarray) -> None:
        self.K_depth = np.asarray(K_depth, dtype=np.float64).copy()
        self.T = np.asarray(T_color_depth, dtype=np.float64).copy()
        self.K_color = np.asarray(K_color, dtype=np.float64).copy()
        self.undistort = Undistorter(self.K_depth, dist_depth) if dist_depth is not None else None

    def __call__(self, depth: np.ndarray, width: int, height: int) -> np.ndarray:
        """``[height, width]`` float32 depth in the colour camera (z of the colour camera; 0 = no depth)."""
        d = np.asarray(depth, dtype=np.float32)
        if self.undistort is not None:
            d = self.undistort.depth(d)
        v, u = np.nonzero(np.isfinite(d) & (d > 0))
        z = d[v, u].astype(np.float64)
        K = self.K_depth
        p = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1)
        q = p @ self.T[:3, :3].T + self.T[:3, 3]
        zc = q[:, 2]
        front = zc > 1e-6
        q, zc = q[front], zc[front]
        Kc = self.K_color
        uc = np.round(Kc[0, 0] * q[:, 0] / zc + Kc[0, 2]).astype(np.int64)
        vc = np.round(Kc[1, 1] * q[:, 1] / zc + Kc[1, 2]).astype(np.int64)
        inside = (uc >= 0) & (uc < width) & (vc >= 0) & (vc < height)
        flat = vc[inside] * width + uc[inside]
        out = np.full(width * height, np.inf)
        np.minimum.at(out, flat, zc[inside])  # the nearest surface wins where several land on one pixel
        out[~np.isfinite(out)] = 0.0
        return out.reshape(height, width).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        K = self.K_depth
        return {"depth_intrinsics": [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
                "depth_distortion": None if self.undistort is None else [float(x) for x in self.undistort.dist],
                "T_color_depth": self.T.tolist(), "registered": "in the reader"}


def depth_registration(cfg: Any, K_color: np.ndarray, what: str = "source.depth_camera") -> Optional[DepthRegistration]:
    """A :class:`DepthRegistration` from a ``source.depth_camera`` mapping (None when unset).

    Keys: ``intrinsics`` ``[fx, fy, cx, cy]`` (required), ``distortion`` (optional),
    ``T_color_depth`` (4x4 or 3x4, default identity: the same centre, other intrinsics).
    """
    if cfg is None:
        return None
    get = (lambda k: cfg.get(k)) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, None))
    from .common import as_intrinsics

    intr = get("intrinsics")
    if intr is None:
        raise SourceError(f"{what}.intrinsics: the depth camera's [fx, fy, cx, cy] are needed to register its depth")
    Kd = as_intrinsics(intr, what=f"{what}.intrinsics")
    dist = as_distortion(get("distortion"), what=f"{what}.distortion")
    T = get("T_color_depth")
    T = np.eye(4) if T is None else as_transform(T, f"{what}.T_color_depth")
    return DepthRegistration(Kd, dist, T, K_color)


def explicit_undistorter(value: DistortionLike, K: Optional[np.ndarray],
                         what: str = "source.distortion") -> Optional[Undistorter]:
    """For readers with no calibration of their own (image folder, video, camera): ``"auto"`` / ``"none"``
    -> None; coefficients -> an :class:`Undistorter` (they need the intrinsics).

    Raises:
        SourceError: coefficients without intrinsics, or malformed coefficients.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    d = as_distortion(value, what=what)
    if d is None:
        return None
    if K is None:
        raise SourceError(f"{what}: undistorting needs the camera's intrinsics; set source.intrinsics: "
                          f"[fx, fy, cx, cy] too")
    return Undistorter(K, d)
