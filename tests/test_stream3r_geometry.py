"""Pose encodings, unprojection and attention kernels against independent maths
(scipy rotations, hand-written pinhole formulas, plain softmax attention)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from stream3r import (
    ImageGeometry,
    STream3R,
    depth_to_cam_points,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    frame_predictions_to_source,
    pose_encoding_to_cam_to_world,
    pose_encoding_to_extri_intri,
    quat_to_rotmat,
    rotmat_to_quat,
)
from stream3r.layers.attention import attention, attention_backend, reference_attention, sdpa_attention
from stream3r.layers.rope import Rope2D


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models: one intra-op thread is fastest and immune to OpenMP spin-waits on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_cameras(n=20, seed=0):
    rng = np.random.default_rng(seed)
    rot = Rotation.random(n, random_state=seed)
    R = rot.as_matrix()
    t = rng.normal(size=(n, 3))
    H, W = 392, 518
    fx = rng.uniform(300, 600, n)
    fy = rng.uniform(300, 600, n)
    K = np.zeros((n, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, W / 2, H / 2, 1
    return rot, R, t, K, (H, W)


def test_pose_encoding_against_scipy():
    rot, R, t, K, hw = random_cameras()
    ext = np.concatenate([R, t[:, :, None]], axis=2)
    enc = extri_intri_to_pose_encoding(torch.from_numpy(ext), torch.from_numpy(K), hw)
    assert enc.shape == (20, 9)
    np.testing.assert_allclose(enc[:, :3].numpy(), t, atol=1e-12)
    q = rot.as_quat(canonical=True)  # xyzw, w >= 0
    np.testing.assert_allclose(enc[:, 3:7].numpy(), q, atol=1e-9)
    np.testing.assert_allclose(enc[:, 7].numpy(), 2 * np.arctan(hw[0] / 2 / K[:, 1, 1]), atol=1e-12)
    np.testing.assert_allclose(enc[:, 8].numpy(), 2 * np.arctan(hw[1] / 2 / K[:, 0, 0]), atol=1e-12)
    ext2, K2 = pose_encoding_to_extri_intri(enc, hw)
    np.testing.assert_allclose(ext2.numpy(), ext, atol=1e-9)
    np.testing.assert_allclose(K2.numpy(), K, atol=1e-9)
    # numpy in, numpy out; leading batch dims
    enc_np = extri_intri_to_pose_encoding(ext.reshape(4, 5, 3, 4), K.reshape(4, 5, 3, 3), hw)
    assert isinstance(enc_np, np.ndarray) and enc_np.shape == (4, 5, 9)


def test_quaternions_against_scipy():
    rot = Rotation.random(50, random_state=3)
    q = rot.as_quat()
    scaled = q * np.random.default_rng(1).uniform(0.5, 2, (50, 1))  # need not be unit
    np.testing.assert_allclose(quat_to_rotmat(scaled), rot.as_matrix(), atol=1e-12)
    # near-180-degree rotations pick a well-conditioned branch
    flips = Rotation.from_rotvec(np.array([[math.pi, 0, 0], [0, math.pi - 1e-9, 0], [0, 0, -math.pi]]))
    for r in (rot, flips):
        np.testing.assert_allclose(quat_to_rotmat(rotmat_to_quat(r.as_matrix())), r.as_matrix(), atol=1e-9)


def test_cam_to_world_is_the_inverse_extrinsic():
    rot, R, t, K, hw = random_cameras(5, 7)
    enc = extri_intri_to_pose_encoding(np.concatenate([R, t[:, :, None]], 2), K, hw)
    c2w = pose_encoding_to_cam_to_world(enc)
    for i in range(5):
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R[i], t[i]
        np.testing.assert_allclose(c2w[i], np.linalg.inv(w2c), atol=1e-9)
    ident = pose_encoding_to_cam_to_world(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1.0, 1.0]))
    assert torch.allclose(ident, torch.eye(4))


def test_depth_unprojection_analytic():
    H, W = 4, 6
    K = np.array([[2.0, 0, 3.0], [0, 4.0, 2.0], [0, 0, 1]])
    depth = np.full((H, W), 2.0)
    depth[1, 5] = 5.0
    pts = depth_to_cam_points(depth, K)
    assert pts.shape == (H, W, 3)
    np.testing.assert_allclose(pts[0, 0], [(0 - 3) * 2 / 2, (0 - 2) * 2 / 4, 2])
    np.testing.assert_allclose(pts[1, 5], [(5 - 3) * 5 / 2, (1 - 2) * 5 / 4, 5])
    np.testing.assert_allclose(pts[..., 2], depth)
    # world points: X_w = R^T (X_c - t) for world-to-camera [R | t]
    R = Rotation.from_euler("xyz", [0.1, -0.4, 0.3]).as_matrix()
    t = np.array([0.5, -1.0, 2.0])
    ext = np.concatenate([R, t[:, None]], 1)
    world = depth_to_world_points(depth[None, ..., None], ext[None], K[None])
    np.testing.assert_allclose(world[0], (pts - t) @ R, atol=1e-12)
    # and projecting the world points back gives the pixel grid and the depth
    cam = world[0] @ R.T + t
    uv = cam @ K.T
    np.testing.assert_allclose(uv[..., 0] / uv[..., 2], np.tile(np.arange(W), (H, 1)), atol=1e-12)
    np.testing.assert_allclose(cam[..., 2], depth, atol=1e-12)


def test_frame_predictions_to_source():
    H, W = 28, 42
    geom = ImageGeometry(source_hw=(60, 84), resized_hw=(28, 42), model_hw=(28, 42), offset_xy=(0, 0), mode="crop")
    fov_h, fov_w = 1.0, 1.2
    pred = {
        "pose_enc": torch.tensor([[[1.0, 2.0, 3.0, 0, 0, 0, 1, fov_h, fov_w]]]),
        "depth": torch.full((1, 1, H, W, 1), 2.5),
        "depth_conf": torch.full((1, 1, H, W), 3.0),
        "world_points": torch.zeros(1, 1, H, W, 3),
        "world_points_conf": torch.ones(1, 1, H, W),
    }
    out = frame_predictions_to_source(pred, geom)
    c2w = np.eye(4)
    c2w[:3, 3] = [-1, -2, -3]
    np.testing.assert_allclose(out["cam_to_world"], c2w)
    fx_model = (W / 2) / math.tan(fov_w / 2)
    np.testing.assert_allclose(out["intrinsics"][0, 0], fx_model * 84 / 42)
    np.testing.assert_allclose(out["intrinsics"][0, 2], (W / 2 + 0.5) * 2 - 0.5)
    assert out["depth"].shape == (60, 84) and out["depth"].dtype == np.float32 and np.all(out["depth"] == 2.5)
    assert out["world_points"].shape == (60, 84, 3)


def test_sdpa_matches_reference_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 10, 3, 8, generator=g)
    k = torch.randn(2, 14, 3, 8, generator=g)
    v = torch.randn(2, 14, 3, 8, generator=g)
    # independent: explicit per-head softmax with numpy
    qn, kn, vn = (t.double().numpy() for t in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", qn, kn) / math.sqrt(8)
    mask = torch.rand(10, 14, generator=g) > 0.4
    mask[:, 0] = True
    for m in (None, mask):
        ss = s if m is None else np.where(m.numpy(), s, -np.inf)
        p = np.exp(ss - ss.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        expect = np.einsum("bhqk,bkhd->bqhd", p, vn)
        for fn in (sdpa_attention, reference_attention):
            np.testing.assert_allclose(fn(q, k, v, m).double().numpy(), expect, atol=1e-5)
        with attention_backend("reference"):
            np.testing.assert_allclose(attention(q, k, v, m).double().numpy(), expect, atol=1e-5)


def test_model_sdpa_equals_reference_backend():
    torch.manual_seed(0)
    model = STream3R(img_size=28, embed_dim=16, depth=2, num_heads=2, patch_embed="conv", camera_trunk_depth=1,
                     camera_num_heads=2, dpt_features=8, dpt_out_channels=(4, 8, 8, 8),
                     dpt_intermediate_layers=(0, 1, 0, 1)).eval()
    x = torch.rand(1, 7, 3, 28, 42)
    with torch.no_grad():
        a = model(x, mode="window", window_size=3)
        with attention_backend("reference"):
            b = model(x, mode="window", window_size=3)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k


def test_rope_against_rotation_formula():
    """Rotating by angle p * w per 2-plane: the half of head_dim with y, the other with x positions."""
    rope = Rope2D(100.0)
    d = 16
    tab = rope.table(2, 3, 1, d, "cpu")
    x = torch.randn(1, 7, 1, d, dtype=torch.float64).float()
    out = tab.apply(x)[0, :, 0].double()
    D = d // 2
    inv = 1.0 / (100.0 ** (np.arange(0, D, 2) / D))
    pos = [(0, 0)] + [(r + 1, c + 1) for r in range(2) for c in range(3)]
    for t, (py, px) in enumerate(pos):
        expect = np.empty(d)
        for half, p in ((0, py), (1, px)):
            seg = x[0, t, 0, half * D:(half + 1) * D].double().numpy()
            a, b = seg[: D // 2], seg[D // 2:]
            ang = p * inv
            expect[half * D: half * D + D // 2] = a * np.cos(ang) - b * np.sin(ang)
            expect[half * D + D // 2: (half + 1) * D] = b * np.cos(ang) + a * np.sin(ang)
        np.testing.assert_allclose(out[t].numpy(), expect, atol=1e-5)


def test_bf16_aggregator_with_fp32_heads_close_to_fp32():
    torch.manual_seed(0)
    cfg = dict(img_size=28, embed_dim=16, depth=2, num_heads=2, patch_embed="conv", camera_trunk_depth=1,
               camera_num_heads=2, dpt_features=8, dpt_out_channels=(4, 8, 8, 8), dpt_intermediate_layers=(0, 1, 0, 1))
    ref_model = STream3R(**cfg).eval()
    x = torch.rand(1, 3, 3, 28, 28)
    with torch.no_grad():
        ref = ref_model(x)
        low = STream3R(**cfg)
        low.load_state_dict(ref_model.state_dict())
        low.to_inference(dtype=torch.bfloat16)
        assert low.aggregator.frame_blocks[0].attn.qkv.weight.dtype == torch.bfloat16
        assert low.depth_head.norm.weight.dtype == torch.float32
        out = low(x)
    for k in ref:
        assert out[k].dtype == torch.float32
        err = float((out[k] - ref[k]).abs().max() / ref[k].abs().max())
        assert err < 0.1, (k, err)


def test_half_heads_keep_float32_output_layers():
    torch.manual_seed(0)
    cfg = dict(img_size=28, embed_dim=16, depth=2, num_heads=2, patch_embed="conv", camera_trunk_depth=1,
               camera_num_heads=2, dpt_features=8, dpt_out_channels=(4, 8, 8, 8), dpt_intermediate_layers=(0, 1, 0, 1))
    ref_model = STream3R(**cfg).eval()
    x = torch.rand(1, 3, 3, 28, 28)
    with torch.no_grad():
        ref = ref_model(x)
        low = STream3R(**cfg)
        low.load_state_dict(ref_model.state_dict())
        low.to_inference(dtype=torch.bfloat16, heads_dtype=torch.bfloat16)
        cam, dpt = low.camera_head, low.depth_head
        assert cam.trunk[0].attn.qkv.weight.dtype == torch.bfloat16 and dpt.projects[0].weight.dtype == torch.bfloat16
        assert cam.pose_branch.fc2.weight.dtype == torch.float32 and cam.empty_pose_tokens.dtype == torch.float32
        assert dpt.scratch.output_conv2[2].weight.dtype == torch.float32
        # the float32 output layers keep the exact weights (never rounded through bfloat16)
        ref_cam, ref_dpt = ref_model.camera_head, ref_model.depth_head
        assert torch.equal(cam.pose_branch.fc2.weight, ref_cam.pose_branch.fc2.weight)
        assert torch.equal(cam.empty_pose_tokens, ref_cam.empty_pose_tokens)
        assert torch.equal(dpt.scratch.output_conv2[2].weight, ref_dpt.scratch.output_conv2[2].weight)
        assert not torch.equal(cam.trunk[0].attn.qkv.weight.float(), ref_cam.trunk[0].attn.qkv.weight)
        out = low(x)
    for k in ref:
        assert out[k].dtype == torch.float32, k
        err = float((out[k] - ref[k]).abs().max() / ref[k].abs().max())
        assert err < 0.1, (k, err)


def test_dense_to_source_crop_is_the_analytic_nearest_row_with_fills():
    from stream3r.geometry import dense_to_source
    from stream3r.preprocess import ImageGeometry as G

    # portrait 480x640 resized to 518x686 and centre-cropped to 518x518 (84 rows cut at the top)
    g = G(source_hw=(640, 480), resized_hw=(686, 518), model_hw=(518, 518), offset_xy=(0, 84), mode="crop")
    rows = torch.arange(518, dtype=torch.float32)[:, None].expand(518, 518)
    pred = {"depth": rows[None, None, ..., None] + 1, "depth_conf": rows[None, None] + 1,
            "world_points": torch.stack([rows, rows * 2, rows * 3], -1)[None, None],
            "world_points_conf": rows[None, None] + 1}
    out = dense_to_source(pred, g)
    y = (np.arange(640) + 0.5) * 686 / 640 - 0.5 - 84  # model row under each source row's centre
    inside = (y >= -0.5) & (y < 517.5)
    want = np.floor(y + 0.5)
    for k in ("depth", "depth_conf", "world_points_conf"):
        v = out[k].numpy()
        assert v.shape == (640, 480) and v.dtype == np.float32
        np.testing.assert_array_equal(v[inside, 0], want[inside] + 1)
        np.testing.assert_array_equal(v[~inside], 0)
    p = out["world_points"].numpy()
    assert p.shape == (640, 480, 3)
    np.testing.assert_array_equal(p[inside, 0], want[inside, None] * [1, 2, 3])
    assert np.isnan(p[~inside]).all()
