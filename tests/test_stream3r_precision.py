"""The app's accelerator precision recipe is at least as faithful as upstream's bf16 autocast.

Full-size STream3R (the official checkpoint's 1403 keys and shapes) with seeded synthetic weights
(:mod:`stream3r.synthetic`, a tame initialisation), 12 frames of a synthetic video at 28x42,
streamed one frame at a time through a causal StreamSession on the CPU:

* reference: float32;
* upstream's recipe: the same float32 weights under ``torch.autocast(bfloat16)`` (heads outside
  it, as upstream's heads run in a float32 autocast region), streamed as upstream's evaluation does;
* ours: the model prepared exactly as the app prepares it for CUDA (``model.dtype: auto``:
  :func:`stream3r.precision.default_dtype` and :func:`stream3r.precision.prepare`, which the
  frontend calls: checked below), run on the CPU.

The bound is the autocast recipe's error measured here, on the same weights and frames, for the
pose encoding and the depth.  The GPU measurement (392x518, 24 frames, upstream's own code) is
``benchmarks/precision_bench.py``.  About 30 s on one core; ~5 GB of memory.  On the CPU the
float16 matmuls and convolutions widen to float32 (:mod:`stream3r.layers.half_cpu`: the products
and float32 accumulation of a CUDA half GEMM), so the recipe runs at float32 speed.
"""
from __future__ import annotations

import pytest
import torch

from stream3r import STream3R
from stream3r.precision import default_dtype, format_table, prediction_errors, prepare, stream
from stream3r.synthetic import synthetic_frames, synthetic_model, synthetic_shapes

FRAMES, H, W = 12, 28, 42  # 2 x 3 patches + 5 special tokens per frame: the model's weights dominate the cost


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One intra-op thread: as fast here (the cost is streaming ~2.4 GB of weights per frame) and
    immune to OpenMP spin-waits on a busy machine, which made two threads 3-5x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_synthetic_weights_have_the_official_layout():
    from pathlib import Path

    rows = [ln.split("\t") for ln in (Path(__file__).parent / "fixtures" / "stream3r" / "checkpoint_keys.tsv")
            .read_text().splitlines() if ln.strip()]
    official = {name: tuple(int(d) for d in shape.split(",")) for name, shape, _ in rows}
    assert synthetic_shapes() == official


def test_synthetic_weights_are_seeded_per_tensor():
    from stream3r.synthetic import synthetic_tensor

    a = synthetic_tensor("aggregator.frame_blocks.3.attn.qkv.weight", (3072, 1024), seed=5)
    b = synthetic_tensor("aggregator.frame_blocks.3.attn.qkv.weight", (3072, 1024), seed=5)
    c = synthetic_tensor("aggregator.frame_blocks.4.attn.qkv.weight", (3072, 1024), seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.std()) - 1024 ** -0.5) < 1e-3  # N(0, 1 / fan_in)
    g = synthetic_tensor("aggregator.global_blocks.0.ls1.gamma", (1024,), seed=5)
    assert (g > 0).all() and 0.15 < float(g.mean()) < 0.25
    n = synthetic_tensor("camera_head.trunk_norm.weight", (2048,), seed=5)
    assert abs(float(n.mean()) - 1) < 0.02


@pytest.fixture(scope="module")
def errors():
    torch.manual_seed(0)
    frames = synthetic_frames(FRAMES, H, W, seed=0)
    model = synthetic_model(seed=0)
    with torch.inference_mode():
        # float32 reference: one causal batch pass (streaming equals batch in float32 to ~1e-6,
        # tests/test_stream3r_upstream.py), the cheapest way to the reference on 2 cores
        ref = model(frames[None], mode="causal")
    rows = {"upstream recipe: float32 weights, bf16 autocast": prediction_errors(
        stream(model, frames, autocast=torch.bfloat16), ref)}
    prepare(model, "cpu", default_dtype("cuda"))  # the app's CUDA recipe, in place (no second 4.8 GB copy)
    rows[f"ours: app default on CUDA ({model.precision})"] = prediction_errors(stream(model, frames), ref)
    print("\n" + format_table(rows))
    return rows


def test_default_accelerator_path_is_at_least_as_accurate_as_upstream_autocast(errors):
    (_, upstream), (_, ours) = errors.items()
    for key in ("pose_enc", "depth"):
        assert ours[key] <= upstream[key], (key, ours[key], upstream[key])
    assert ours["rot_max_deg"] <= upstream["rot_max_deg"]
    # the comparison is meaningful: autocast's error is bf16-sized, not zero or broken
    assert 1e-4 < upstream["pose_enc"] < 5e-2 and 1e-4 < upstream["depth"] < 5e-2


def test_mixed_recipe_dtypes():
    """The mixed recipe casts only linear / conv weights; the residual stream stays float32."""
    cfg = dict(img_size=28, embed_dim=16, depth=2, num_heads=2, patch_embed="dinov2", dinov2_depth=1,
               dinov2_num_heads=2, camera_trunk_depth=1, camera_num_heads=2, dpt_features=8,
               dpt_out_channels=(4, 8, 8, 8), dpt_intermediate_layers=(0, 1, 0, 1))
    torch.manual_seed(0)
    ref = STream3R(**cfg).eval()
    x = torch.rand(1, 2, 3, 28, 28)
    with torch.no_grad():
        want = ref(x)
    for dtype in (torch.float16, torch.bfloat16):
        m = STream3R(**cfg)
        m.load_state_dict(ref.state_dict())
        m.to_inference("cpu", dtype)
        agg, cam, dpt = m.aggregator, m.camera_head, m.depth_head
        assert m.precision == f"mixed-{str(dtype)[6:]}" and m.compute_dtype == dtype
        assert agg.frame_blocks[0].attn.qkv.weight.dtype == dtype and agg.patch_embed.patch_embed.proj.weight.dtype == dtype
        for t in (agg.camera_token, agg.frame_blocks[0].norm1.weight, agg.frame_blocks[0].ls1.gamma,
                  agg.frame_blocks[0].attn.q_norm.weight, agg.patch_embed.pos_embed, agg._resnet_mean,
                  cam.trunk[0].norm1.weight, cam.pose_branch.fc2.weight):
            assert t.dtype == torch.float32
        assert cam.trunk[0].mlp.fc1.weight.dtype == dtype  # camera head mixed like the trunk
        # DPT heads ("auto"): float16 mixed (float32 norm and last conv), float32 with bfloat16
        assert dpt.projects[0].weight.dtype == (dtype if dtype == torch.float16 else torch.float32)
        assert dpt.norm.weight.dtype == dpt.scratch.output_conv2[2].weight.dtype == torch.float32
        assert torch.equal(agg.frame_blocks[0].norm1.weight, ref.aggregator.frame_blocks[0].norm1.weight)
        with torch.no_grad():
            feats = agg(x, keep_layers=[1])
            out = m(x)
        assert feats[1].dtype == torch.float32  # the residual stream
        for k, v in out.items():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
            assert float((v - want[k]).abs().max() / want[k].abs().max()) < 0.05, k
    # mixed=False: the earlier all-half aggregator
    m = STream3R(**cfg)
    m.load_state_dict(ref.state_dict())
    m.to_inference("cpu", torch.bfloat16, heads_dtype=torch.bfloat16, mixed=False)
    assert m.precision == "bfloat16" and m.aggregator.frame_blocks[0].norm1.weight.dtype == torch.bfloat16
    assert m.depth_head.projects[0].weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown heads"):
        m.to_inference("cpu", torch.bfloat16, heads_dtype={"dpt": torch.float32})


def test_the_app_uses_the_library_recipe(monkeypatch):
    """``model.dtype: auto`` on CUDA is the recipe measured above, prepared by the same function."""
    from slam3r_plugins import frontend_stream3r as fe

    assert fe.resolve_dtype("auto", "cuda") == default_dtype("cuda") == torch.float16
    assert fe.resolve_dtype("auto", "cpu") == torch.float32
    calls = []
    monkeypatch.setattr("stream3r.precision.prepare", lambda model, device, dtype: calls.append((device, dtype)) or model)
    model = STream3R(img_size=28, embed_dim=16, depth=1, num_heads=2, patch_embed="conv", camera_trunk_depth=1,
                     camera_num_heads=2, dpt_features=8, dpt_out_channels=(4, 8, 8, 8),
                     dpt_intermediate_layers=(0, 0, 0, 0))
    fe.prepare_model(model, "cuda:0", torch.float16)
    assert calls == [("cuda:0", torch.float16)]
