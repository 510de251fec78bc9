"""The view-overlap oracle (true revisits) against analytic geometry."""
from __future__ import annotations

import numpy as np
import pytest

from slam3r_datasets import SyntheticSequence
from slam3r_datasets.synthetic import default_intrinsics
from slam3r_datasets.synthetic_truth import SequenceTruth, depth_overlap, scaled_intrinsics

W, H = 80, 60
K = default_intrinsics(W, H)


def _translate(x=0.0, y=0.0, z=0.0):
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


def test_fronto_parallel_plane_analytic_cases():
    Z = 2.0
    plane = np.full((H, W), Z, dtype=np.float32)
    eye = np.eye(4)
    assert depth_overlap(plane, eye, plane, eye, K) == 1.0
    # sideways by exactly s pixels' worth: the s columns that leave the image are lost
    for s in (1, 20, 79):
        t = s * Z / K[0, 0]
        # the camera moves +x, so the scene moves left in its image: columns u < s fall outside
        assert depth_overlap(plane, eye, plane, _translate(x=t), K) == pytest.approx((W - s) / W, abs=1e-12)
    assert depth_overlap(plane, eye, plane, _translate(x=81 * Z / K[0, 0]), K) == 0.0
    # looking the other way from the same spot: nothing in front of the camera
    back = np.diag([-1.0, 1.0, -1.0, 1.0])
    assert depth_overlap(plane, eye, plane, back, K) == 0.0
    # moving 1 m closer (Z = 2 -> 1): the view shrinks to the centre half in each axis
    ov = depth_overlap(plane, eye, np.full((H, W), 1.0, np.float32), _translate(z=1.0), K)
    assert ov == pytest.approx(0.25, abs=0.03)
    # the depth must agree: the same pixels, but frame j sees something 0.5 m closer (an occluder)
    occluded = plane.copy()
    occluded[:, :40] = Z - 0.5
    assert depth_overlap(plane, eye, occluded, eye, K) == pytest.approx(0.5)
    assert depth_overlap(plane, eye, np.zeros_like(plane), eye, K) == 0.0  # no depth in j: nothing confirmed
    assert depth_overlap(np.zeros_like(plane), eye, plane, eye, K) == 0.0  # no valid pixel in i
    # a different image size in frame j: the same camera at half resolution sees everything
    Kh = scaled_intrinsics(K, W, H, W // 2, H // 2)
    assert depth_overlap(plane, eye, np.full((H // 2, W // 2), Z, np.float32), eye, K, Kh) == 1.0


def test_sequence_oracle_self_opposite_and_laps():
    seq = SyntheticSequence(seed=0, laps=2, width=64, height=48)
    truth = SequenceTruth(seq, max_width=40)
    assert (truth.width, truth.height) == (40, 30)
    n = seq.frames_per_lap
    assert truth.view_overlap(7, 7) == 1.0 and truth.view_overlap(7, 7 + n) == 1.0
    assert truth.view_overlap(0, n // 2) == 0.0  # the other side of the circle, looking the other way
    near = truth.overlaps_with(10, [9, 11, 20, 40, n // 2])
    assert near[0] > 0.9 and near[1] > 0.9 and near[0] >= near[2] >= near[3] > near[4] == 0.0
    # the oracle uses the exact depth, whatever the sensor noise
    noisy = SequenceTruth(SyntheticSequence(seed=0, laps=2, width=64, height=48, noise="kinect"), max_width=40)
    np.testing.assert_array_equal(noisy.depth(5), truth.depth(5))
    with pytest.raises(IndexError, match="out of range"):
        truth.view_overlap(0, 2 * n)


def test_true_revisits_find_every_lap_pair():
    seq = SyntheticSequence(seed=1, laps=2, speed=0.1, width=32, height=24)  # a short lap: 43 frames
    n = seq.frames_per_lap
    truth = SequenceTruth(seq)
    pairs = truth.true_revisits(min_overlap=0.6, min_frame_gap=n // 2)
    found = {(i, j) for i, j, _ in pairs}
    assert all((k, k + n) in found for k in range(n))
    for i, j, ov in pairs:
        assert j - i >= n // 2 and ov >= 0.6
        assert min((j - i) % n, n - (j - i) % n) <= n // 4  # only the same place one lap later (give or take)
    i, j, ov = pairs[len(pairs) // 2]
    assert truth.view_overlap(j, i) == pytest.approx(ov)
    sym = truth.true_revisits(min_overlap=0.6, min_frame_gap=n // 2, symmetric=True)
    assert {(i, j) for i, j, _ in sym} <= found and all((k, k + n) in {(a, b) for a, b, _ in sym} for k in range(n))
    with pytest.raises(ValueError):
        truth.true_revisits(min_overlap=0.0)


def test_true_revisits_in_the_aliasing_hall_never_pair_different_bays():
    seq = SyntheticSequence(seed=0, scene="aliasing", laps=1, speed=0.15, width=32, height=24)
    n = seq.frames_per_lap
    truth = SequenceTruth(seq)
    pairs = truth.true_revisits(min_overlap=0.3, min_frame_gap=3)
    assert pairs  # the two halves of the ellipse see the same desks
    x = seq.poses()[:, 0, 3]
    P = seq.scene.bay_width
    for i, j, _ in pairs:
        assert abs(x[i] - x[j]) < 2 * P - 0.3  # never the two ends of the ellipse (2 bays apart, same image)
    assert (0, n // 2) not in {(i, j) for i, j, _ in pairs}
