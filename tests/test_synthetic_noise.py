"""The structured-light noise model of the synthetic frames: determinism and statistics against the formulas."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from slam3r_app.errors import SourceError
from slam3r_datasets.synthetic import SyntheticSequence, default_intrinsics
from slam3r_datasets.synthetic_noise import SensorNoise, apply_noise, frame_rng, incidence_angle, projector_shadow, resolve_noise

W, H = 160, 120
K = default_intrinsics(W, H)
KINECT = SensorNoise()


def _plane(z: float, w: int = W, h: int = H):
    """A fronto-parallel plane at depth ``z``: depth, camera-frame normals facing the camera, mid-grey colour."""
    depth = np.full((h, w), z, dtype=np.float32)
    normals = np.zeros((h, w, 3), dtype=np.float32)
    normals[..., 2] = -1.0
    return np.full((h, w, 3), 128, dtype=np.uint8), depth, normals


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_noise_other_frame_or_seed_differs():
    a = SyntheticSequence(seed=1, laps=1, noise="kinect", width=64, height=48)
    b = SyntheticSequence(seed=1, laps=1, noise="kinect", width=64, height=48)
    ra, da = a.render(5)
    rb, db = b.render(5)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(da, db)
    # another noise seed, or the same pose one lap later (another frame index): another noise draw
    c = SyntheticSequence(seed=1, laps=2, noise="kinect", width=64, height=48, noise_seed=7)
    assert not np.array_equal(c.render(5)[1], da)
    later = a.frames_per_lap + 5
    a2 = SyntheticSequence(seed=1, laps=2, noise="kinect", width=64, height=48)
    np.testing.assert_array_equal(a2.render_exact(later)[1], a2.render_exact(5)[1])
    assert not np.array_equal(a2.render(later)[1], a2.render(5)[1])
    # no noise: what the sensor gives is the exact rendering
    exact = SyntheticSequence(seed=1, laps=1, width=64, height=48)
    np.testing.assert_array_equal(exact.render(5)[1], exact.render_exact(5)[1])
    np.testing.assert_array_equal(exact.render_exact(5)[1], a.render_exact(5)[1])


# ----------------------------------------------------------------------------- statistics vs the model
@pytest.mark.parametrize("z", [1.0, 3.0])
def test_axial_noise_std_follows_nguyen_formula(z):
    rgb, depth, normals = _plane(z)
    formula = 0.0012 + 0.0019 * (z - 0.4) ** 2  # Nguyen et al. 2012, on the optical axis
    theta = incidence_angle(normals, K)
    random_only = dataclasses.replace(KINECT, distortion_px=0.0)
    for model in (KINECT, random_only):
        errors = []
        for frame in range(3):
            _, noisy = apply_noise(model, rgb, depth, normals, K, frame_rng(0, frame))
            ok = noisy > 0
            errors.append(noisy[ok].astype(np.float64) - z)
        e = np.concatenate(errors)
        assert e.std() == pytest.approx(formula, rel=0.2)  # the preset: + the fixed distortion pattern
    # the random part alone: the model's sigma (+ its tiny angular term off-axis), unbiased
    model_sigma = np.sqrt(np.mean(KINECT.axial_sigma(z, theta) ** 2))
    assert model_sigma == pytest.approx(formula, rel=0.02)
    assert e.std() == pytest.approx(model_sigma, rel=0.1)
    assert abs(e.mean()) < 0.1 * formula


def test_fixed_distortion_pattern_is_the_same_every_frame():
    rgb, depth, normals = _plane(2.0)
    fb = KINECT.focal_px * KINECT.baseline
    pattern = KINECT.distortion_pattern(K, W, H)  # disparity pixels
    # distortion_px is the largest offset over the IR sensor's own view (f = 580 px at 640x480); the colour
    # camera's view (f = 525 px) reaches a little further out
    assert 0.5 * KINECT.distortion_px < np.abs(pattern).max() < 1.5 * KINECT.distortion_px
    np.testing.assert_array_equal(pattern, KINECT.distortion_pattern(K, W, H))
    expected = fb / (fb / 2.0 + pattern) - 2.0  # metres: up to ~1 cm at 2 m
    assert 0.004 < np.abs(expected).max() < 0.015
    mean = np.zeros((H, W))
    count = np.zeros((H, W))
    for frame in range(8):
        _, noisy = apply_noise(KINECT, rgb, depth, normals, K, frame_rng(0, frame))
        mean += np.where(noisy > 0, noisy - 2.0, 0.0)
        count += noisy > 0
    mean /= np.maximum(count, 1)
    blocks = lambda a: a.reshape(H // 20, 20, W // 20, 20).mean(axis=(1, 3))  # noqa: E731
    assert np.corrcoef(blocks(mean).ravel(), blocks(expected).ravel())[0, 1] > 0.9
    other = dataclasses.replace(KINECT, distortion_seed=1).distortion_pattern(K, W, H)
    assert not np.allclose(other, pattern)
    assert not dataclasses.replace(KINECT, distortion_px=0.0).distortion_pattern(K, W, H).any()


@pytest.mark.parametrize("z", [1.0, 3.0])
def test_depth_is_quantised_in_disparity_steps(z):
    model = SensorNoise(axial_a=0.0, axial_b=0.0, axial_angle=0.0, random_dropout=0.0, lateral_px=0.0,
                        lateral_angle_px=0.0, distortion_px=0.0)
    rgb, _, normals = _plane(z)
    depth = np.tile(np.linspace(z - 0.05, z + 0.05, W, dtype=np.float32), (H, 1))  # a slanted plane
    _, noisy = apply_noise(model, rgb, depth, normals, K, frame_rng(0, 0))
    values = np.unique(noisy[noisy > 0].astype(np.float64))
    fb = model.focal_px * model.baseline
    k = fb / values / model.disparity_step
    np.testing.assert_allclose(k, np.rint(k), atol=1e-3)  # every depth is f b / (n q)
    step = np.diff(values)
    expected = z * z * model.disparity_step / fb  # 2.9 mm at 1 m, 2.6 cm at 3 m
    assert np.median(step) == pytest.approx(expected, rel=0.05)
    assert float(model.depth_step(z)) == pytest.approx(expected)
    ok = noisy > 0
    assert ok.mean() > 0.99
    err = np.abs(noisy[ok].astype(np.float64) - depth[ok])
    assert (err <= 0.51 * model.depth_step(depth[ok]) + 1e-6).all()  # rounded to the nearest level


def test_random_dropout_fraction_and_range_limits():
    rgb, depth, normals = _plane(2.0)
    _, noisy = apply_noise(KINECT, rgb, depth, normals, K, frame_rng(0, 0))
    dropped = float((noisy == 0).mean())
    assert 0.002 < dropped < 0.01  # random_dropout 0.5 %, nothing else applies on a plane at 2 m
    for z in (0.3, 5.0):  # closer than min_range 0.45 m / farther than max_range 4.5 m: no depth at all
        _, far = apply_noise(KINECT, *_plane(z), K, frame_rng(0, 0))
        assert (far == 0).all()
    heavy = SensorNoise(random_dropout=0.2)
    _, noisy = apply_noise(heavy, rgb, depth, normals, K, frame_rng(0, 0))
    assert float((noisy == 0).mean()) == pytest.approx(0.2, abs=0.02)


def test_grazing_surfaces_drop_out():
    rgb, depth, normals = _plane(2.0)
    tilted = normals.copy()
    a = np.radians(87.0)  # the surface turned 87 deg away from the optical axis
    tilted[..., 0], tilted[..., 2] = np.sin(a), -np.cos(a)
    theta = incidence_angle(tilted, K)
    _, noisy = apply_noise(KINECT, rgb, depth, tilted, K, frame_rng(0, 0))
    g0, g1 = np.radians(KINECT.grazing_deg)
    expected = np.clip((theta - g0) / (g1 - g0), 0, 1).mean()
    assert expected > 0.2
    assert float((noisy == 0).mean()) == pytest.approx(expected + (1 - expected) * 0.005, abs=0.03)


def test_projector_shadow_left_of_foreground_objects():
    f, b = float(K[0, 0]), KINECT.baseline
    depth = np.full((H, W), 3.0, dtype=np.float32)
    depth[40:80, 60:100] = 1.0  # a box 1 m away in front of a wall at 3 m
    shadow = projector_shadow(depth, f, b)
    width = f * b * (1 / 1.0 - 1 / 3.0)  # pixels
    assert width > 4
    rows = shadow[40:80]
    assert not shadow[:40].any() and not shadow[80:].any()  # only rows with the box
    assert not rows[:, 60:].any()  # never on the box itself nor on its right
    cols = np.nonzero(rows.any(axis=0))[0]
    assert cols.max() == 59 and abs(len(cols) - width) <= 1.0  # a band of f b (1/z_fg - 1/z_bg) px on the left
    # the full model drops them
    normals = np.zeros((H, W, 3), dtype=np.float32)
    normals[..., 2] = -1
    _, noisy = apply_noise(KINECT, np.zeros((H, W, 3), np.uint8), depth, normals, K, frame_rng(0, 0))
    assert (noisy[shadow] == 0).all()


def test_colour_noise_std():
    rgb, depth, normals = _plane(2.0)
    noisy_rgb, _ = apply_noise(KINECT, rgb, depth, normals, K, frame_rng(3, 0))
    assert noisy_rgb.dtype == np.uint8
    assert (noisy_rgb.astype(np.float64) - 128).std() == pytest.approx(KINECT.color_sigma, rel=0.1)


def test_noisy_frames_of_a_real_scene():
    seq = SyntheticSequence(seed=0, laps=1, noise="kinect", width=80, height=60)
    for i in (0, seq.frames_per_lap // 3):
        rgb, depth = seq.render(i)
        _, exact = seq.render_exact(i)
        ok = depth > 0
        assert 0.8 < ok.mean() < 0.999  # dropouts, shadows, edges, far range
        err = np.abs(depth[ok] - exact[ok])
        assert np.median(err) < 0.02 and np.median(err) > 0  # noisy, but close
        assert depth.dtype == np.float32 and rgb.dtype == np.uint8


# ----------------------------------------------------------------------------- presets and errors
def test_presets_overrides_and_errors():
    assert resolve_noise(None) is None and resolve_noise("none") is None and resolve_noise(" NONE ") is None
    k = resolve_noise("kinect")
    assert isinstance(k, SensorNoise) and k.baseline == 0.075 and k.disparity_step == 0.125
    custom = resolve_noise({"preset": "kinect", "color_sigma": 0, "random_dropout": 0.01})
    assert custom.color_sigma == 0 and custom.random_dropout == 0.01 and custom.focal_px == k.focal_px
    with pytest.raises(SourceError, match=r"source.synthetic_noise: unknown noise preset 'kinnect'.*kinect"):
        resolve_noise("kinnect", key="source.synthetic_noise")
    with pytest.raises(SourceError, match="unknown noise parameter.*sigma"):
        resolve_noise({"sigma": 1})
    with pytest.raises(SourceError, match="random_dropout must be in"):
        resolve_noise({"random_dropout": 2})
    with pytest.raises(SourceError, match="max_range"):
        SensorNoise(min_range=5.0, max_range=4.0)
    with pytest.raises(SourceError, match="noise"):
        SyntheticSequence(noise="loud", frames=2, width=16, height=12)


def test_correlated_axial_noise_keeps_its_std():
    rgb, depth, normals = _plane(2.0)
    model = SensorNoise(correlation_px=8.0, random_dropout=0.0, disparity_step=0.0, distortion_px=0.0)  # 2 px
    _, noisy = apply_noise(model, rgb, depth, normals, K, frame_rng(0, 0))
    e = noisy.astype(np.float64) - 2.0
    assert e.std() == pytest.approx(float(model.axial_sigma(2.0)), rel=0.2)
    neighbours = np.corrcoef(e[:, :-1].ravel(), e[:, 1:].ravel())[0, 1]
    assert neighbours > 0.5  # neighbouring pixels share their error (block matching)
    # the preset's random part: independent pixels (the smooth fixed distortion pattern left out here)
    _, white = apply_noise(dataclasses.replace(KINECT, distortion_px=0.0), rgb, depth, normals, K, frame_rng(0, 0))
    ok = (white[:, :-1] > 0) & (white[:, 1:] > 0)
    assert abs(np.corrcoef(white[:, :-1][ok], white[:, 1:][ok])[0, 1]) < 0.1
    # (apart from the smooth fixed distortion pattern, left out here)
