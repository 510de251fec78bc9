"""TUM RGB-D and Bonn readers on fixture sequences the tests write (plus the shipped sample)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.trajectory import read_tum
from slam3r_datasets import BonnSource, TumSource, tum_intrinsics_for
from slam3r_datasets.testing import color_value, depth_m, write_tum_fixture

T0, FPS = 1000.0, 30.0


def _raw(src):
    return list(src._iter_raw())


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    assert cv2.imwrite(str(path), img)


# ----------------------------------------------------------------------------- association
def test_tum_pairs_colour_depth_and_100hz_gt(tmp_path):
    root = write_tum_fixture(tmp_path / "rgbd_dataset_freiburg2_xyz", n=12, depth_jitter=0.009, gt_rate=100.0)
    src = TumSource(root)
    assert len(src) == 12 and src.has_depth and src.has_gt
    gt_t, gt_poses = read_tum(root / "groundtruth.txt")
    frames = list(src.frames())
    for k, f in enumerate(frames):
        assert f.index == k
        assert f.timestamp == pytest.approx(T0 + k / FPS, abs=1e-6)
        assert f.rgb.dtype == np.uint8 and f.rgb.shape == (48, 64, 3)
        assert int(f.rgb[0, 0, 0]) == color_value(k)  # colour frame k
        assert f.depth.dtype == np.float32
        assert f.depth[5, 5] == pytest.approx(depth_m(k), abs=1e-4)  # its own depth despite 9 ms jitter
        j = int(np.argmin(np.abs(gt_t - f.timestamp)))  # nearest 100 Hz pose, independently
        assert abs(gt_t[j] - f.timestamp) <= 0.0051
        np.testing.assert_allclose(f.gt_pose, gt_poses[j], atol=1e-9)
        assert f.gt_pose.shape == (4, 4) and f.gt_pose.dtype == np.float64
    K = frames[0].intrinsics
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (520.9, 521.0, 325.1, 249.7)  # freiburg2


def test_tum_max_time_diff_controls_association(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=8, depth_jitter=0.009, seed=3)
    d = np.array([float(ln.split()[0]) for ln in (root / "depth.txt").read_text().splitlines() if not ln.startswith("#")])
    r = T0 + np.arange(8) / FPS
    expect = int(np.sum(np.abs(d - r) < 0.005))
    assert 0 < expect < 8
    src = TumSource(root, max_time_diff=0.005)
    assert len(src) == expect
    assert src.info()["frames_without_depth"] == 8 - expect
    with pytest.raises(SourceError, match="no colour frame has a depth frame within 1e-05 s"):
        TumSource(root, max_time_diff=1e-5)


def test_tum_gt_sparser_than_frames_and_partial(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=10, gt_rate=None)
    # GT only for the first half of the sequence
    from slam3r_app.trajectory import format_tum
    from slam3r_datasets.testing import fixture_pose

    ts = T0 + np.arange(5) / FPS + 0.003
    (root / "groundtruth.txt").write_text(format_tum(ts, np.stack([fixture_pose(t - T0) for t in ts])))
    src = TumSource(root)
    frames = list(src.frames())
    assert [f.gt_pose is not None for f in frames] == [True] * 5 + [False] * 5
    assert src.info()["frames_without_gt"] == 5
    assert src.has_gt


def test_tum_without_gt_or_depth(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=4, gt_rate=None)
    src = TumSource(root)
    assert not src.has_gt and all(f.gt_pose is None for f in src.frames())
    (root / "depth.txt").unlink()
    src = TumSource(root)
    assert not src.has_depth and all(f.depth is None for f in src.frames())
    src = TumSource(write_tum_fixture(tmp_path / "seq2", n=4), use_depth=False)
    assert not src.has_depth and len(src) == 4


# ----------------------------------------------------------------------------- options
def test_tum_first_stride_max_frames(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=20)
    src = TumSource(root, first=3, stride=4, max_frames=3)
    frames = list(src.frames())
    assert len(src) == 3 and [f.index for f in frames] == [0, 1, 2]
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [color_value(i) for i in (3, 7, 11)]
    assert [f.timestamp for f in frames] == pytest.approx([T0 + i / FPS for i in (3, 7, 11)], abs=1e-6)
    with pytest.raises(SourceError, match="no frames selected: first=25 but the sequence has 20"):
        TumSource(root, first=25)
    with pytest.raises(SourceError, match="stride >= 1"):
        TumSource(root, stride=0)


def test_tum_depth_scale_override(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=3, depth_scale=1000.0)
    f = next(TumSource(root, depth_scale=1000.0).frames())
    assert f.depth[0, 0] == pytest.approx(depth_m(0), abs=1e-6)
    f = next(TumSource(root).frames())  # default 5000: five times smaller
    assert f.depth[0, 0] == pytest.approx(depth_m(0) / 5.0, abs=1e-6)


@pytest.mark.parametrize("name,expect", [
    ("rgbd_dataset_freiburg1_desk", (517.3, 516.5, 318.6, 255.3)),
    ("rgbd_dataset_freiburg2_xyz", (520.9, 521.0, 325.1, 249.7)),
    ("rgbd_dataset_freiburg3_walking_xyz", (535.4, 539.2, 320.1, 247.6)),
    ("tum_fr1_rpy", (517.3, 516.5, 318.6, 255.3)),
    ("my_kinect_recording", (525.0, 525.0, 319.5, 239.5)),
])
def test_tum_intrinsics_from_folder_name(tmp_path, name, expect):
    assert tum_intrinsics_for(Path("/x") / name)[1] == expect
    root = write_tum_fixture(tmp_path / name, n=2)
    K = next(TumSource(root).frames()).intrinsics
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == expect


def test_tum_intrinsics_override_and_file(tmp_path):
    root = write_tum_fixture(tmp_path / "rgbd_dataset_freiburg1_x", n=2)
    (root / "intrinsics.txt").write_text("# fx fy cx cy\n100 101 30.5 22.5\n")
    src = TumSource(root)
    K = next(src.frames()).intrinsics
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (100, 101, 30.5, 22.5)
    assert "intrinsics.txt" in src.info()["intrinsics_from"]
    K = next(TumSource(root, intrinsics=[1, 2, 3, 4]).frames()).intrinsics
    np.testing.assert_array_equal(K, [[1, 0, 3], [0, 2, 4], [0, 0, 1]])
    (root / "intrinsics.txt").write_text("100 101 30.5\n")
    with pytest.raises(SourceError, match=r"intrinsics.txt:1: expected 4 numbers"):
        TumSource(root)


# ----------------------------------------------------------------------------- bad input
def test_tum_missing_folder_and_not_a_sequence(tmp_path):
    with pytest.raises(SourceError, match="tum sequence folder not found: .*nope"):
        TumSource(tmp_path / "nope")
    write_tum_fixture(tmp_path / "data" / "rgbd_dataset_freiburg1_a", n=2)
    with pytest.raises(SourceError, match="no rgb.txt here.*sequences found in it: rgbd_dataset_freiburg1_a"):
        TumSource(tmp_path / "data")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SourceError, match="got a file"):
        TumSource(f)


def test_tum_empty_sequence(tmp_path):
    root = tmp_path / "seq"
    root.mkdir()
    (root / "rgb.txt").write_text("# color images\n# timestamp filename\n")
    with pytest.raises(SourceError, match=r"rgb.txt: lists no frames \(empty sequence\)"):
        TumSource(root)


def test_tum_malformed_index_and_gt(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=3)
    good = (root / "rgb.txt").read_text()
    (root / "rgb.txt").write_text(good + "notanumber rgb/x.png\n")
    with pytest.raises(SourceError, match=r"rgb.txt:6: timestamp is not a number"):
        TumSource(root)
    (root / "rgb.txt").write_text(good + "1234.5\n")
    with pytest.raises(SourceError, match=r"rgb.txt:6: expected 'timestamp filename'"):
        TumSource(root)
    (root / "rgb.txt").write_text(good)
    with open(root / "groundtruth.txt", "a") as f:
        f.write("1000.5 1 2 3 0 0 0\n")
    with pytest.raises(SourceError, match=r"groundtruth.txt:\d+: expected 8 values"):
        TumSource(root)


def test_tum_count_mismatch_reports_frames_without_depth(tmp_path, caplog):
    root = write_tum_fixture(tmp_path / "seq", n=10, depth_indices=[0, 1, 2, 3, 5, 6, 8])
    with caplog.at_level(logging.WARNING, logger="slam3r"):
        src = TumSource(root)
    assert len(src) == 7
    assert src.info()["frames_without_depth"] == 3
    msg = caplog.text
    assert "rgb.txt lists 10 colour frames and depth.txt 7 depth frames" in msg
    assert "3 colour frame(s) without depth (left out)" in msg
    assert [int(f.rgb[0, 0, 0]) for f in src.frames()] == [color_value(i) for i in (0, 1, 2, 3, 5, 6, 8)]
    # keep them, without depth
    src = TumSource(root, require_depth=False)
    frames = list(src.frames())
    assert len(frames) == 10 and [f.depth is None for f in frames].count(True) == 3


def test_tum_corrupt_and_missing_image_mid_sequence(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=6)
    rgb_files = sorted((root / "rgb").iterdir())
    rgb_files[2].write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    rgb_files[4].unlink()
    items = _raw(TumSource(root))
    assert [type(x).__name__ for x in items] == ["Frame", "Frame", "BadFrameError", "Frame", "BadFrameError", "Frame"]
    assert str(rgb_files[2]) in str(items[2]) and "cannot decode image" in str(items[2])
    assert "image file not found" in str(items[4]) and "rgb.txt:7" in str(items[4])
    src = TumSource(root)
    frames = list(src.frames(on_bad_frame="skip"))
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [color_value(i) for i in (0, 1, 3, 5)]
    assert len(src.skipped) == 2 and src.skipped[0][0] == str(rgb_files[2])
    with pytest.raises(SourceError, match=f"{rgb_files[2].name}.*cannot decode image.*on_bad_frame: skip"):
        list(TumSource(root).frames(on_bad_frame="stop"))


def test_tum_corrupt_or_8bit_depth(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=4)
    depth_files = sorted((root / "depth").iterdir())
    depth_files[1].write_bytes(b"garbage")
    _write_png(depth_files[2], np.zeros((48, 64), np.uint8))
    items = _raw(TumSource(root))
    assert isinstance(items[1], BadFrameError) and "cannot decode depth image" in str(items[1])
    assert isinstance(items[2], BadFrameError) and "expected a 16-bit single-channel depth PNG" in str(items[2])
    assert str(depth_files[2]) in str(items[2])


def test_tum_frame_of_another_size_mid_stream(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=5)
    rgb3 = sorted((root / "rgb").iterdir())[3]
    _write_png(rgb3, np.zeros((40, 64, 3), np.uint8))
    items = _raw(TumSource(root))
    err = items[3]
    assert isinstance(err, BadFrameError)
    assert str(rgb3) in str(err) and "64x40" in str(err) and "64x48" in str(err)
    assert all(not isinstance(x, BadFrameError) for k, x in enumerate(items) if k != 3)


def test_tum_depth_of_another_size_than_colour(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=4)
    depth_files = sorted((root / "depth").iterdir())
    for p in depth_files:
        _write_png(p, np.full((24, 32), 5000, np.uint16))
    with pytest.raises(SourceError, match=r"depth .* is 32x24 but colour .* is 64x48.*registered"):
        TumSource(root)
    # only one mid-stream: that frame is bad, the rest is fine
    root = write_tum_fixture(tmp_path / "seq2", n=4)
    d2 = sorted((root / "depth").iterdir())[2]
    _write_png(d2, np.full((24, 32), 5000, np.uint16))
    items = _raw(TumSource(root))
    assert isinstance(items[2], BadFrameError) and str(d2) in str(items[2]) and "32x24" in str(items[2])


# ----------------------------------------------------------------------------- shipped sample, Bonn
def test_shipped_tum_sample():
    src = TumSource("sample:tum_fr1_rpy")
    assert len(src) == 75 and src.has_depth and src.has_gt
    info = src.info()
    assert info["frames_without_depth"] == 0 and info["frames_without_gt"] == 0
    assert info["intrinsics"] == [517.3, 516.5, 318.6, 255.3]
    f = next(src.frames())
    assert f.rgb.shape == (480, 640, 3) and f.depth.shape == (480, 640)
    assert 0.3 < np.median(f.depth[f.depth > 0]) < 5.0
    here = Path(src.path)
    assert (here / "SOURCE.md").is_file() and "CC BY 4.0" in (here / "SOURCE.md").read_text()
    size = sum(p.stat().st_size for p in here.rglob("*") if p.is_file())
    assert size < 15_000_000


def test_unknown_sample_lists_the_shipped_ones():
    with pytest.raises(SourceError, match=r"no shipped sample named 'nope'.*available: .*tum_fr1_rpy"):
        TumSource("sample:nope")


def test_bonn_reader_uses_bonn_intrinsics(tmp_path):
    root = write_tum_fixture(tmp_path / "rgbd_bonn_crowd", n=5, gt_rate=30.0)
    src = BonnSource(root)
    f = next(src.frames())
    assert (f.intrinsics[0, 0], f.intrinsics[1, 1], f.intrinsics[0, 2], f.intrinsics[1, 2]) == (
        542.822841, 542.576870, 315.593520, 237.756098)
    assert f.depth[0, 0] == pytest.approx(depth_m(0), abs=1e-4)
    assert src.name == "bonn:rgbd_bonn_crowd" and len(src) == 5 and src.has_gt
    with pytest.raises(SourceError, match="bonn sequence folder not found"):
        BonnSource(tmp_path / "missing")


def test_bonn_ground_truth_is_the_colour_cameras_pose(tmp_path):
    """groundtruth.txt is the marker's pose; frames carry G @ T_ros @ T_m (the dataset page's transforms),
    its rotation projected onto SO(3) -- here by scipy's nearest rotation, independently of the reader."""
    from scipy.spatial.transform import Rotation

    root = write_tum_fixture(tmp_path / "rgbd_bonn_crowd", n=4, gt_rate=30.0)
    t_ros = np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    t_m = np.array([[1.0157, 0.1828, -0.2389, 0.0113], [0.0009, -0.8431, -0.6413, -0.0098],
                    [-0.3009, 0.6147, -0.8085, 0.0111], [0, 0, 0, 1]])
    x = t_ros @ t_m
    x[:3, :3] = Rotation.from_matrix(x[:3, :3]).as_matrix()
    marker = [f.gt_pose for f in TumSource(root, distortion="none").frames()]  # TUM: the file's poses as they are
    camera = [f.gt_pose for f in BonnSource(root).frames()]
    assert len(marker) == len(camera) == 4
    for g, c in zip(marker, camera):
        np.testing.assert_allclose(c, g @ x, atol=1e-9)
        np.testing.assert_allclose(c[:3, :3] @ c[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.norm(x[:3, 3]) == pytest.approx(0.0184, abs=5e-4)  # the marker-to-camera offset


BONN = Path("/work/shared/data/bonn/rgbd_bonn_crowd")


@pytest.mark.skipif(not (BONN / "rgb.txt").is_file(), reason=f"Bonn test data not present at {BONN}")
def test_bonn_real_chunk():
    src = BonnSource(BONN, max_frames=5)
    frames = list(src.frames())
    assert len(frames) == 5 and all(f.depth is not None and f.gt_pose is not None for f in frames)
    assert frames[0].rgb.shape == (480, 640, 3)
    assert BonnSource(BONN).info()["frames_without_depth"] == 0


def test_tum_sample_copy_can_be_read_from_anywhere(tmp_path):
    # relative file names in rgb.txt are resolved against the sequence folder, not the cwd
    src_dir = Path(TumSource("sample:tum_fr1_rpy").path)
    dst = tmp_path / "copy_fr1"
    dst.mkdir()
    for name in ("rgb.txt", "depth.txt", "groundtruth.txt"):
        shutil.copy(src_dir / name, dst / name)
    (dst / "rgb").symlink_to(src_dir / "rgb")
    (dst / "depth").symlink_to(src_dir / "depth")
    src = TumSource(dst, max_frames=2)
    assert len(list(src.frames())) == 2
