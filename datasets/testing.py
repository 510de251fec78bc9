"""Small on-disk fixture sequences for tests (TUM / Bonn and Sintel layouts), with known contents.

Every frame ``i`` is recognisable: colour value ``color_value(i)`` everywhere,
depth ``depth_m(i)`` metres everywhere, and the ground-truth pose
``fixture_pose(t)`` is a smooth function of time, so a test can check which
colour, depth and pose a reader paired.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from slam3r_app.trajectory import format_tum, pose_from_tq

from .sintel import c2w_to_extrinsics, write_cam, write_dpt


def color_value(i: int) -> int:
    return (20 + 7 * i) % 256


def depth_m(i: int) -> float:
    return 1.0 + 0.01 * i


def fixture_pose(t: float) -> np.ndarray:
    """A smooth camera-to-world pose as a function of time ``t`` (seconds)."""
    a = 0.3 * t
    q = np.array([0.0, np.sin(a / 2), 0.0, np.cos(a / 2)])
    return pose_from_tq([0.5 * t, 0.1 * np.sin(t), -0.2 * t], q)


def _png(path: Path, img: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())


def write_tum_fixture(
    root: Path,
    n: int = 10,
    size: tuple[int, int] = (48, 64),
    fps: float = 30.0,
    t0: float = 1000.0,
    depth_jitter: float = 0.004,
    gt_rate: Optional[float] = 100.0,
    depth_indices: Optional[Sequence[int]] = None,
    depth_scale: float = 5000.0,
    seed: int = 0,
) -> Path:
    """A TUM-layout sequence in ``root`` (created).

    Colour frame ``i`` is at ``t0 + i / fps``; its depth at the same time plus a
    random jitter of at most ``depth_jitter`` s (only for ``depth_indices``, default
    all); ground truth at ``gt_rate`` Hz covering the sequence with a margin (none
    if ``gt_rate`` is None). Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    root.mkdir(parents=True, exist_ok=True)
    rgb_lines = ["# color images", "# timestamp filename"]
    depth_lines = ["# depth maps", "# timestamp filename"]
    depth_indices = range(n) if depth_indices is None else depth_indices
    for i in range(n):
        ts = t0 + i / fps
        _png(root / "rgb" / f"{ts:.6f}.png", np.full((h, w, 3), color_value(i), np.uint8))
        rgb_lines.append(f"{ts:.6f} rgb/{ts:.6f}.png")
    for i in depth_indices:
        ts = t0 + i / fps + rng.uniform(-depth_jitter, depth_jitter)
        raw = np.full((h, w), int(round(depth_m(i) * depth_scale)), np.uint16)
        _png(root / "depth" / f"{ts:.6f}.png", raw)
        depth_lines.append(f"{ts:.6f} depth/{ts:.6f}.png")
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    if gt_rate:
        ts = np.arange(t0 - 0.1, t0 + n / fps + 0.1, 1.0 / gt_rate)
        poses = np.stack([fixture_pose(t - t0) for t in ts])
        (root / "groundtruth.txt").write_text("# ground truth\n# timestamp tx ty tz qx qy qz qw\n" + format_tum(ts, poses))
    return root


def fixture_intrinsics(i: int = 0) -> np.ndarray:
    return np.array([[100.0 + i, 0.0, 31.5], [0.0, 101.0 + i, 23.5], [0.0, 0.0, 1.0]])


def write_sintel_fixture(
    root: Path,
    sequence: str = "alley_9",
    n: int = 6,
    size: tuple[int, int] = (48, 64),
    passes: Sequence[str] = ("final",),
    cams: bool = True,
    depth: bool = True,
) -> Path:
    """The standard Sintel layout under ``root/training``; returns the first pass's image folder.

    Frame ``i`` (file ``frame_{i+1:04d}``): colour ``color_value(i)``, depth ``depth_m(i)``,
    intrinsics ``fixture_intrinsics(i)``, camera-to-world pose ``fixture_pose(i / 10)``.
    """
    h, w = size
    tr = root / "training"
    for i in range(n):
        stem = f"frame_{i + 1:04d}"
        for ps in passes:
            _png(tr / ps / sequence / f"{stem}.png", np.full((h, w, 3), color_value(i), np.uint8))
        if cams:
            write_cam(tr / "camdata_left" / sequence / f"{stem}.cam", fixture_intrinsics(i),
                      c2w_to_extrinsics(fixture_pose(i / 10)))
        if depth:
            write_dpt(tr / "depth" / sequence / f"{stem}.dpt", np.full((h, w), depth_m(i), np.float32))
    return tr / passes[0] / sequence


# ----------------------------------------------------------------------------- ROS bags
ROS_TOPICS = {"rgb": "/camera/color/image_raw", "depth": "/camera/depth/image_raw", "info": "/camera/color/camera_info"}


def write_rosbag_from_tum(tum_dir: Path, out: Path, ros: int = 2, storage: str = "sqlite3", color: str = "rgb8",
                          depth: Optional[str] = "32FC1", record_offset_ns: int = 1000) -> Path:
    """Write the frames of a TUM-layout folder (e.g. ``SyntheticSequence.write(..., format="tum")``) as a ROS bag.

    Colour, depth and ``camera_info`` (from ``intrinsics.txt``) on :data:`ROS_TOPICS` (colour on
    ``<rgb>/compressed`` for ``color="png"`` / ``"jpeg"``), each message's ``header.stamp`` the TUM
    timestamp, recorded ``record_offset_ns`` later. Depth: ``"32FC1"`` metres computed exactly as the
    TUM reader does (``raw / 5000`` in float32), ``"16UC1"`` the TUM PNG's raw values (read them back
    with ``source.depth_scale: 5000``), None for none.

    Args:
        ros: 1 (``out`` is a ``.bag`` file) or 2 (``out`` is the bag folder; ``storage`` ``sqlite3`` or ``mcap``).
        color: ``rgb8``, ``bgr8``, ``mono8``, ``png`` or ``jpeg``.

    Returns:
        ``out``.
    """
    from decimal import Decimal

    import cv2
    from rosbags.typesys import Stores, get_typestore

    from .common import read_intrinsics_txt
    from .tum import read_index

    store = get_typestore(Stores.ROS1_NOETIC if ros == 1 else Stores.ROS2_HUMBLE)
    T = store.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Image, Compressed, Info = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CompressedImage"], T["sensor_msgs/msg/CameraInfo"]
    ROI = T["sensor_msgs/msg/RegionOfInterest"]
    serialize = store.serialize_ros1 if ros == 1 else store.serialize_cdr

    def header(stamp: str, seq: int):
        ns = int(Decimal(stamp) * 1_000_000_000)
        kw = {"seq": seq} if ros == 1 else {}
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id="camera", **kw), ns

    tum_dir = Path(tum_dir)
    rgb_list = read_index(tum_dir / "rgb.txt")
    depth_list = read_index(tum_dir / "depth.txt") if depth else []
    K = read_intrinsics_txt(tum_dir / "intrinsics.txt")
    compressed = color in ("png", "jpeg")
    rgb_topic = ROS_TOPICS["rgb"] + ("/compressed" if compressed else "")
    messages = []  # (record time ns, topic, msg, msgtype)
    for seq, e in enumerate(rgb_list):
        bgr = cv2.imread(str(tum_dir / e.file), cv2.IMREAD_COLOR)
        h, ns = header(e.stamp_text, seq)
        if compressed:
            ok, buf = cv2.imencode(".png" if color == "png" else ".jpg", bgr)
            msg = Compressed(header=h, format=color, data=np.frombuffer(buf.tobytes(), np.uint8))
        else:
            img = {"rgb8": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "bgr8": bgr,
                   "mono8": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)}[color]
            ch = 1 if img.ndim == 2 else 3
            msg = Image(header=h, height=img.shape[0], width=img.shape[1], encoding=color, is_bigendian=0,
                        step=img.shape[1] * ch, data=np.ascontiguousarray(img).reshape(-1))
        messages.append((ns + record_offset_ns, rgb_topic, msg, msg.__msgtype__))
        if seq == 0 and K is not None:
            k = np.asarray(K, np.float64).reshape(-1)
            p = np.zeros(12)
            p[[0, 1, 2, 4, 5, 6, 10]] = [k[0], 0, k[2], 0, k[4], k[5], 1]
            mats = {"D": np.zeros(5), "K": k, "R": np.eye(3).reshape(-1), "P": p}
            if ros == 2:
                mats = {key.lower(): v for key, v in mats.items()}
            info = Info(header=h, height=bgr.shape[0], width=bgr.shape[1], distortion_model="plumb_bob",
                        binning_x=0, binning_y=0,
                        roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False), **mats)
            messages.append((ns + record_offset_ns, ROS_TOPICS["info"], info, info.__msgtype__))
    for seq, e in enumerate(depth_list):
        raw = cv2.imread(str(tum_dir / e.file), cv2.IMREAD_UNCHANGED)
        h, ns = header(e.stamp_text, seq)
        if depth == "32FC1":
            arr, step = raw.astype(np.float32) / np.float32(5000.0), raw.shape[1] * 4
        else:
            arr, step = raw.astype(np.uint16), raw.shape[1] * 2
        msg = Image(header=h, height=raw.shape[0], width=raw.shape[1], encoding=depth, is_bigendian=0, step=step,
                    data=np.frombuffer(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes(), np.uint8))
        messages.append((ns + record_offset_ns, ROS_TOPICS["depth"], msg, msg.__msgtype__))
    messages.sort(key=lambda m: m[0])

    out = Path(out)
    if ros == 1:
        from rosbags.rosbag1 import Writer as Writer1

        writer = Writer1(out)
    else:
        from rosbags.rosbag2 import StoragePlugin
        from rosbags.rosbag2 import Writer as Writer2

        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer2(out, version=9, storage_plugin=plugin)  # storage_plugin: rosbags >= 0.11
    with writer:
        conns = {}
        for _, topic, _, msgtype in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
        for t, topic, msg, msgtype in messages:
            writer.write(conns[topic], t, serialize(msg, msgtype))
    return out
