"""The app-owned keyframe store: a small, bounded payload per keyframe (``context.keyframes``).

What backends need long after a keyframe's frame is gone -- loop closure,
relocalisation, maps that are rebuilt at corrected poses -- without the app
keeping whole frames:

* ``rgb``: a colour thumbnail, ``[h, w, 3]`` uint8, the longest side at most
  ``keyframe_store.max_side`` pixels (area-averaged);
* ``depth``: depth at the thumbnail's size, ``[h, w]`` float16 (0 = invalid), in the units
  of the world when the keyframe was added: the frame's sensor depth when the frontend
  is metric (``estimate.depth_is_metric``) and the frame has depth of the image's size,
  else the estimate's depth where its confidence is above 0;
* ``intrinsics``: ``[3, 3]`` float64 for the thumbnail's pixels;
* ``features``: a dict that plugins fill (``kf.features["orb"] = ...``), e.g. keypoints,
  binary descriptors, a global descriptor. Arrays in it count towards the budget.

Geometry convention: the keyframe's camera-frame points ``x = unproject(depth, K)``
are placed in the current world by the trajectory store:
``context.trajectory.transform(kf.index) @ x`` (a Sim(3) after monocular corrections).

Budget: the store never holds more than ``keyframe_store.max_memory_mb``. When a
new keyframe would exceed it, the dense payload (``rgb``, ``depth``) of every second
keyframe that still has one is dropped (oldest first), then, if that is not enough,
the ``features`` of every second keyframe. The poses of all keyframes stay in the
trajectory store. A keyframe whose place other keyframes cover can be culled
(:meth:`KeyframeStore.discard`, the loop-closure plugin's ``cull``): its whole payload goes.
:meth:`KeyframeStore.stats` reports the bytes per keyframe and
what was dropped (``summary.json`` -> ``info.keyframe_store``).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Iterator, Optional

import numpy as np

log = logging.getLogger("slam3r")


def _nbytes(obj: Any) -> int:
    """Bytes of a payload: arrays, containers of them, and objects with an integer ``nbytes``
    (a plugin's feature record) or dataclass fields."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    nb = getattr(obj, "nbytes", None)
    if isinstance(nb, (int, np.integer)) and not isinstance(nb, bool):
        return int(nb)
    if is_dataclass(obj) and not isinstance(obj, type):
        return sum(_nbytes(getattr(obj, f.name)) for f in fields(obj))
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    return 0


@dataclass
class KeyframeRecord:
    """One keyframe's payload (see the module docstring for the conventions).

    Attributes:
        index: the keyframe's frame index.
        timestamp: seconds.
        intrinsics: ``[3, 3]`` float64 for ``rgb`` / ``depth``.
        rgb: ``[h, w, 3]`` uint8 thumbnail, or None once dropped for the budget.
        depth: ``[h, w]`` float16 depth (0 = invalid), or None once dropped.
        depth_is_metric: the depth is in metres.
        image_size: ``(height, width)`` of the source frame.
        features: plugin data (``{"orb": ..., "global": ...}``).
    """

    index: int
    timestamp: float
    intrinsics: np.ndarray
    rgb: Optional[np.ndarray]
    depth: Optional[np.ndarray]
    depth_is_metric: bool
    image_size: tuple[int, int]
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def has_dense(self) -> bool:
        return self.rgb is not None and self.depth is not None

    def nbytes(self) -> int:
        return _nbytes(self.rgb) + _nbytes(self.depth) + _nbytes(self.features) + 72

    def camera_points(self, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(points [M, 3] float32 camera frame, rgb [M, 3] uint8)`` of the valid depth pixels."""
        if self.depth is None:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        d = self.depth[::stride, ::stride].astype(np.float32)
        K = self.intrinsics
        v, u = np.nonzero(d > 0)
        z = d[v, u]
        us, vs = u * stride, v * stride
        pts = np.stack([(us - K[0, 2]) * z / K[0, 0], (vs - K[1, 2]) * z / K[1, 1], z], 1).astype(np.float32)
        col = self.rgb[vs, us] if self.rgb is not None else np.zeros((len(z), 3), np.uint8)
        return pts, np.asarray(col, np.uint8)


class KeyframeStore:
    """Bounded per-keyframe payloads, in keyframe order.

    Args:
        max_side: longest side of the stored thumbnails (pixels).
        max_memory_mb: the budget for all payloads together.
    """

    def __init__(self, max_side: int = 160, max_memory_mb: float = 256.0) -> None:
        if max_side < 8:
            raise ValueError(f"keyframe_store.max_side must be >= 8, got {max_side}")
        if not max_memory_mb > 0:
            raise ValueError(f"keyframe_store.max_memory_mb must be > 0, got {max_memory_mb}")
        self.max_side = int(max_side)
        self.cap_bytes = int(max_memory_mb * 1024 * 1024)
        self._records: dict[int, KeyframeRecord] = {}
        self._lock = threading.RLock()
        self._bytes = 0
        self.dense_dropped = 0
        self.features_dropped = 0
        self.culled = 0
        self._warned = False

    # ------------------------------------------------------------------ writing
    def add(self, frame: Any, estimate: Any) -> KeyframeRecord:
        """Store the payload of a keyframe from its :class:`Frame` and :class:`Estimate`."""
        import cv2

        rgb = np.asarray(frame.rgb)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        H, W = rgb.shape[:2]
        f = min(1.0, self.max_side / max(H, W))
        h, w = max(1, round(H * f)), max(1, round(W * f))
        thumb = rgb[..., :3] if f == 1.0 else cv2.resize(rgb[..., :3], (w, h), interpolation=cv2.INTER_AREA)
        depth = None
        sensor = getattr(frame, "depth", None)
        if estimate.depth_is_metric and sensor is not None and np.shape(sensor) == (H, W):
            d = np.asarray(sensor, dtype=np.float32)
        elif estimate.depth is not None:
            d = np.asarray(estimate.depth, dtype=np.float32)
            if estimate.confidence is not None and np.shape(estimate.confidence) == d.shape:
                d = np.where(np.asarray(estimate.confidence) > 0, d, 0)
        else:
            d = None
        if d is not None:
            d = np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
            dh, dw = d.shape
            if (dh, dw) != (h, w):
                # nearest neighbour at pixel centres: never mixes depths across edges
                ys = np.minimum(((np.arange(h) + 0.5) * dh / h).astype(np.int64), dh - 1)
                xs = np.minimum(((np.arange(w) + 0.5) * dw / w).astype(np.int64), dw - 1)
                d = d[ys][:, xs]
            depth = d.astype(np.float16)
        K = np.asarray(estimate.intrinsics if estimate.intrinsics is not None else frame.intrinsics, np.float64)
        Ks = K.copy()
        Ks[0, :] *= w / W
        Ks[1, :] *= h / H
        # pixel centres: x_s + 0.5 = (x + 0.5) * w / W
        Ks[0, 2] = (K[0, 2] + 0.5) * w / W - 0.5
        Ks[1, 2] = (K[1, 2] + 0.5) * h / H - 0.5
        rec = KeyframeRecord(int(frame.index), float(frame.timestamp), Ks, np.ascontiguousarray(thumb), depth,
                             bool(estimate.depth_is_metric), (int(H), int(W)))
        with self._lock:
            self._records[rec.index] = rec
            self._bytes += rec.nbytes()
            self._enforce_budget()
        return rec

    def update_features(self, index: int, name: str, value: Any) -> None:
        """Attach plugin data to a keyframe (counted towards the budget)."""
        with self._lock:
            rec = self._records[index]
            self._bytes -= rec.nbytes()
            rec.features[name] = value
            self._bytes += rec.nbytes()
            self._enforce_budget()

    def _enforce_budget(self) -> None:
        if self._bytes <= self.cap_bytes:
            return
        for what in ("dense", "features"):
            while self._bytes > self.cap_bytes:
                holders = [r for r in self._records.values() if (r.has_dense if what == "dense" else r.features)]
                if len(holders) < 2:
                    break
                for r in holders[:-1][::2]:  # every second one, oldest first; never the newest
                    self._bytes -= r.nbytes()
                    if what == "dense":
                        r.rgb = r.depth = None
                        self.dense_dropped += 1
                    else:
                        r.features = {}
                        self.features_dropped += 1
                    self._bytes += r.nbytes()
                if not self._warned:
                    self._warned = True
                    log.warning("keyframe store over its budget of %.0f MB at %d keyframes: dropping the %s "
                                "payload of every second keyframe (keyframe_store.max_memory_mb)",
                                self.cap_bytes / 2**20, len(self._records), what)
            if self._bytes <= self.cap_bytes:
                return

    def discard(self, index: int) -> bool:
        """Forget keyframe ``index``'s payload (a culled keyframe: its place is covered by others).

        Its pose stays in the trajectory store; consumers that look it up here get None.
        Returns whether it was held.
        """
        with self._lock:
            rec = self._records.pop(index, None)
            if rec is None:
                return False
            self._bytes -= rec.nbytes()
            self.culled += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._bytes = 0

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, index: object) -> bool:
        return index in self._records

    def __getitem__(self, index: int) -> KeyframeRecord:
        return self._records[index]

    def get(self, index: int) -> Optional[KeyframeRecord]:
        return self._records.get(index)

    def __iter__(self) -> Iterator[KeyframeRecord]:
        with self._lock:
            return iter(list(self._records.values()))

    def indices(self) -> list[int]:
        with self._lock:
            return list(self._records)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, Any]:
        n = len(self._records)
        return {"keyframes": n, "bytes": self._bytes, "bytes_per_keyframe": round(self._bytes / n) if n else 0,
                "cap_bytes": self.cap_bytes, "max_side": self.max_side, "dense_dropped": self.dense_dropped,
                "features_dropped": self.features_dropped, "culled": self.culled}
