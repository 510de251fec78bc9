"""The perceptual-aliasing hall: identical bays render identically; the geometry oracle still tells them apart."""
from __future__ import annotations

import numpy as np
import pytest

from slam3r_app.errors import SourceError
from slam3r_datasets import AliasingScene, SyntheticSequence
from slam3r_datasets.synthetic import default_intrinsics, look_at
from slam3r_datasets.synthetic_truth import SequenceTruth

W, H = 64, 48
K = default_intrinsics(W, H)


def _unproject(depth, K, c2w):
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    pc = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=1)
    return pc @ c2w[:3, :3].T + c2w[:3, 3]


def _same_image(a, b):
    rgb_a, d_a = a
    rgb_b, d_b = b
    np.testing.assert_allclose(d_a, d_b, atol=1e-4)
    diff = np.abs(rgb_a.astype(int) - rgb_b.astype(int))
    assert diff.max() <= 2 and (diff > 0).any(axis=-1).mean() < 0.002  # float rounding at most


def test_the_same_view_of_two_bays_is_the_same_image():
    scene = AliasingScene(seed=3)
    P = scene.bay_width
    Wh, Hh, Dh = scene.size
    # a close-up of bay 1's desk, and the same view moved to bays 2 and 3
    view = look_at([1.5 * P, 1.3, Dh - 1.6], [1.5 * P - 0.2, 0.8, Dh - 0.3])
    images = []
    for k in (0, 1, 2):
        T = view.copy()
        T[0, 3] += k * P
        images.append(scene.render(T, K, W, H))
    _same_image(images[0], images[1])
    _same_image(images[0], images[2])
    assert images[0][0].std() > 10  # textured, not blank
    # the two end walls differ: the same view of each end of the hall does not look the same
    left = look_at([1.0, 1.4, Dh / 2], [0.0, 1.4, Dh / 2])
    right = look_at([Wh - 1.0, 1.4, Dh / 2], [Wh, 1.4, Dh / 2])
    a, b = scene.render(left, K, W, H), scene.render(right, K, W, H)
    np.testing.assert_allclose(a[1], b[1], atol=1e-4)  # same geometry (1 m from a flat wall)
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() > 10  # different texture


def test_lap_ends_are_identical_images_of_different_places():
    seq = SyntheticSequence(seed=0, scene="aliasing", laps=2, width=W, height=H)
    scene, path = seq.scene, seq.path
    A, B = path.pose_at(0.0), path.pose_at(0.5)
    np.testing.assert_allclose(B[:3, 3] - A[:3, 3], [-2 * scene.bay_width, 0, 0], atol=1e-9)
    np.testing.assert_allclose(A[:3, :3], B[:3, :3], atol=1e-12)
    _same_image(scene.render(A, seq.K, W, H), scene.render(B, seq.K, W, H))
    n = seq.frames_per_lap
    truth = SequenceTruth(seq, max_width=W)
    # frame 0 (in front of bay 3) and the frames around half a lap (in front of bay 1): look alike, share nothing
    half = n // 2
    assert truth.overlaps_with(0, [half - 1, half, half + 1]).max() == 0.0
    # while the same spot one lap later is a true revisit, and so is the other half of the ellipse
    assert truth.view_overlap(0, n) == 1.0
    quarter, three_quarters = n // 4, (3 * n) // 4  # back and front of the ellipse, at the middle bay
    assert abs(seq.pose(quarter)[0, 3] - seq.pose(three_quarters)[0, 3]) < 0.1
    assert truth.view_overlap(three_quarters, quarter) > 0.5


def test_aliasing_geometry_is_exact():
    seq = SyntheticSequence(seed=1, scene="aliasing", frames=40, width=W, height=H)
    scene = seq.scene
    for i in (0, 20, 39):
        rgb, depth = seq.render(i)
        assert (depth > 0).all()
        pts = _unproject(depth, seq.K, seq.pose(i))
        assert scene.distance_to_surface(pts).max() < 1e-4
    m = scene.mesh()
    assert len(m.triangles) == sum(len(s.triangles) for s in scene.shapes)
    assert np.abs(scene.distance_to_surface(np.asarray(m.vertices))).max() < 1e-5
    Wh, Hh, Dh = scene.size
    assert Wh == pytest.approx(scene.bays * scene.bay_width)
    names = {s.name.split("/", 1)[1] for s in scene.shapes if s.name.startswith("bay")}
    for k in range(scene.bays):  # every bay holds the same parts, translated
        mine = sorted((s for s in scene.shapes if s.name.startswith(f"bay{k}/")), key=lambda s: s.name)
        assert {s.name.split("/", 1)[1] for s in mine} == names
        ref = sorted((s for s in scene.shapes if s.name.startswith("bay0/")), key=lambda s: s.name)
        for a, b in zip(ref, mine):
            np.testing.assert_allclose(b.vertices - a.vertices, np.tile([k * scene.bay_width, 0, 0], (len(a.vertices), 1)),
                                       atol=1e-12)
            assert b.texture is a.texture
    d = seq.describe()
    assert d["scene"] == "aliasing" and d["bays"] == scene.bays and d["frames_per_lap"] == seq.frames_per_lap


def test_aliasing_errors():
    with pytest.raises(SourceError, match="bays must be an integer >= 3"):
        AliasingScene(bays=2)
    with pytest.raises(SourceError, match="bay_width"):
        AliasingScene(bay_width=0.5)
    with pytest.raises(SourceError, match="dynamic objects exist only in the 'room' scene"):
        SyntheticSequence(scene="aliasing", dynamic=True, width=W, height=H)
