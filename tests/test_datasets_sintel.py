"""Sintel reader and the binary .cam / .dpt formats, checked against independently packed bytes."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_datasets import SintelSource, read_cam, read_dpt, write_cam, write_dpt
from slam3r_datasets.testing import color_value, depth_m, fixture_intrinsics, fixture_pose, write_sintel_fixture


# ----------------------------------------------------------------------------- binary formats
def _pack_cam(K, E) -> bytes:
    """What the Sintel SDK writes: 'PIEH', then 9 + 12 little-endian float64, row-major."""
    return b"PIEH" + struct.pack("<9d", *np.asarray(K).ravel()) + struct.pack("<12d", *np.asarray(E).ravel())


def _pack_dpt(depth) -> bytes:
    h, w = depth.shape
    return b"PIEH" + struct.pack("<ii", w, h) + struct.pack(f"<{w * h}f", *np.asarray(depth).ravel())


def test_tag_is_pieh():
    assert struct.unpack("<f", b"PIEH")[0] == 202021.25


def test_cam_read_write_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    K = np.array([[1120.0, 0.0, 511.5], [0.0, 1120.0, 217.5], [0.0, 0.0, 1.0]])
    E = rng.normal(size=(3, 4))
    p = tmp_path / "a.cam"
    p.write_bytes(_pack_cam(K, E))
    K2, E2 = read_cam(p)
    np.testing.assert_array_equal(K2, K)
    np.testing.assert_array_equal(E2, E)
    q = tmp_path / "b.cam"
    write_cam(q, K, E)
    assert q.read_bytes() == _pack_cam(K, E)
    assert len(q.read_bytes()) == 172
    write_cam(q, K, np.vstack([E, [0, 0, 0, 1]]))  # 4x4 accepted
    assert q.read_bytes() == _pack_cam(K, E)


def test_dpt_read_write_round_trip(tmp_path):
    depth = (np.arange(12, dtype=np.float32).reshape(3, 4) + 0.25) * 1.5
    p = tmp_path / "a.dpt"
    p.write_bytes(_pack_dpt(depth))
    d = read_dpt(p)
    assert d.dtype == np.float32 and d.shape == (3, 4)
    np.testing.assert_array_equal(d, depth)
    assert d[1, 2] == depth[1, 2] == np.float32((6 + 0.25) * 1.5)  # row-major: row 1, column 2
    q = tmp_path / "b.dpt"
    write_dpt(q, depth)
    assert q.read_bytes() == _pack_dpt(depth)


def test_cam_dpt_corrupt_files(tmp_path):
    p = tmp_path / "x.cam"
    p.write_bytes(b"PIEH" + b"\0" * 20)
    with pytest.raises(SourceError, match=r"x.cam: truncated .cam file \(24 bytes, expected 172\)"):
        read_cam(p)
    p.write_bytes(struct.pack("<f", 1.0) + b"\0" * 168)
    with pytest.raises(SourceError, match=r"x.cam: not a Sintel .cam file \(tag 1.0"):
        read_cam(p)
    with pytest.raises(SourceError, match="cannot read camera file"):
        read_cam(tmp_path / "missing.cam")
    d = tmp_path / "x.dpt"
    d.write_bytes(b"PIEH" + struct.pack("<ii", 4, 3) + b"\0" * 8)
    with pytest.raises(SourceError, match=r"x.dpt: truncated .dpt file \(20 bytes, expected 60 for 4x3\)"):
        read_dpt(d)
    d.write_bytes(b"PIEH" + struct.pack("<ii", -4, 3))
    with pytest.raises(SourceError, match="implausible .dpt size -4x3"):
        read_dpt(d)


# ----------------------------------------------------------------------------- reader
def _check_frames(frames, indices):
    for k, (f, i) in enumerate(zip(frames, indices)):
        assert f.index == k and f.timestamp == float(i)
        assert int(f.rgb[0, 0, 0]) == color_value(i)
        assert f.depth.dtype == np.float32 and f.depth[3, 3] == np.float32(depth_m(i))
        np.testing.assert_array_equal(f.intrinsics, fixture_intrinsics(i))
        # GT: inverse of the world-to-camera extrinsics, computed here independently
        E = np.linalg.inv(fixture_pose(i / 10))[:3]
        R, t = E[:, :3], E[:, 3]
        expect = np.eye(4)
        expect[:3, :3], expect[:3, 3] = R.T, -R.T @ t
        np.testing.assert_allclose(f.gt_pose, expect, atol=1e-12)
        np.testing.assert_allclose(f.gt_pose, fixture_pose(i / 10), atol=1e-12)


def test_sintel_standard_layout_all_path_forms(tmp_path):
    img_dir = write_sintel_fixture(tmp_path / "sintel", sequence="alley_9", n=6)
    for path in (img_dir, tmp_path / "sintel" / "alley_9", tmp_path / "sintel", tmp_path / "sintel" / "training"):
        src = SintelSource(path)
        assert len(src) == 6 and src.has_gt and src.has_depth, path
        assert src.name == "sintel:alley_9"
        _check_frames(list(src.frames()), range(6))


def test_sintel_first_stride_max_frames(tmp_path):
    img_dir = write_sintel_fixture(tmp_path / "s", n=10)
    src = SintelSource(img_dir, first=1, stride=3, max_frames=3)
    _check_frames(list(src.frames()), [1, 4, 7])
    with pytest.raises(SourceError, match="no frames selected: first=10"):
        SintelSource(img_dir, first=10)


def test_sintel_passes(tmp_path):
    write_sintel_fixture(tmp_path / "s", sequence="cave_2", n=3, passes=("final", "clean"))
    assert SintelSource(tmp_path / "s" / "cave_2", sintel_pass="clean").layout.images.parent.name == "clean"
    assert SintelSource(tmp_path / "s" / "cave_2").layout.images.parent.name == "final"
    # only 'clean' on disk: falls back to it
    write_sintel_fixture(tmp_path / "c", sequence="cave_2", n=3, passes=("clean",))
    src = SintelSource(tmp_path / "c" / "cave_2", sintel_pass="final")
    assert src.layout.image_pass == "clean" and len(src) == 3
    with pytest.raises(SourceError, match="sintel_pass must be one of final, clean"):
        SintelSource(tmp_path / "c" / "cave_2", sintel_pass="albedo")


def test_sintel_flat_folder_and_no_cams(tmp_path):
    img_dir = write_sintel_fixture(tmp_path / "s", n=3, cams=False, depth=False)
    src = SintelSource(img_dir)
    assert not src.has_gt and not src.has_depth
    f = next(src.frames())
    assert f.gt_pose is None and f.depth is None and f.intrinsics is None
    f = next(SintelSource(img_dir, intrinsics=[10, 11, 12, 13]).frames())
    np.testing.assert_array_equal(f.intrinsics, [[10, 0, 12], [0, 11, 13], [0, 0, 1]])
    # flat: everything side by side
    flat = tmp_path / "flat"
    flat.mkdir()
    tr = write_sintel_fixture(tmp_path / "t", n=2).parent.parent  # training/
    for sub in ("final/alley_9", "camdata_left/alley_9", "depth/alley_9"):
        for p in (tr / sub).iterdir():
            (flat / p.name).write_bytes(p.read_bytes())
    _check_frames(list(SintelSource(flat).frames()), range(2))


def test_sintel_bad_paths(tmp_path):
    with pytest.raises(SourceError, match="sintel sequence folder not found"):
        SintelSource(tmp_path / "nope" / "seq")
    write_sintel_fixture(tmp_path / "s", sequence="a", n=2)
    write_sintel_fixture(tmp_path / "s", sequence="b", n=2)
    with pytest.raises(SourceError, match=r"holds 2 Sintel sequences.*sequences: a, b"):
        SintelSource(tmp_path / "s")
    with pytest.raises(SourceError, match=r"Sintel sequence 'zzz' not found .*sequences: a, b"):
        SintelSource(tmp_path / "s" / "zzz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no Sintel frames found"):
        SintelSource(tmp_path / "empty")


def test_sintel_bad_frames(tmp_path):
    img_dir = write_sintel_fixture(tmp_path / "s", n=5)
    tr = img_dir.parent.parent
    (tr / "camdata_left" / "alley_9" / "frame_0002.cam").unlink()
    (tr / "depth" / "alley_9" / "frame_0003.dpt").write_bytes(b"PIEH\x01")
    write_dpt(tr / "depth" / "alley_9" / "frame_0004.dpt", np.ones((10, 10), np.float32))
    items = list(SintelSource(img_dir)._iter_raw())
    assert [isinstance(x, BadFrameError) for x in items] == [False, True, True, True, False]
    assert "frame_0002.cam" in str(items[1]) and "cannot read camera file" in str(items[1])
    assert "frame_0003.dpt" in str(items[2]) and "truncated" in str(items[2])
    assert "frame_0004.dpt" in str(items[3]) and "10x10" in str(items[3]) and "64x48" in str(items[3])
    frames = list(SintelSource(img_dir).frames(on_bad_frame="skip"))
    assert [f.timestamp for f in frames] == [0.0, 4.0]


def test_sintel_invalid_depth_becomes_zero(tmp_path):
    img_dir = write_sintel_fixture(tmp_path / "s", n=1)
    d = np.full((48, 64), 2.0, np.float32)
    d[0, 0], d[0, 1], d[0, 2] = np.nan, np.inf, -1.0
    write_dpt(img_dir.parent.parent / "depth" / "alley_9" / "frame_0001.dpt", d)
    f = next(SintelSource(img_dir).frames())
    assert list(f.depth[0, :4]) == [0.0, 0.0, 0.0, 2.0]
