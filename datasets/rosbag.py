"""ROS bags as a frame source (``source.type: rosbag``): ROS 1 ``.bag``, ROS 2 ``.db3`` / ``.mcap`` (or the bag folder).

Read with the pure-Python ``rosbags`` library (``pip install 'slam3r[ros]'``; no ROS installation).

* ``source.rosbag_rgb_topic``: the colour topic (``sensor_msgs/Image`` or ``CompressedImage``);
  unset: the bag's only image topic whose name does not say "depth".
* ``source.rosbag_depth_topic``: an optional depth topic (``16UC1`` millimetres, or
  ``source.depth_scale`` units per metre; ``32FC1`` metres; ``compressedDepth`` PNG).
* ``source.rosbag_camera_info_topic``: ``sensor_msgs/CameraInfo`` for the intrinsics (its ``K``,
  first message); unset: ``<colour topic's namespace>/camera_info`` when the bag has it, else the
  bag's only CameraInfo topic. ``source.intrinsics`` overrides it.

Timestamps are the messages' ``header.stamp`` (the bag's record time when every header stamp is
zero). Colour and depth are paired as for TUM (:func:`slam3r_app.trajectory.associate`: closest
pairs first, each message once, ``|dt| < source.max_time_diff``); colour frames without depth are
left out and counted. The bag is read twice: once for the timestamps (only they are kept), then
frame by frame, holding only the few messages that wait for their partner.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import FrameSource
from slam3r_app.trajectory import associate
from slam3r_app.types import Frame

from .common import PathLike, SizeGuard, as_intrinsics, bad_frame, depth_size_error, format_intrinsics, select_frames
from .ros_images import IMAGE_TYPES, ROS_DEPTH_SCALE, camera_info_K, decode_color, decode_depth, stamp_seconds

log = logging.getLogger("slam3r.source")

CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
BAG_SUFFIXES = (".bag", ".db3", ".mcap")


def _require_rosbags():
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as e:
        raise SourceError(f"source.type rosbag needs the 'rosbags' package ({e}): pip install 'slam3r[ros]' "
                          f"(scripts/setup.sh installs it)") from None
    return AnyReader, get_typestore(Stores.LATEST)


def check_bag_path(path: Path) -> Path:
    """A ROS 1 ``.bag``, a ROS 2 bag folder (with ``metadata.yaml``) or a ``.db3`` / ``.mcap`` file in one.

    Raises:
        SourceError: missing, or not something a bag reader opens (what was found is named).
    """
    if not path.exists():
        raise SourceError(f"ROS bag not found: {path}")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return path
        inner = sorted(p.name for p in path.iterdir() if p.suffix in BAG_SUFFIXES)
        raise SourceError(f"{path}: a ROS 2 bag folder holds a metadata.yaml, this one does not"
                          + (f" (bag files in it: {', '.join(inner[:5])})" if inner else ""))
    if path.suffix not in BAG_SUFFIXES:
        raise SourceError(f"{path}: not a ROS bag (expected a .bag file, a ROS 2 bag folder, or a .db3 / .mcap file)")
    return path


class RosbagSource(FrameSource):
    """Colour (and optional depth) frames of one camera in a ROS 1 or ROS 2 bag.

    Args:
        path: ``.bag`` file, ROS 2 bag folder, or its ``.db3`` / ``.mcap`` file.
        rgb_topic, depth_topic, camera_info_topic: see the module docstring.
        first, stride, max_frames: which of the paired frames are used.
        max_time_diff: colour/depth pairing tolerance, seconds.
        depth_scale: integer depth units per metre (default 1000: ROS's millimetres).
        intrinsics: ``[fx, fy, cx, cy]`` overriding the bag's CameraInfo.

    Raises:
        SourceError: the bag cannot be opened, a configured topic is missing (the message lists the
            bag's image topics), or no frame is left.
    """

    kind = "rosbag"

    def __init__(self, path: PathLike, rgb_topic: Optional[str] = None, depth_topic: Optional[str] = None,
                 camera_info_topic: Optional[str] = None, first: int = 0, stride: int = 1,
                 max_frames: Optional[int] = None, max_time_diff: float = 0.02, depth_scale: Optional[float] = None,
                 intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None) -> None:
        super().__init__()
        self._AnyReader, self._typestore = _require_rosbags()
        self.path = check_bag_path(Path(path).expanduser())
        self.name = f"rosbag:{self.path.name}"
        self.max_time_diff = float(max_time_diff)
        self.depth_scale = float(depth_scale) if depth_scale is not None else ROS_DEPTH_SCALE
        if self.max_time_diff <= 0 or self.depth_scale <= 0:
            raise SourceError(f"max_time_diff and depth_scale must be > 0, got {max_time_diff} and {depth_scale}")
        self._reader = self._open()
        try:
            self._pick_topics(rgb_topic, depth_topic, camera_info_topic)
            self.intrinsics, self.intrinsics_from = self._pick_intrinsics(intrinsics)
            self._index()
            n = len(self.pairs)
            idx = select_frames(n, first, stride, max_frames, self.path, f"the bag has {n} usable frame(s)")
        except BaseException:
            self.close()
            raise
        self.close()  # frames() opens its own reader: it may run in the prefetch thread (sqlite is per thread)
        self.selected = [self.pairs[i] for i in idx]
        self.has_depth = self.depth_topic is not None
        self._guard = SizeGuard()

    # ------------------------------------------------------------------ set-up
    def _open(self):
        try:
            reader = self._AnyReader([self.path], default_typestore=self._typestore)
            reader.open()
        except Exception as e:  # noqa: BLE001 - rosbags raises many types; each becomes one SourceError naming the bag
            raise SourceError(f"cannot open ROS bag {self.path}: {type(e).__name__}: {e}") from None
        return reader

    def _topics(self, types: Sequence[str]) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self._reader.connections if c.msgtype in types}

    def _describe(self, topics: dict[str, str]) -> str:
        counts: dict[str, int] = {}
        for c in self._reader.connections:
            if c.topic in topics:
                counts[c.topic] = counts.get(c.topic, 0) + int(getattr(c, "msgcount", 0) or 0)
        return ", ".join(f"{t} ({topics[t].rsplit('/', 1)[-1]}, {counts.get(t, 0)} messages)" for t in sorted(topics)) \
            or "none"

    def _pick_topics(self, rgb: Optional[str], depth: Optional[str], info: Optional[str]) -> None:
        images = self._topics(IMAGE_TYPES)
        listing = f"the bag's image topics: {self._describe(images)}"
        if rgb is None:
            colour = [t for t in images if "depth" not in t.lower()]
            if len(colour) != 1:
                raise SourceError(f"{self.path}: set source.rosbag_rgb_topic ({listing})")
            rgb = colour[0]
        for key, topic in (("rosbag_rgb_topic", rgb), ("rosbag_depth_topic", depth)):
            if topic is not None and topic not in images:
                raise SourceError(f"{self.path}: source.{key} '{topic}' is not an image topic of this bag ({listing})")
        self.rgb_topic, self.depth_topic = rgb, depth
        infos = self._topics((CAMERA_INFO_TYPE,))
        if info is not None and info not in infos:
            raise SourceError(f"{self.path}: source.rosbag_camera_info_topic '{info}' is not a CameraInfo topic of "
                              f"this bag (CameraInfo topics: {', '.join(sorted(infos)) or 'none'})")
        if info is None:
            parts = rgb.rstrip("/").split("/")
            near = ["/".join(parts[:k] + ["camera_info"]) for k in (len(parts) - 1, len(parts) - 2) if k >= 1]
            found = [t for t in near if t in infos]
            info = found[0] if found else (next(iter(infos)) if len(infos) == 1 else None)
        self.camera_info_topic = info

    def _pick_intrinsics(self, override) -> tuple[Optional[np.ndarray], str]:
        K = as_intrinsics(override, what="source.intrinsics")
        if K is not None:
            return K, "config (source.intrinsics)"
        if self.camera_info_topic is None:
            log.warning("%s: no CameraInfo topic and no source.intrinsics: frames carry no intrinsics", self.path)
            return None, "none"
        conns = [c for c in self._reader.connections if c.topic == self.camera_info_topic]
        for conn, _, raw in self._reader.messages(connections=conns):
            K, _, _ = camera_info_K(self._reader.deserialize(raw, conn.msgtype))
            if K[0, 0] > 0 and K[1, 1] > 0:
                return K, f"{self.camera_info_topic} (first message)"
        raise SourceError(f"{self.path}: {self.camera_info_topic} holds no CameraInfo with a valid K; "
                          f"set source.intrinsics: [fx, fy, cx, cy]")

    def _stamps(self, topic: str) -> tuple[np.ndarray, np.ndarray]:
        """``(header stamps, record times)`` in seconds of every message on ``topic``, in bag order."""
        conns = [c for c in self._reader.connections if c.topic == topic]
        head, rec = [], []
        for conn, t, raw in self._reader.messages(connections=conns):
            try:
                head.append(stamp_seconds(self._reader.deserialize(raw, conn.msgtype)))
            except Exception as e:  # noqa: BLE001 - any decoding failure becomes one SourceError naming the topic
                raise SourceError(f"{self.path}: cannot read a message on {topic}: {type(e).__name__}: {e}") from None
            rec.append(t * 1e-9)
        return np.asarray(head, np.float64), np.asarray(rec, np.float64)

    def _index(self) -> None:
        rgb_h, rgb_r = self._stamps(self.rgb_topic)
        if not len(rgb_h):
            raise SourceError(f"{self.path}: {self.rgb_topic} holds no messages (empty sequence)")
        use_header = bool(np.any(rgb_h != 0))
        if not use_header:
            log.warning("%s: every header.stamp on %s is zero: using the bag's record times", self.path, self.rgb_topic)
        rgb_t = rgb_h if use_header else rgb_r
        self.stats: dict[str, Any] = {"colour_frames": len(rgb_t), "timestamps": "header" if use_header else "record"}
        depth_of: dict[int, int] = {}
        if self.depth_topic is not None:
            d_h, d_r = self._stamps(self.depth_topic)
            d_t = d_h if use_header and np.any(d_h != 0) else d_r
            pairs = associate(rgb_t, d_t, self.max_time_diff)
            if not pairs:
                raise SourceError(f"{self.path}: no colour message on {self.rgb_topic} has a depth message on "
                                  f"{self.depth_topic} within {self.max_time_diff} s (colour {len(rgb_t)}, depth "
                                  f"{len(d_t)} messages); raise source.max_time_diff")
            depth_of = dict(pairs)
            self.stats["depth_frames"] = len(d_t)
            self.stats["frames_without_depth"] = len(rgb_t) - len(depth_of)
            if len(depth_of) < len(rgb_t):
                log.warning("%s: %d of %d colour frame(s) have no depth within %s s (left out)", self.path,
                            len(rgb_t) - len(depth_of), len(rgb_t), self.max_time_diff)
        keep = [i for i in range(len(rgb_t)) if self.depth_topic is None or i in depth_of]
        self.pairs = [(i, depth_of.get(i), float(rgb_t[i])) for i in keep]

    # ------------------------------------------------------------------ frames
    def __len__(self) -> int:
        return len(self.selected)

    def _iter_raw(self) -> Iterator[Union[Frame, BadFrameError]]:
        reader = self._open()
        try:
            yield from self._read(reader)
        finally:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 # pragma: no cover - closing must not hide the result being returned
                pass

    def _read(self, reader) -> Iterator[Union[Frame, BadFrameError]]:
        rgb_want = {i: k for k, (i, _, _) in enumerate(self.selected)}
        depth_want = {j for _, j, _ in self.selected if j is not None}
        topics = [self.rgb_topic] + ([self.depth_topic] if self.depth_topic else [])
        conns = [c for c in reader.connections if c.topic in topics]
        count = {t: 0 for t in topics}
        got_rgb: dict[int, tuple[bytes, str]] = {}
        got_depth: dict[int, tuple[bytes, str]] = {}
        nxt = 0
        for conn, _, raw in reader.messages(connections=conns):
            n = count[conn.topic]
            count[conn.topic] += 1
            if conn.topic == self.rgb_topic and n in rgb_want:
                got_rgb[n] = (raw, conn.msgtype)
            elif conn.topic == self.depth_topic and n in depth_want:
                got_depth[n] = (raw, conn.msgtype)
            while nxt < len(self.selected):
                i, j, t = self.selected[nxt]
                if i not in got_rgb or (j is not None and j not in got_depth):
                    break
                yield self._load(reader, nxt, i, t, got_rgb.pop(i), got_depth.pop(j) if j is not None else None)
                nxt += 1
            if nxt == len(self.selected):
                return
        for k in range(nxt, len(self.selected)):  # pragma: no cover - the first pass saw these messages
            yield bad_frame(f"{self.rgb_topic}#{self.selected[k][0]}", "message missing on the second read of the bag")

    def _load(self, reader, k: int, i: int, t: float, rgb_msg: tuple[bytes, str],
              depth_msg: Optional[tuple[bytes, str]]) -> Union[Frame, BadFrameError]:
        name = f"{self.rgb_topic}#{i}"
        try:
            rgb = decode_color(reader.deserialize(*rgb_msg), rgb_msg[1], name)
            depth = None
            if depth_msg is not None:
                dname = f"{self.depth_topic}#{self.selected[k][1]}"
                depth = decode_depth(reader.deserialize(*depth_msg), depth_msg[1], dname, self.depth_scale)
                if depth.shape[:2] != rgb.shape[:2]:
                    return bad_frame(dname, depth_size_error(name, rgb.shape, dname, depth.shape))
        except BadFrameError as e:
            return e
        except Exception as e:  # noqa: BLE001 - any decoding failure is this frame's bad-frame message
            return bad_frame(name, f"{name}: cannot deserialize ({type(e).__name__}: {e})")
        err = self._guard.check(name, rgb.shape)
        if err is not None:
            return err
        return Frame(index=k, timestamp=t, rgb=rgb, depth=depth,
                     intrinsics=None if self.intrinsics is None else self.intrinsics.copy(), name=name)

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({"type": self.kind, "path": str(self.path), "rgb_topic": self.rgb_topic,
                  "depth_topic": self.depth_topic, "camera_info_topic": self.camera_info_topic,
                  "intrinsics": format_intrinsics(self.intrinsics), "intrinsics_from": self.intrinsics_from,
                  "depth_scale": self.depth_scale, "max_time_diff": self.max_time_diff, **self.stats})
        return d

    def close(self) -> None:
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 # pragma: no cover - closing must not hide the result being returned
                pass
