"""``source.type: rosbag``: ROS 1 and ROS 2 bags written with rosbags from a synthetic sequence.

The same frames in the TUM layout (written by the synthetic writer) are the reference: the bag
reader must hand out identical frames, and the app must compute the same trajectory from either.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from slam3r_app.config import SourceConfig, load_config  # noqa: E402
from slam3r_app.errors import BadFrameError, ConfigError, SourceError  # noqa: E402
from slam3r_app.frame_loop import run  # noqa: E402
from slam3r_app.trajectory import read_tum  # noqa: E402
from slam3r_datasets import make_source  # noqa: E402
from slam3r_datasets.ros_images import decode_color, decode_depth  # noqa: E402
from slam3r_datasets.rosbag import RosbagSource  # noqa: E402
from slam3r_datasets.synthetic import SyntheticSequence  # noqa: E402
from slam3r_datasets.testing import ROS_TOPICS, write_rosbag_from_tum  # noqa: E402
from slam3r_datasets.tum import TumSource  # noqa: E402

N = 10


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("rosbag")
    tum = SyntheticSequence(seed=1, frames=N).write(root / "tum", format="tum")
    return {
        "tum": tum,
        # ROS 2 (sqlite3): raw rgb8 colour, 32FC1 depth in metres
        "ros2": write_rosbag_from_tum(tum, root / "ros2_bag", ros=2, color="rgb8", depth="32FC1"),
        # ROS 1: PNG-compressed colour, 16UC1 depth in the TUM PNG's units (5000 per metre)
        "ros1": write_rosbag_from_tum(tum, root / "recording.bag", ros=1, color="png", depth="16UC1"),
        # ROS 2 (mcap): raw bgr8
        "mcap": write_rosbag_from_tum(tum, root / "mcap_bag", ros=2, storage="mcap", color="bgr8", depth="32FC1"),
    }


def _cfg(path: Path, **kw) -> SourceConfig:
    return SourceConfig(type="rosbag", path=str(path), rosbag_depth_topic=ROS_TOPICS["depth"], **kw)


@pytest.mark.parametrize("kind,extra", [("ros2", {}), ("ros1", {"depth_scale": 5000.0}), ("mcap", {})])
def test_bag_frames_equal_the_tum_frames(bags, kind, extra):
    ref = list(TumSource(bags["tum"]).frames())
    src = make_source(_cfg(bags[kind], **extra))
    assert isinstance(src, RosbagSource) and len(src) == N and src.has_depth
    frames = list(src.frames())
    assert len(frames) == N
    for a, b in zip(frames, ref):
        assert a.index == b.index and abs(a.timestamp - b.timestamp) < 1e-9
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.intrinsics, b.intrinsics)  # from camera_info
    info = src.info()
    assert info["camera_info_topic"] == ROS_TOPICS["info"] and info["frames_without_depth"] == 0


def test_a_ros2_bag_file_and_the_selection_keys(bags):
    db3 = next(bags["ros2"].glob("*.db3"))
    src = make_source(_cfg(db3, first=2, stride=3, max_frames=2))
    frames = list(src.frames())
    ref = list(TumSource(bags["tum"]).frames())
    assert [f.timestamp for f in frames] == pytest.approx([ref[2].timestamp, ref[5].timestamp], abs=1e-9)


def _run(cfg_source: dict, out: Path) -> tuple[np.ndarray, np.ndarray]:
    cfg = load_config("synthetic.yaml", overrides=["progress=false", "evaluation.enabled=false",
                                                   "fusion.enabled=false", "pointcloud.enabled=false"],
                      data={"source": cfg_source})
    result = run(cfg, output=str(out))
    assert result.frames_seen == N and not result.stopped_early, result.stop_reason
    return read_tum(out / "trajectory.txt")


#: Open3D's multi-threaded odometry is not bit-reproducible: two runs on the very same TUM folder differ
#: by 0.03-0.3 mm on an idle machine and up to ~3 mm on a loaded one (measured). The frames themselves
#: are checked bit for bit above; here the trajectories must agree within that noise, and both must
#: follow the renderer's true path.
RUN_TO_RUN = 1e-2


def test_the_app_tracks_a_bag_as_the_same_frames_in_the_tum_layout(bags, tmp_path):
    ref_t, ref = _run({"type": "tum", "path": str(bags["tum"])}, tmp_path / "tum")
    seq = SyntheticSequence(seed=1, frames=N)
    truth = np.stack([np.linalg.inv(seq.pose(0)) @ seq.pose(i) for i in range(N)])  # world = first camera
    assert np.abs(ref[:, :3, 3] - truth[:, :3, 3]).max() < RUN_TO_RUN
    for kind, extra in (("ros2", {}), ("ros1", {"depth_scale": 5000.0})):
        t, poses = _run({"type": "rosbag", "path": str(bags[kind]), "rosbag_depth_topic": ROS_TOPICS["depth"],
                         **extra}, tmp_path / kind)
        np.testing.assert_allclose(t, ref_t, atol=1e-9)
        np.testing.assert_allclose(poses, ref, atol=RUN_TO_RUN)
        assert np.abs(poses[:, :3, 3] - truth[:, :3, 3]).max() < RUN_TO_RUN
    assert np.linalg.norm(truth[-1][:3, 3]) > 5 * RUN_TO_RUN  # the camera moved: the comparison means something


def test_a_missing_topic_lists_the_bags_image_topics(bags):
    with pytest.raises(SourceError) as e:
        RosbagSource(bags["ros2"], rgb_topic="/camera/rgb/image_color")
    msg = str(e.value)
    assert "source.rosbag_rgb_topic '/camera/rgb/image_color'" in msg
    assert ROS_TOPICS["rgb"] in msg and ROS_TOPICS["depth"] in msg and f"{N} messages" in msg
    with pytest.raises(SourceError, match="rosbag_depth_topic '/depth'"):
        RosbagSource(bags["ros2"], depth_topic="/depth")
    with pytest.raises(SourceError, match="CameraInfo topics: " + ROS_TOPICS["info"]):
        RosbagSource(bags["ros2"], camera_info_topic="/nope")


def test_path_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="source.path.*ROS bag not found"):
        make_source(SourceConfig(type="rosbag", path=str(tmp_path / "x.bag")))
    (tmp_path / "folder").mkdir()
    with pytest.raises(SourceError, match="metadata.yaml"):
        RosbagSource(tmp_path / "folder")
    with pytest.raises(ConfigError, match="needs source.path"):
        make_source(SourceConfig(type="rosbag"))


def test_without_rosbags_the_message_says_what_to_install(monkeypatch, bags):
    import builtins

    real = builtins.__import__

    def no_rosbags(name, *a, **k):
        if name.startswith("rosbags"):
            raise ImportError("No module named 'rosbags'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_rosbags)
    with pytest.raises(SourceError, match=r"pip install 'slam3r\[ros\]'"):
        RosbagSource(bags["ros2"])


# ----------------------------------------------------------------------------- message decoding
def _img(arr: np.ndarray, encoding: str, big: bool = False, pad: int = 0) -> SimpleNamespace:
    a = np.ascontiguousarray(arr)
    if big:
        a = a.astype(a.dtype.newbyteorder(">"))
    h, w = a.shape[:2]
    row = a.reshape(h, -1).view(np.uint8)
    data = np.concatenate([row, np.zeros((h, pad), np.uint8)], axis=1).reshape(-1)
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(big), step=row.shape[1] + pad, data=data)


def test_colour_encodings():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    T = "sensor_msgs/msg/Image"
    np.testing.assert_array_equal(decode_color(_img(rgb, "rgb8", pad=3), T, "x"), rgb)
    np.testing.assert_array_equal(decode_color(_img(rgb[..., ::-1], "bgr8"), T, "x"), rgb)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_color(_img(rgba, "rgba8"), T, "x"), rgb)
    grey = decode_color(_img(rgb[..., 0], "mono8"), T, "x")
    assert grey.shape == (4, 5, 3) and (grey[..., 2] == rgb[..., 0]).all()
    with pytest.raises(BadFrameError, match="'yuv422'.*rgb8"):
        decode_color(_img(rgb, "yuv422"), T, "x")
    with pytest.raises(BadFrameError, match="step"):
        bad = _img(rgb, "rgb8")
        bad.step = 5
        decode_color(bad, T, "x")


def test_depth_encodings():
    T = "sensor_msgs/msg/Image"
    mm = np.array([[0, 1000], [1500, 65535]], np.uint16)
    np.testing.assert_allclose(decode_depth(_img(mm, "16UC1"), T, "d"), mm / 1000.0, rtol=1e-7)  # ROS: millimetres
    np.testing.assert_allclose(decode_depth(_img(mm, "16UC1", big=True), T, "d"), mm / 1000.0, rtol=1e-7)
    np.testing.assert_allclose(decode_depth(_img(mm, "16UC1"), T, "d", depth_scale=5000.0), mm / 5000.0, rtol=1e-7)
    m = np.array([[1.5, np.nan], [-1.0, np.inf]], np.float32)
    np.testing.assert_array_equal(decode_depth(_img(m, "32FC1"), T, "d"), [[1.5, 0.0], [0.0, 0.0]])
    import cv2

    ok, png = cv2.imencode(".png", mm)
    header = np.zeros(12, np.uint8)
    msg = SimpleNamespace(format="16UC1; compressedDepth png", data=np.concatenate([header, png.reshape(-1)]))
    np.testing.assert_allclose(decode_depth(msg, "sensor_msgs/msg/CompressedImage", "d"), mm / 1000.0, rtol=1e-7)
    with pytest.raises(BadFrameError, match="'8UC3'"):
        decode_depth(_img(np.zeros((2, 2, 3), np.uint8), "8UC3"), T, "d")
