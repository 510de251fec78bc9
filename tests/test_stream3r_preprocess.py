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


# ---------------------------------------------------------------------------------------- eval mode
def dust3r_eval_reference(arr, first, final, first_filter):
    """Upstream's evaluation loader written out with PIL: resize to ``first`` (LANCZOS when
    shrinking), then resize to ``final`` with LANCZOS; ToTensor, Normalize(0.5, 0.5), then back
    with Normalize(-1, 2).  The sizes are hand-computed in the tests."""
    img = Image.fromarray(arr).resize(first, first_filter).resize(final, Image.Resampling.LANCZOS)
    t = np.asarray(img, dtype=np.float32) / 255.0
    t = ((t - 0.5) / 0.5 + 1.0) / 2.0
    return torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1)


@pytest.mark.parametrize("hw,first,final,filt", [
    ((480, 640), (518, 388), (518, 378), Image.Resampling.LANCZOS),   # TUM / Bonn: 388.5 rounds to 388
    ((640, 480), (388, 518), (378, 518), Image.Resampling.LANCZOS),   # portrait
    ((436, 1024), (518, 221), (518, 210), Image.Resampling.LANCZOS),  # Sintel: 220.55 -> 221, 15 * 14
    ((240, 320), (518, 388), (518, 378), Image.Resampling.BICUBIC),   # smaller than 518: bicubic upscale
])
def test_eval_mode_matches_the_dust3r_eval_loader(hw, first, final, filt):
    arr = rand_image(*hw, seed=hw[0])
    x, g = preprocess_image(arr, mode="eval")
    ref = dust3r_eval_reference(arr, first, final, filt)
    assert x.shape == ref.shape == (3, final[1], final[0]) and x.dtype == torch.float32
    assert float((x - ref).abs().mean()) <= 1 / 255
    assert float((x - ref).abs().max()) < 1e-6  # the same PIL filters: equal up to float rounding
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert g.mode == "eval" and g.source_hw == hw and g.resized_hw == g.model_hw == (final[1], final[0])
    assert g.offset_xy == (0, 0)


def test_eval_mode_geometry_maps_back_to_source_pixels():
    """640x480 -> 518x378: x scales by 518/640, y by 378/480 (two centre-aligned resizes compose to one)."""
    arr = rand_image(480, 640, 7)
    _, g = preprocess_image(arr, mode="eval")
    sx, sy = 518 / 640, 378 / 480
    model_xy = np.array([[0.0, 0.0], [517.0, 377.0], [258.5, 188.5]])
    want = np.stack([(model_xy[:, 0] + 0.5) / sx - 0.5, (model_xy[:, 1] + 0.5) / sy - 0.5], axis=1)
    np.testing.assert_allclose(g.model_to_source_xy(model_xy), want, atol=1e-9)
    np.testing.assert_allclose(g.model_to_source_xy([258.5, 188.5]), [319.5, 239.5], atol=1e-9)  # centre -> centre
    # intrinsics: a pinhole in model pixels, mapped to the source, projects the same 3D points
    K = np.array([[400.0, 0, 258.5], [0, 410.0, 188.5], [0, 0, 1]])
    Ks = g.intrinsics_to_source(K)
    P = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    uv_model = (K @ P.T).T
    uv_model = uv_model[:, :2] / uv_model[:, 2:]
    uv_src = (Ks @ P.T).T
    uv_src = uv_src[:, :2] / uv_src[:, 2:]
    np.testing.assert_allclose(g.model_to_source_xy(uv_model), uv_src, atol=1e-9)
    np.testing.assert_allclose(g.intrinsics_to_model(Ks), K, atol=1e-9)
    # dense maps: each source pixel takes the model pixel containing its centre (numpy and torch paths)
    from stream3r.geometry import dense_to_source

    ys, xs = np.meshgrid(np.arange(378), np.arange(518), indexing="ij")
    depth = (xs * 1000 + ys).astype(np.float32)  # encodes the model pixel
    src = g.map_to_source(depth)
    assert src.shape == (480, 640)
    u = np.arange(640)
    v = np.arange(480)
    np.testing.assert_array_equal(src[0], np.floor((u + 0.5) * sx) * 1000)
    np.testing.assert_array_equal(src[:, 0], np.floor((v + 0.5) * sy))
    t = dense_to_source({"depth": torch.from_numpy(depth)[None, None, ..., None]}, g)
    np.testing.assert_array_equal(t["depth"].numpy(), src)


def test_eval_mode_square_and_bad_inputs(tmp_path):
    x, g = preprocess_image(rand_image(600, 600, 3), mode="eval")
    assert x.shape == (3, 378, 518) and g.model_hw == (378, 518)  # upstream: 3/4 of the width (floored to 14)
    with pytest.raises(ValueError, match="'eval'"):
        preprocess_image(rand_image(48, 64), mode="evaluation")
    # EXIF orientation is applied to files, as upstream's loader does
    arr = rand_image(48, 64, 4)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    x, g = preprocess_image(tmp_path / "r.jpg", mode="eval")
    assert g.source_hw == (64, 48)  # portrait after the EXIF rotation
    batch, geoms = load_and_preprocess_images([arr, arr], mode="eval", return_geometry=True)
    assert batch.shape == (2, 3, 378, 518) and geoms[0].mode == "eval"
