"""Decode ROS image messages (``sensor_msgs/Image``, ``sensor_msgs/CompressedImage``) to numpy arrays.

Works on the message objects ``rosbags`` deserializes (ROS 1 and ROS 2 alike); no ROS or cv_bridge
needed. Colour comes out as RGB ``uint8 [H, W, 3]``, depth as metres ``float32 [H, W]`` (0 = unknown).

Colour encodings: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` (grey, repeated to 3 channels),
``mono16`` (scaled to 8 bits); compressed: anything OpenCV decodes (``jpeg``, ``png``).
Depth encodings: ``16UC1`` / ``mono16`` (integer units, ``depth_scale`` per metre: 1000 = millimetres,
the ROS convention) and ``32FC1`` (metres); compressed: ``compressedDepth`` (image_transport's PNG
with a 12-byte header, 16UC1 only) or a plain 16-bit PNG.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from slam3r_app.errors import BadFrameError

COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
#: ROS's 16UC1 depth is in millimetres.
ROS_DEPTH_SCALE = 1000.0


def _bad(what: str, message: str) -> BadFrameError:
    err = BadFrameError(f"{what}: {message}")
    err.frame_name = what  # type: ignore[attr-defined]
    return err


def _check_size(what: str, size: Any) -> None:
    from .common import too_large

    big = too_large(size)
    if big:
        raise _bad(what, big)


def _compressed(msg: Any, what: str, skip: int = 0) -> np.ndarray:
    """The bytes of a ``CompressedImage`` after its size was read from the header (``source.max_image_pixels``)."""
    from .common import image_size

    buf = np.asarray(msg.data, dtype=np.uint8)[skip:]
    _check_size(what, image_size(buf[:1 << 16].tobytes()))
    return buf


def _raw(msg: Any, dtype: np.dtype, channels: int, what: str) -> np.ndarray:
    """The pixel array ``[H, W(, C)]`` of a raw ``sensor_msgs/Image`` (honours ``step`` and ``is_bigendian``)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(what, (w, h))
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * channels * dt.itemsize
    data = np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=np.uint8)
    if step < row or data.size < step * h:
        raise _bad(what, f"{msg.encoding} image of {w}x{h} needs {row} bytes a row and {step * h} in all; "
                         f"got step {step} and {data.size} bytes")
    rows = data[: step * h].reshape(h, step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dt).reshape((h, w, channels) if channels > 1 else (h, w))
    return arr.astype(dt.newbyteorder("="), copy=False)


def decode_color(msg: Any, msgtype: str, what: str) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` of a colour message.

    Raises:
        BadFrameError: unknown encoding or a message that does not decode (``what`` names it).
    """
    import cv2

    if msgtype.endswith("CompressedImage"):
        img = cv2.imdecode(_compressed(msg, what), cv2.IMREAD_COLOR)
        if img is None:
            raise _bad(what, f"cannot decode the compressed image (format {msg.format!r})")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    enc = str(msg.encoding).lower()
    if enc in ("rgb8", "bgr8"):
        img = _raw(msg, np.uint8, 3, what)
        return np.ascontiguousarray(img if enc == "rgb8" else img[..., ::-1])
    if enc in ("rgba8", "bgra8"):
        img = _raw(msg, np.uint8, 4, what)[..., :3]
        return np.ascontiguousarray(img if enc == "rgba8" else img[..., ::-1])
    if enc == "mono8":
        return np.repeat(_raw(msg, np.uint8, 1, what)[..., None], 3, axis=2)
    if enc == "mono16":
        g = (_raw(msg, np.uint16, 1, what) >> 8).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    raise _bad(what, f"colour encoding {msg.encoding!r} is not supported (supported: {', '.join(COLOR_ENCODINGS)}, "
                     f"or a CompressedImage)")


def decode_depth(msg: Any, msgtype: str, what: str, depth_scale: float = ROS_DEPTH_SCALE) -> np.ndarray:
    """Metric depth ``float32 [H, W]`` (0 = unknown) of a depth message.

    Args:
        depth_scale: integer units per metre for 16-bit depth (ROS: 1000, millimetres).

    Raises:
        BadFrameError: unknown encoding or a message that does not decode.
    """
    import cv2

    if msgtype.endswith("CompressedImage"):
        fmt = str(msg.format)
        if "compresseddepth" in fmt.lower():
            if "32fc1" in fmt.lower():
                raise _bad(what, f"compressedDepth with 32FC1 (format {fmt!r}) is not supported; record 16UC1 "
                                 f"or raw depth")
            # image_transport's ConfigHeader: format (int32) + 2 float32 quantisation parameters
            buf = _compressed(msg, what, skip=12)
        else:
            buf = _compressed(msg, what)
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
            raise _bad(what, f"cannot decode the compressed depth (format {fmt!r}) as a 16-bit single-channel PNG")
        return raw.astype(np.float32) / np.float32(depth_scale)
    enc = str(msg.encoding)
    if enc.upper() == "16UC1" or enc.lower() == "mono16":
        return _raw(msg, np.uint16, 1, what).astype(np.float32) / np.float32(depth_scale)
    if enc.upper() == "32FC1":
        d = _raw(msg, np.float32, 1, what).astype(np.float32, copy=True)
        d[~np.isfinite(d) | (d < 0)] = 0.0
        return d
    raise _bad(what, f"depth encoding {enc!r} is not supported (supported: {', '.join(DEPTH_ENCODINGS)})")


def stamp_seconds(msg: Any) -> float:
    """The ``header.stamp`` of a message in seconds (ROS 1 ``secs/nsecs`` or ROS 2 ``sec/nanosec``)."""
    st = msg.header.stamp
    sec = getattr(st, "sec", getattr(st, "secs", 0))
    nsec = getattr(st, "nanosec", getattr(st, "nsecs", 0))
    return int(sec) + int(nsec) * 1e-9


def camera_info_K(msg: Any) -> tuple[np.ndarray, int, int]:
    """``(K [3, 3] float64, width, height)`` of a ``sensor_msgs/CameraInfo`` (ROS 2 ``k``, ROS 1 ``K``)."""
    k = getattr(msg, "k", None)
    if k is None:
        k = msg.K
    return np.asarray(k, dtype=np.float64).reshape(3, 3).copy(), int(msg.width), int(msg.height)
