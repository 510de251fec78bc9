"""CUDA checks (run on a GPU machine; skipped elsewhere, never in CI):
upstream equivalence on the GPU in fp32, streaming == batch in bf16, split-KV attention against SDPA,
the Triton kernels (TF32 attention, split-KV merge, fused QK-norm + RoPE, the mixed-precision
residual / norm kernels and float32-output GEMMs) against float64 / torch, bf16 (fp32 or bf16 heads)
and fp32-with-TF32 against fp32 for the full-size model, and the default recipe (mixed float16) at
least as accurate as bf16 autocast on synthetic full-size weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

from stream3r import STream3R, StreamSession  # noqa: E402
from stream3r.layers.attention import attention, configure_fast_paths, configure_split_kv, sdpa_attention, split_kv_attention  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "stream3r"
KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_upstream_fixture_on_cuda():
    from safetensors.torch import load_file

    t = load_file(str(FIX / "upstream_small.safetensors"), device="cuda")
    meta = json.loads((FIX / "upstream_small.json").read_text())
    model = STream3R(**meta["models"]["A"]).cuda().eval()
    model.load_state_dict({k[len("A.param."):]: v for k, v in t.items() if k.startswith("A.param.")})
    x = t["A_seq.images"]
    for mode, key in (("full", "A_seq.full."), ("window", "A_seq.window."), ("causal", "A_seq.stream_causal.")):
        with torch.no_grad():
            out = model(x, mode=mode)
        assert max(rel(out[k], t[key + k]) for k in KEYS) <= 2e-3, mode
        if mode != "full":
            s = StreamSession(model, mode=mode)
            for i in range(x.shape[1]):
                o = s.forward_stream(x[:, i])
                assert max(rel(o[k][:, 0], t[key + k][:, i]) for k in KEYS) <= 2e-3, (mode, i)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)])
def test_split_kv_matches_sdpa(dtype, tol):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 1041, 16, 64, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(1, 37 * 1041, 16, 64, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(1, 37 * 1041, 16, 64, device="cuda", dtype=dtype, generator=g)
    hi = torch.float64 if dtype == torch.float32 else torch.float32
    ref = sdpa_attention(q.to(hi), k.to(hi), v.to(hi))
    for splits in (1, 3, 8, 11):
        out = split_kv_attention(q, k, v, splits)
        assert rel(out, ref) < tol, splits


def test_streaming_equals_batch_bf16():
    torch.manual_seed(0)
    model = STream3R(img_size=70, embed_dim=128, depth=4, num_heads=2, patch_embed="dinov2", dinov2_depth=2,
                     dinov2_num_heads=2, camera_trunk_depth=2, camera_num_heads=2, dpt_features=32,
                     dpt_out_channels=(16, 32, 64, 64), dpt_intermediate_layers=(0, 1, 2, 3))
    model.to_inference("cuda", dtype=torch.bfloat16)
    x = torch.rand(1, 9, 3, 56, 70, device="cuda")
    old = configure_split_kv(min_ratio=2, min_queries=1)  # exercise the split path at this small size
    try:
        for mode, ws in (("causal", 5), ("window", 3)):
            with torch.no_grad():
                ref = model(x, mode=mode, window_size=ws)
            s = StreamSession(model, mode=mode, window_size=ws)
            outs = [s.forward_stream(x[:, i]) for i in range(9)]
            for k in KEYS:
                got = torch.cat([o[k] for o in outs], 1)
                assert rel(got, ref[k]) < 3e-2, (mode, k)
    finally:
        configure_split_kv(**old)


def test_full_model_bf16_close_to_fp32():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = STream3R().eval()
    x = torch.rand(1, 3, 3, 392, 518, device="cuda")
    s = StreamSession(model)
    ref = [s.forward_stream(x[:, i]) for i in range(3)]
    # fp32 with TF32 matmuls / convs / attention (what upstream's "fp32" runs)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        s = StreamSession(model)
        out = [s.forward_stream(x[:, i]) for i in range(3)]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    errs = {k: max(rel(o[k], r[k]) for o, r in zip(out, ref)) for k in KEYS}
    print("fp32+TF32 vs fp32 rel err", errs)
    assert max(errs.values()) < 2e-2, errs
    for heads_dtype in (torch.float32, torch.bfloat16):
        model.to_inference(dtype=torch.bfloat16, heads_dtype=heads_dtype)
        s = StreamSession(model)
        out = [s.forward_stream(x[:, i]) for i in range(3)]
        assert all(o[k].dtype == torch.float32 for o in out for k in KEYS)
        errs = {k: max(rel(o[k], r[k]) for o, r in zip(out, ref)) for k in KEYS}
        print(f"bf16 (heads {heads_dtype}) vs fp32 rel err", errs)
        assert max(errs.values()) < 5e-2, errs


def rel_fro(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def ref64(q, k, v):
    return sdpa_attention(q.double(), k.double(), v.double())


@pytest.mark.parametrize("nq,nk,h,d", [(1041, 1041, 16, 64), (1041, 7 * 1041, 16, 64), (25, 300, 2, 64),
                                       (100, 5000, 3, 32)])
def test_triton_tf32_attention_matches_float64(nq, nk, h, d):
    from stream3r.layers.triton_attention import triton_attention

    g = torch.Generator(device="cuda").manual_seed(nq + nk)
    q = torch.randn(1, nq, h, d, device="cuda", generator=g)
    k = torch.randn(1, nk, h, d, device="cuda", generator=g)
    v = torch.randn(1, nk, h, d, device="cuda", generator=g)
    ref = ref64(q, k, v)
    for splits in (0, 1, 3):
        out = triton_attention(q, k, v, splits)
        assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
        assert rel_fro(out, ref) < 5e-3, splits  # TF32 products: ~2e-3
    # bf16 inputs through the same kernel
    out = triton_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert rel_fro(out, ref) < 2e-2
    # batched (frame blocks of several frames)
    qb, kb, vb = (t.expand(2, *t.shape[1:]).contiguous() for t in (q, k, v))
    out = triton_attention(qb, kb, vb)
    assert rel_fro(out[1:], ref) < 5e-3


def test_attention_dispatch_tf32_only_when_allowed():
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(1, 1041, 16, 64, device="cuda", generator=g)
    k = torch.randn(1, 20 * 1041, 16, 64, device="cuda", generator=g)
    v = torch.randn(1, 20 * 1041, 16, 64, device="cuda", generator=g)
    ref = ref64(q, k, v)
    exact = attention(q, k, v)  # TF32 off (fixture): SDPA float32
    assert rel_fro(exact, ref) < 1e-5
    torch.backends.cuda.matmul.allow_tf32 = True
    fast = attention(q, k, v)
    assert 1e-5 < rel_fro(fast, ref) < 5e-3  # the Triton TF32 kernel ran
    old = configure_fast_paths(tf32_attention=False)
    try:
        assert rel_fro(attention(q, k, v), ref) < 1e-5
    finally:
        configure_fast_paths(**old)


def test_split_kv_cudnn_with_remainder_and_merge():
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(1, 1041, 16, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 33 * 1041 + 17, 16, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    ref = ref64(q, k, v)
    for kernel in ("cudnn", "flash", "auto"):
        for splits in (0, 5, 8):
            out = split_kv_attention(q, k, v, splits, kernel)
            assert out.is_contiguous() and out.dtype == torch.bfloat16
            assert rel_fro(out, ref) < 1e-2, (kernel, splits)


def test_fused_qk_norm_rope_matches_torch():
    from stream3r.layers.attention import Attention
    from stream3r.layers.rope import Rope2D

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        a = Attention(1024, 16, qk_norm=True).cuda()
        with torch.no_grad():
            for n in (a.q_norm, a.k_norm):
                n.weight.normal_()
                n.bias.normal_()
        a.to(dtype)
        tab = Rope2D(100).table(28, 37, 5, 64, "cuda")
        x = torch.randn(1, 3 * 1041, 1024, device="cuda", dtype=dtype)
        with torch.inference_mode():
            q, k, v = a.project(x, tab)
            old = configure_fast_paths(norm_rope=False)
            try:
                q0, k0, v0 = a.project(x, tab)
            finally:
                configure_fast_paths(**old)
        tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the torch path rounds after the norm
        assert rel(q, q0) < tol and rel(k, k0) < tol and torch.equal(v, v0), dtype


@pytest.mark.parametrize("mode", ["causal", "window"])
def test_cuda_graph_steps_equal_eager(mode):
    torch.manual_seed(0)
    model = STream3R(img_size=70, embed_dim=128, depth=4, num_heads=2, patch_embed="dinov2", dinov2_depth=2,
                     dinov2_num_heads=2, camera_trunk_depth=2, camera_num_heads=2, dpt_features=32,
                     dpt_out_channels=(16, 32, 64, 64), dpt_intermediate_layers=(0, 1, 2, 3)).cuda().eval()
    x = torch.rand(1, 12, 3, 56, 70, device="cuda")
    with torch.no_grad():
        ref = model(x, mode=mode, window_size=3)
    s = StreamSession(model, mode=mode, window_size=3, cuda_graphs=True, grow_frames=4)
    outs = []
    for i in range(12):
        outs.append(s.forward_stream(x[:, i]))
        if i == 7:  # dropping and re-feeding works with graphs too
            s.drop_last()
            outs[-1] = s.forward_stream(x[:, i])
    from stream3r.session import FullStepGraph, PiecewiseGraph

    pieces = [g for g in s._graphs.values() if isinstance(g, PiecewiseGraph)]
    assert len(pieces) == 2  # first frame, other frames
    assert all(len(g.graphs) == 4 + 2 * 4 + 1 for g in pieces)
    fulls = [g for g in s._graphs.values() if isinstance(g, FullStepGraph)]
    assert len(fulls) == (1 if mode == "window" else 0)  # a full window ring: one graph for the whole step
    for k in KEYS:
        assert rel(torch.cat([o[k] for o in outs], 1), ref[k]) < 1e-3, k


def test_budgeted_keyframe_stream_with_graphs_equals_batch_with_its_visibility():
    """KV-cache budget on CUDA (issue 23): evictions, the full-step graph of a full budgeted cache and
    drop_last, against one batch forward whose frame visibility is the policy's cache content."""
    from functools import partial

    from stream3r.masks import token_mask
    from stream3r.session import FullStepGraph

    torch.manual_seed(0)
    model = STream3R(img_size=70, embed_dim=128, depth=4, num_heads=2, patch_embed="dinov2", dinov2_depth=2,
                     dinov2_num_heads=2, camera_trunk_depth=2, camera_num_heads=2, dpt_features=32,
                     dpt_out_channels=(16, 32, 64, 64), dpt_intermediate_layers=(0, 1, 2, 3)).cuda().eval()
    S, B = 20, 4
    keep = lambda t: t % 2 == 0  # noqa: E731
    x = torch.rand(1, S, 3, 56, 70, device="cuda")
    vis = torch.zeros(S, S, dtype=torch.bool)
    cached: list = []
    for t in range(S):  # the policy: anchor stays, the oldest other frame leaves first
        while len(cached) + 1 > B:
            cached.remove(min(f for f in cached if f != 0))
        vis[t, cached + [t]] = True
        if keep(t):
            cached.append(t)
    P = model.aggregator.tokens_per_frame(56, 70)
    agg, cam = token_mask(vis.cuda(), P), token_mask(vis.cuda(), 1)
    with torch.no_grad():
        ref = model.predict(x, starts_stream=True, aggregator_attend=lambda i: partial(attention, mask=agg),
                            camera_attend=lambda it, i: partial(attention, mask=cam))
    s = StreamSession(model, mode="causal", cuda_graphs=True, grow_frames=2, cache_frames=B)
    outs = []
    for t in range(S):
        outs.append(s.forward_stream(x[:, t]))
        assert s.num_cached_frames <= B
        if not keep(t):
            s.drop_last()
    assert any(isinstance(g, FullStepGraph) for g in s._graphs.values())  # a full budgeted cache: one graph
    for k in KEYS:
        assert rel(torch.cat([o[k] for o in outs], 1), ref[k]) < 1e-3, k


def test_cached_bf16_attention_growing_and_fixed_caches():
    """attention() over a growing cache (FA2 / flash split / cuDNN groups + FA2 tail) and a fixed one
    (FA2, then cuDNN once the shape recurs) against float64."""
    import sys

    A = sys.modules["stream3r.layers.attention"]

    g = torch.Generator(device="cuda").manual_seed(3)
    P = 1041
    q = torch.randn(1, P, 16, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    K = torch.randn(1, 40 * P, 16, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    V = torch.randn_like(K)
    with torch.inference_mode():
        for nf in (2, 5, 15, 16, 17, 25, 40):
            k, v = K[:, :nf * P], V[:, :nf * P]
            assert rel_fro(attention(q, k, v), ref64(q, k, v)) < 1e-2, nf
        k, v = K[:, :6 * P], V[:, :6 * P]
        ref = ref64(q, k, v)
        for _i in range(A.CUDNN_AFTER_CALLS + 2):
            out = attention(q, k, v)
        assert rel_fro(out, ref) < 1e-2
        assert rel_fro(attention(q, k, v, stable=True), ref) < 1e-2
        assert rel_fro(attention(q, k, v, stable=False), ref) < 1e-2


def test_fused_residual_norm_and_upsample_match_torch():
    import torch.nn.functional as F

    from stream3r.layers.triton_fused import add_scale_norm, upsample_bilinear_nhwc

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2)):
        x, y = (torch.randn(1041, 1024, device="cuda", dtype=dtype) for _ in range(2))
        g = torch.rand(1024, device="cuda", dtype=dtype)
        ln = torch.nn.LayerNorm(1024, eps=1e-5).cuda().to(dtype)
        with torch.inference_mode():
            ln.weight.normal_()
            ln.bias.normal_()
            xo, ho = add_scale_norm(x, y, g, ln)
            xr = torch.addcmul(x, y, g)
            assert rel(xo, xr) < tol and rel(ho, ln(xr)) < tol, dtype
        m = torch.randn(1, 256, 112, 148, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        emb = torch.randn(392, 518, 256, device="cuda", dtype=dtype).permute(2, 0, 1)
        for size, add in (((224, 296), None), ((392, 518), emb)):
            out = upsample_bilinear_nhwc(m, size, add)
            ref = F.interpolate(m.float(), size=size, mode="bilinear", align_corners=True)
            if add is not None:
                ref = ref + add.float()
            assert out.is_contiguous(memory_format=torch.channels_last) and rel(out, ref) < tol, (dtype, size)


def test_to_inference_never_holds_a_float32_copy_on_the_gpu():
    torch.manual_seed(0)
    model = STream3R().eval()  # the full model, float32, on the CPU
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model.to_inference("cuda", dtype=torch.bfloat16, heads_dtype=torch.bfloat16)
    torch.cuda.synchronize()
    final = torch.cuda.memory_allocated() - base
    peak = torch.cuda.max_memory_allocated() - base
    n = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters()) * 4
    print(f"to_inference: {n / 1e9:.3f} B parameters, on the GPU {final / 1e9:.3f} GB, peak {peak / 1e9:.3f} GB "
          f"(float32 would be {n * 4 / 1e9:.3f} GB)")
    assert final < n * 2 * 1.05  # bfloat16, plus the few float32 output layers
    assert peak <= final + 2 * largest  # one tensor in flight at a time


def test_mixed_precision_kernels_match_float64():
    """The mixed recipe's kernels: residual + LayerScale + LayerNorm with a float32 stream and a half
    update, LayerNorm of a float32 (strided) stream written in half, half GEMMs with float32 outputs."""
    import torch.nn.functional as F

    from stream3r.layers.block import _mm_out_dtype_mode, linear_to
    from stream3r.layers.triton_fused import add_scale_norm, add_scale_norm_ok, layer_norm_to, layer_norm_to_ok

    torch.manual_seed(0)
    for half, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        x = torch.randn(1041, 1024, device="cuda")
        y = torch.randn(1041, 1024, device="cuda").to(half)
        g = torch.rand(1024, device="cuda")
        ln = torch.nn.LayerNorm(1024).cuda()
        with torch.inference_mode():
            ln.weight.normal_()
            ln.bias.normal_()
            assert add_scale_norm_ok(x, y, g, ln)
            xo, ho = add_scale_norm(x, y, g, ln, half)
            x64 = x.double() + y.double() * g.double()
            assert xo.dtype == torch.float32 and ho.dtype == half
            assert rel(xo, x64) < 1e-6
            h64 = F.layer_norm(xo.double(), (1024,), ln.weight.double(), ln.bias.double(), ln.eps)
            assert rel(ho, h64) < tol, half
            tok = torch.randn(2, 1041, 2048, device="cuda")[:, 5:]  # patch tokens after the special ones
            ln2 = torch.nn.LayerNorm(2048).cuda()
            assert layer_norm_to_ok(tok, ln2)
            out = layer_norm_to(tok, ln2, half)
            assert out.dtype == half and out.is_contiguous() and out.shape == tok.shape
            ref = F.layer_norm(tok.double(), (2048,), ln2.weight.double(), ln2.bias.double(), ln2.eps)
            assert rel(out, ref) < tol
            lin = torch.nn.Linear(4096, 1024).cuda().to(half)
            a = torch.randn(1, 1041, 4096, device="cuda").to(half)
            got = linear_to(lin, a, torch.float32)
            want = F.linear(a.double(), lin.weight.double(), lin.bias.double())
            mode = _mm_out_dtype_mode(a.device, half, torch.float32)
            print(f"{half}: half GEMM with float32 output via {mode}")
            assert mode is not None and got.dtype == torch.float32 and got.shape == (1, 1041, 1024)
            assert rel(got, want) < 1e-5  # float32 accumulation, no rounding of the output to half


def test_default_path_at_least_as_accurate_as_autocast_full_model():
    """On the GPU, the same check as tests/test_stream3r_precision.py at the app's resolution:
    the app's default recipe against float32 vs the same weights under bf16 autocast."""
    from stream3r.precision import default_dtype, prediction_errors, prepare, stream
    from stream3r.synthetic import synthetic_frames, synthetic_model

    frames = synthetic_frames(8, 392, 518, seed=1)
    model = synthetic_model(seed=1).to_inference("cuda", torch.float32, heads_dtype=torch.float32)
    ref = stream(model, frames)  # TF32 off (fixture)
    torch.backends.cudnn.allow_tf32 = True  # torch's default, as the app and upstream's demo run
    up = prediction_errors(stream(model, frames, autocast=torch.bfloat16), ref)
    prepare(model, "cuda", default_dtype("cuda"))
    ours = prediction_errors(stream(model, frames), ref)
    print(f"autocast recipe {up}\nours ({model.precision}) {ours}")
    assert ours["pose_enc"] <= up["pose_enc"] and ours["depth"] <= up["depth"]
