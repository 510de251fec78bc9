"""Metric scale from sensor vs predicted depth: known scale, with noise and outliers."""
from __future__ import annotations

import numpy as np
import pytest

from slam3r_plugins.fusion.scale import ScaleEstimator, robust_depth_ratio


def _frame(rng, s_true, shape=(60, 80), noise=0.03, outliers=0.3, holes=0.1):
    """Sensor depth (metres) and a prediction in units of ``s_true`` metres, corrupted."""
    sensor = rng.uniform(0.5, 6.0, shape)
    pred = sensor / s_true * (1 + rng.normal(0, noise, shape))
    bad = rng.random(shape) < outliers  # people walking, flying pixels: unrelated depths
    pred = np.where(bad, rng.uniform(0.05, 10.0, shape), pred)
    sensor = np.where(rng.random(shape) < holes, 0.0, sensor)  # sensor holes (0 = invalid)
    return sensor.astype(np.float32), pred.astype(np.float32)


@pytest.mark.parametrize("s_true", [0.37, 1.0, 4.2])
def test_one_frame_recovers_known_scale_despite_outliers(s_true):
    rng = np.random.default_rng(1)
    sensor, pred = _frame(rng, s_true)
    fs = robust_depth_ratio(sensor, pred)
    assert fs is not None
    assert fs.scale == pytest.approx(s_true, rel=0.01)
    # outliers were rejected: about (1 - 0.3) of the valid pixels are inliers
    assert 0.55 < fs.inlier_fraction < 0.8


def test_plain_median_would_be_biased_but_rejection_is_not():
    """Outliers biased to one side (e.g. a near occluder): the MAD rejection removes them."""
    rng = np.random.default_rng(2)
    shape = (50, 50)
    sensor = rng.uniform(1, 3, shape)
    pred = sensor / 2.0 * np.exp(rng.normal(0, 0.05, shape))
    bad = rng.random(shape) < 0.4
    pred = np.where(bad, pred * 3.0, pred)  # 40 % of pixels 3x too deep in the prediction
    naive = float(np.exp(np.median(np.log(sensor / pred))))
    fs = robust_depth_ratio(sensor, pred)
    assert abs(naive / 2.0 - 1) > 0.03  # the naive median is off by ~1 sigma ...
    assert fs.scale == pytest.approx(2.0, rel=0.005)  # ... the robust one is not (sigma/sqrt(n) ~ 0.1 %)


def test_masks_invalid_and_too_few_pixels():
    sensor = np.full((10, 10), 2.0, np.float32)
    pred = np.full((10, 10), 1.0, np.float32)
    pred[0, 0] = np.nan
    pred[0, 1] = 0.0
    sensor[0, 2] = -1.0
    fs = robust_depth_ratio(sensor, pred, min_pixels=10)
    assert fs.scale == pytest.approx(2.0) and fs.pixels == 97
    mask = np.zeros((10, 10), bool)
    mask[:2] = True
    assert robust_depth_ratio(sensor, pred, mask, min_pixels=50) is None
    with pytest.raises(ValueError, match="differ in size"):
        robust_depth_ratio(sensor, pred[:5])


def test_running_estimate_over_time_ignores_bad_frames():
    rng = np.random.default_rng(3)
    est = ScaleEstimator()
    assert est.scale is None
    seq = []
    for i in range(30):
        sensor, pred = _frame(rng, 1.7, noise=0.05)
        if i % 7 == 3:  # a wholly wrong frame (e.g. a failed prediction): a 30 % wrong ratio
            pred = pred * 1.3
        if i == 10:  # a frame with no usable pixels
            sensor = np.zeros_like(sensor)
        seq.append(est.update(sensor, pred))
    assert est.scale == pytest.approx(1.7, rel=0.01)
    assert est.frames_used == 29 and est.frames_rejected == 1
    assert seq[0] == pytest.approx(1.7, rel=0.02)  # the first frame already gives a usable value
    assert est.spread is not None and est.spread < 0.2
    info = est.info()
    assert info["scale"] == est.scale and info["frames_used"] == 29


def test_window_follows_a_changing_scale_and_memory_stays_bounded():
    rng = np.random.default_rng(4)
    est = ScaleEstimator(window=5)
    for _ in range(40):
        est.update(*_frame(rng, 1.0, noise=0.01, outliers=0.0))
    for _ in range(10):
        est.update(*_frame(rng, 3.0, noise=0.01, outliers=0.0))
    assert est.scale == pytest.approx(3.0, rel=0.01)
    assert len(est.log_scales) <= 20
    est.reset()
    assert est.scale is None and est.frames_used == 0
