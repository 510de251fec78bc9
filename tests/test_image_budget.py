"""Issue 20, case 3: an image's size is read from its header before it is decoded.

A 10000x10000 PNG of 300 kB decodes to 300 MB (and more on its way through the frontend); a ROS
bag message of 424 kB to 1.2 GB. ``source.max_image_pixels`` (default 50 megapixels) bounds what a
reader decodes: PNG and JPEG headers are read by hand, other formats through Pillow's lazy open,
raw ROS images by their ``width`` / ``height`` fields. A larger image is a bad frame naming the
file or message (``on_bad_frame`` decides: stop or skip), and nothing is decoded.
"""
from __future__ import annotations

import io
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_datasets import common as dcommon
from slam3r_datasets import make_source
from slam3r_datasets.common import DEFAULT_MAX_IMAGE_PIXELS, image_size


def big_png(width: int, height: int) -> bytes:
    """A valid, all-black RGB PNG of any size, made without holding its pixels (streamed zlib)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + 3 * width)
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(height)] + [z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _jpeg(width: int, height: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))
    assert ok
    return buf.tobytes()


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if OpenCV is asked to decode an image larger than the budget."""
    import cv2

    real = cv2.imdecode
    calls = []

    def guarded(buf, flags):
        size = image_size(np.asarray(buf, np.uint8)[:65536].tobytes())
        calls.append(size)
        if size is not None and size[0] * size[1] > dcommon.max_image_pixels():
            raise AssertionError(f"an image of {size} was decoded")
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", guarded)
    yield calls
    dcommon.set_max_image_pixels(None)


def test_header_sizes_without_decoding():
    assert image_size(big_png(12345, 678)[:100]) == (12345, 678)
    assert image_size(_jpeg(321, 123)) == (321, 123)
    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (77, 55)).save(b, format="BMP")
    assert image_size(b.getvalue()) == (77, 55)
    assert image_size(b"not an image") is None


def test_a_folder_of_huge_pngs_is_refused_frame_by_frame(tmp_path, no_decoding):
    folder = tmp_path / "frames"
    folder.mkdir()
    data = big_png(10_000, 10_000)  # 100 megapixels
    assert len(data) < 400_000
    for i in range(3):
        (folder / f"{i:04d}.png").write_bytes(data)
    src = make_source({"type": "folder", "path": str(folder), "intrinsics": [500, 500, 320, 240]})
    assert dcommon.max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS
    with pytest.raises(SourceError) as exc:
        list(src.frames(on_bad_frame="stop"))
    msg = str(exc.value)
    assert "0000.png" in msg and "10000x10000 (100.0 megapixels), more than source.max_image_pixels (50 megapixels)" in msg
    assert not list(src.frames(on_bad_frame="skip"))  # every frame skipped, none decoded
    assert len(src.skipped) == 3


def test_the_budget_is_a_config_key(tmp_path, no_decoding):
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "0000.png"), np.zeros((480, 640, 3), np.uint8))
    src = make_source({"type": "folder", "path": str(folder), "intrinsics": [500, 500, 320, 240],
                       "max_image_pixels": 640 * 480})
    assert len(list(src.frames())) == 1
    src = make_source({"type": "folder", "path": str(folder), "intrinsics": [500, 500, 320, 240],
                       "max_image_pixels": 640 * 480 - 1})
    with pytest.raises(SourceError, match="640x480"):
        list(src.frames())


def test_tum_depth_pngs_are_bounded_too(tmp_path, no_decoding):
    from slam3r_datasets.synthetic import SyntheticSequence

    seq = SyntheticSequence(seed=1, frames=3, width=64, height=48).write(tmp_path / "tum", format="tum")
    depth = sorted((seq / "depth").glob("*.png"))[1]
    depth.write_bytes(big_png(9000, 9000))
    src = make_source({"type": "tum", "path": str(seq)})
    frames = list(src.frames(on_bad_frame="skip"))
    assert len(frames) == 2
    assert len(src.skipped) == 1 and "max_image_pixels" in src.skipped[0][1] and depth.name in src.skipped[0][1]


def _msg(**kw) -> SimpleNamespace:
    return SimpleNamespace(**kw)


def test_ros_messages_are_checked_before_decoding(no_decoding):
    from slam3r_datasets.ros_images import decode_color, decode_depth

    huge = big_png(20_000, 20_000)
    assert len(huge) < 1_300_000
    with pytest.raises(BadFrameError, match=r"rgb #3: the image is 20000x20000 \(400.0 megapixels\)"):
        decode_color(_msg(format="png", data=np.frombuffer(huge, np.uint8)), "sensor_msgs/msg/CompressedImage",
                     "rgb #3")
    # a raw Image that claims a huge size: refused by its fields, before its data is looked at
    with pytest.raises(BadFrameError, match="20000x20000"):
        decode_color(_msg(height=20_000, width=20_000, step=60_000, encoding="rgb8", is_bigendian=0,
                          data=np.zeros(16, np.uint8)), "sensor_msgs/msg/Image", "rgb #4")
    with pytest.raises(BadFrameError, match="20000x20000"):
        decode_depth(_msg(format="16UC1; compressedDepth png", data=np.frombuffer(b"\0" * 12 + huge, np.uint8)),
                     "sensor_msgs/msg/CompressedImage", "depth #5")
    # an ordinary message still decodes
    import cv2

    ok, png = cv2.imencode(".png", np.full((48, 64, 3), 7, np.uint8))
    rgb = decode_color(_msg(format="png", data=png.reshape(-1)), "sensor_msgs/msg/CompressedImage", "rgb #0")
    assert rgb.shape == (48, 64, 3) and int(rgb[0, 0, 0]) == 7


TINY = ("model.arch={img_size: 28, embed_dim: 16, depth: 1, num_heads: 2, patch_embed: conv, camera_trunk_depth: 1, "
        "camera_num_heads: 2, dpt_features: 8, dpt_out_channels: [4, 8, 8, 8], dpt_intermediate_layers: [0, 0, 0, 0]}")


def test_a_cli_run_on_huge_frames_ends_in_one_line(tmp_path):
    from tests.cli_helpers import cli

    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "0000.png").write_bytes(big_png(10_000, 10_000))
    p = cli(["--config", "folder.yaml", "--set", f"source.path={folder}", "--set", "source.intrinsics=[500,500,320,240]",
             "--set", "model.random_weights=true", "--set", TINY, "--set", "disable=[fusion,pointcloud,viewer]",
             "--set", "progress=false", "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "0000.png" in err[0] and "max_image_pixels" in err[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr
