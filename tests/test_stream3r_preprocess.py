"""Preprocessing (crop / pad, PIL bicubic) and the mapping of model-pixel geometry back to the source.

Truth: PIL's own resize (the reference resizes with PIL bicubic), hand-computed sizes/offsets, and
pinhole projection written out in the test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stream3r import ImageGeometry, load_and_preprocess_images, preprocess_image


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models: one intra-op thread is fastest and immune to OpenMP spin-waits on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rand_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pil_resized(arr, w, h):
    out = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1)


def test_landscape_crop_640x480():
    arr = rand_image(480, 640)
    x, g = preprocess_image(arr)
    assert x.shape == (3, 392, 518) and x.dtype == torch.float32  # 480 * 518 / 640 = 388.5 -> 28 * 14
    assert g.source_hw == (480, 640) and g.resized_hw == (392, 518) and g.model_hw == (392, 518)
    assert g.offset_xy == (0, 0)
    assert torch.equal(x, pil_resized(arr, 518, 392))


def test_portrait_crop_keeps_the_centre():
    arr = rand_image(640, 480, 1)  # H=640, W=480: resized to 518 x 686 (686 = 49 * 14), centre crop 518
    x, g = preprocess_image(arr)
    assert x.shape == (3, 518, 518)
    assert g.resized_hw == (686, 518) and g.offset_xy == (0, 84)
    assert torch.equal(x, pil_resized(arr, 518, 686)[:, 84:602])


def test_pad_mode_landscape_and_portrait():
    arr = rand_image(480, 640, 2)
    x, g = preprocess_image(arr, mode="pad")
    assert x.shape == (3, 518, 518)
    assert g.offset_xy == (0, -63)  # (518 - 392) / 2 rows of white above
    assert torch.all(x[:, :63] == 1.0) and torch.all(x[:, 63 + 392:] == 1.0)
    assert torch.equal(x[:, 63:455], pil_resized(arr, 518, 392))
    arr = rand_image(640, 480, 3)
    x, g = preprocess_image(arr, mode="pad")  # long side 518, short side round(388.5 / 14) * 14 = 392
    assert g.resized_hw == (518, 392) and g.offset_xy == (-63, 0)
    assert torch.all(x[:, :, :63] == 1.0) and torch.equal(x[:, :, 63:455], pil_resized(arr, 392, 518))


def test_rounding_and_other_sizes():
    x, g = preprocess_image(rand_image(100, 300), size=224)  # 100 * 224 / 300 = 74.67 -> round(5.33) * 14 = 70
    assert x.shape == (3, 70, 224)
    with pytest.raises(ValueError, match="elongated"):
        preprocess_image(rand_image(10, 2000))
    with pytest.raises(ValueError, match="multiple"):
        preprocess_image(rand_image(10, 20), size=500)
    with pytest.raises(ValueError, match="mode"):
        preprocess_image(rand_image(10, 20), mode="stretch")
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(rand_image(10, 20).astype(np.float32) / 255)


def test_inputs_paths_pil_rgba_grey(tmp_path):
    arr = rand_image(48, 64, 4)
    Image.fromarray(arr).save(tmp_path / "a.png")
    a, _ = preprocess_image(tmp_path / "a.png")
    b, _ = preprocess_image(Image.fromarray(arr))
    c, _ = preprocess_image(arr)
    assert torch.equal(a, b) and torch.equal(b, c)
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)  # fully transparent black -> white
    x, _ = preprocess_image(rgba)
    assert torch.all(x == 1.0)
    grey = np.full((48, 64), 77, dtype=np.uint8)
    x, _ = preprocess_image(grey)
    assert torch.allclose(x, torch.full_like(x, 77 / 255))


def test_load_and_preprocess_batch(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(480, 640), (480, 640), (600, 640)]):
        Image.fromarray(rand_image(h, w, i)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    batch = load_and_preprocess_images(paths[:2])
    assert batch.shape == (2, 3, 392, 518)
    assert torch.equal(batch[1], preprocess_image(paths[1])[0])
    # different sizes: padded with white to the largest (392 -> 490 rows: 49 above and below)
    batch, geoms = load_and_preprocess_images(paths, return_geometry=True)
    assert batch.shape == (3, 3, 490, 518)
    assert geoms[0].offset_xy == (0, -49) and geoms[2].offset_xy == (0, 0)
    assert torch.all(batch[0, :, :49] == 1.0)
    with pytest.raises(ValueError):
        load_and_preprocess_images([])


def project(K, X):
    uvw = X @ K.T
    return uvw[:, :2] / uvw[:, 2:]


@pytest.mark.parametrize("hw,mode", [((480, 640), "crop"), ((640, 480), "crop"), ((480, 640), "pad"), ((640, 480), "pad")])
def test_intrinsics_map_between_source_and_model_pixels(hw, mode):
    H0, W0 = hw
    _, g = preprocess_image(np.zeros((H0, W0, 3), np.uint8), mode=mode)
    K_src = np.array([[500.0, 0, (W0 - 1) / 2 + 3.0], [0, 510.0, (H0 - 1) / 2 - 2.0], [0, 0, 1]])
    X = np.random.default_rng(0).normal(size=(50, 3)) + [0, 0, 5]
    uv = project(K_src, X)
    # independent pixel mapping: centres of source pixels -> model pixels through resize, then crop/pad
    Hr, Wr = g.resized_hw
    sx, sy = Wr / W0, Hr / H0
    crop_or_pad = np.array(g.offset_xy)
    xy_expected = (uv + 0.5) * [sx, sy] - 0.5 - crop_or_pad
    K_model = g.intrinsics_to_model(K_src)
    np.testing.assert_allclose(project(K_model, X), xy_expected, atol=1e-9)
    np.testing.assert_allclose(g.intrinsics_to_source(K_model), K_src, atol=1e-9)
    np.testing.assert_allclose(g.source_to_model_xy(uv), xy_expected, atol=1e-9)
    np.testing.assert_allclose(g.model_to_source_xy(xy_expected), uv, atol=1e-9)


def test_intrinsics_analytic_values_640x480():
    _, g = preprocess_image(np.zeros((480, 640, 3), np.uint8))
    K_model = np.array([[400.0, 0, 259.0], [0, 400.0, 196.0], [0, 0, 1]])  # the model's principal point W/2, H/2
    K = g.intrinsics_to_source(K_model)
    np.testing.assert_allclose(K[0, 0], 400 * 640 / 518)
    np.testing.assert_allclose(K[1, 1], 400 * 480 / 392)
    np.testing.assert_allclose(K[0, 2], 259.5 * 640 / 518 - 0.5)
    np.testing.assert_allclose(K[1, 2], 196.5 * 480 / 392 - 0.5)


def test_dense_maps_back_to_source():
    g = ImageGeometry(source_hw=(640, 480), resized_hw=(686, 518), model_hw=(518, 518), offset_xy=(0, 84), mode="crop")
    rows = np.repeat(np.arange(518, dtype=np.float32)[:, None], 518, 1)
    back = g.map_to_source(rows, fill=-1)
    assert back.shape == (640, 480)
    # source row v has its centre at model row (v + 0.5) * 686/640 - 0.5 - 84; rows outside [-0.5, 517.5) are cut
    y = (np.arange(640) + 0.5) * 686 / 640 - 0.5 - 84
    inside = (y >= -0.5) & (y < 517.5)
    np.testing.assert_array_equal(back[~inside], -1)
    np.testing.assert_array_equal(back[inside, 0], np.floor(y[inside] + 0.5))
    assert abs(inside.sum() - 518 * 640 / 686) < 1  # 518 model rows cover 483.3 source rows
