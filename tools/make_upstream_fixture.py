#!/usr/bin/env python
"""Record the reference STream3R implementation's outputs on small random models (test fixture).

Run it in its own process with the upstream code importable, e.g.::

    PYTHONPATH=/work/upstream python tools/make_upstream_fixture.py

The upstream package is also called ``stream3r``: never import it in the same process as ours.
This tool imports only the upstream one.

What it does: builds the upstream network with small sizes (the upstream ``STream3R.__init__``
hard-codes the full size, so the tool assembles a module with the same attribute names from
upstream's ``STreamAggregator``, ``DinoVisionTransformer``, ``CameraHead`` and ``DPTHead``), fills
every parameter with random values (LayerScale gammas, tokens and norms included, so nothing is
trivially 0 or 1), runs it in float32 on CPU on random inputs in "full", "causal" and "window"
modes and through upstream's ``StreamSession`` (causal), and saves weights, inputs and outputs
to ``tests/fixtures/stream3r/upstream_small.safetensors`` with the configurations in
``upstream_small.json`` (config keys are *our* ``STream3RConfig`` fields).

Models:
* ``A``: DINOv2 patch embed (1 block), img_size 42 (3x3 positional grid).  Cases: 7 frames of
  28x42 (bicubic pos-embed interpolation; window (5) differs from causal at frame 6; all modes
  + upstream streaming), 2 frames of 42x42 (the training grid: no interpolation; full mode),
  batch 2 x 2 frames of 28x42 (causal).
* ``B``: conv patch embed, 3 frames of 28x28, causal.

For cases with streaming, the upstream batch "causal" output is checked against upstream's
streaming output (max relative difference written to the json, ~1e-6) and only the streaming
one is stored (``<case>.stream_causal.*``), to keep the file small: it is the reference for our
batch causal and our streaming outputs alike.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "stream3r" / "upstream_small.safetensors"

MODELS = {
    "A": dict(img_size=42, patch_size=14, embed_dim=24, depth=2, num_heads=2, patch_embed="dinov2",
              dinov2_depth=1, dinov2_num_heads=2, camera_trunk_depth=2, camera_num_heads=4, camera_mlp_ratio=2.0,
              dpt_features=8, dpt_out_channels=[8, 16, 24, 24], dpt_intermediate_layers=[0, 1, 0, 1]),
    "B": dict(img_size=28, patch_size=14, embed_dim=16, depth=2, num_heads=2, patch_embed="conv",
              camera_trunk_depth=1, camera_num_heads=2, camera_mlp_ratio=2.0, dpt_features=8,
              dpt_out_channels=[4, 8, 8, 8], dpt_intermediate_layers=[1, 0, 0, 1]),
}
# name -> (model, batch, frames, H, W, batch modes, stream causal)
CASES = {
    "A_seq": ("A", 1, 7, 28, 42, ("full", "causal", "window"), True),
    "A_square": ("A", 1, 2, 42, 42, ("full",), False),
    "A_batch": ("A", 2, 2, 28, 42, ("causal",), False),
    "B_seq": ("B", 1, 3, 28, 28, ("causal",), False),
}


def build_upstream(cfg: dict) -> nn.Module:
    """Upstream STream3R with small sizes (same attribute names as upstream's __init__)."""
    from stream3r.models.components.aggregator.streamaggregator import STreamAggregator
    from stream3r.models.components.heads.camera_head import CameraHead
    from stream3r.models.components.heads.dpt_head import DPTHead
    from stream3r.models.components.layers import MemEffAttention, NestedTensorBlock
    from stream3r.models.components.layers.vision_transformer import DinoVisionTransformer
    from stream3r.models.stream3r import STream3R

    model = STream3R.__new__(STream3R)
    nn.Module.__init__(model)
    agg = STreamAggregator(img_size=cfg["img_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"],
                           depth=cfg["depth"], num_heads=cfg["num_heads"], patch_embed="conv")
    if cfg["patch_embed"] != "conv":
        agg.patch_embed = DinoVisionTransformer(
            img_size=cfg["img_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"],
            depth=cfg["dinov2_depth"], num_heads=cfg["dinov2_num_heads"], mlp_ratio=4,
            block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), num_register_tokens=4,
            interpolate_antialias=True, interpolate_offset=0.0, block_chunks=0, init_values=1.0)
        agg.patch_embed.mask_token.requires_grad_(False)
    model.aggregator = agg
    dim2 = 2 * cfg["embed_dim"]
    model.camera_head = CameraHead(dim_in=dim2, trunk_depth=cfg["camera_trunk_depth"], num_heads=cfg["camera_num_heads"],
                                   mlp_ratio=cfg["camera_mlp_ratio"])
    dpt = dict(features=cfg["dpt_features"], out_channels=list(cfg["dpt_out_channels"]),
               intermediate_layer_idx=list(cfg["dpt_intermediate_layers"]))
    model.point_head = DPTHead(dim_in=dim2, output_dim=4, activation="inv_log", conf_activation="expp1", **dpt)
    model.depth_head = DPTHead(dim_in=dim2, output_dim=2, activation="exp", conf_activation="expp1", **dpt)
    model.freeze = "none"
    return model.eval()


@torch.no_grad()
def randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Random values for every parameter, scaled so activations stay O(1)."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma":  # LayerScale
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.1)
        elif name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "q_norm.weight", "k_norm.weight",
                            "token_norm.weight", "trunk_norm.weight")):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        elif leaf == "bias":
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        elif p.dim() >= 2 and leaf == "weight":  # linear / conv: ~unit gain
            fan_in = p.shape[1] * (math.prod(p.shape[2:]) if p.dim() > 2 else 1)
            if "resize_layers" in name and p.dim() == 4 and p.shape[2] in (2, 4):  # transposed conv [in, out, k, k]
                fan_in = p.shape[0]
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        else:  # tokens, positional embeddings, other vectors
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))


STREAM_VS_BATCH: dict = {}


def run_case(model: nn.Module, images: torch.Tensor, modes, stream: bool) -> dict:
    from stream3r.stream_session import StreamSession

    keys = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
    out = {}
    with torch.no_grad():
        for mode in modes:
            pred = model(images, mode=mode)
            for k in keys:
                out[f"{mode}.{k}"] = pred[k].contiguous()
        if stream:
            sess = StreamSession(model, mode="causal")
            for i in range(images.shape[1]):
                pred = sess.forward_stream(images[:, i])
            for k in keys:
                out[f"stream_causal.{k}"] = pred[k].contiguous()
                ref = out.pop(f"causal.{k}", None)
                if ref is not None:
                    rel = float((pred[k] - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                    STREAM_VS_BATCH[k] = max(STREAM_VS_BATCH.get(k, 0.0), rel)
                    if rel > 1e-4:
                        sys.exit(f"upstream streaming != upstream batch causal for {k}: rel {rel:.2e}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    import stream3r as upstream_pkg  # the upstream package (PYTHONPATH)

    if not (Path(upstream_pkg.__file__).parent / "stream_session.py").exists():
        sys.exit("this needs the *upstream* stream3r on PYTHONPATH (e.g. PYTHONPATH=/work/upstream)")
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(args.seed)
    tensors = {}
    models = {}
    for name, cfg in MODELS.items():
        model = build_upstream(cfg)
        randomise(model, gen)
        models[name] = model
        for k, v in model.state_dict().items():
            tensors[f"{name}.param.{k}"] = v.contiguous().clone()
    for case, (mname, B, S, H, W, modes, stream) in CASES.items():
        images = torch.rand(B, S, 3, H, W, generator=gen)
        tensors[f"{case}.images"] = images
        for k, v in run_case(models[mname], images, modes, stream).items():
            tensors[f"{case}.{k}"] = v
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out))
    meta = {
        "generated_by": "tools/make_upstream_fixture.py",
        "upstream": str(Path(upstream_pkg.__file__).parent),
        "torch": torch.__version__,
        "seed": args.seed,
        "models": MODELS,
        "upstream_stream_vs_batch_causal_rel_err": STREAM_VS_BATCH,
        "cases": {k: {"model": m, "batch": b, "frames": s, "height": h, "width": w, "modes": list(md),
                      "stream_causal": st, "window_size": 5} for k, (m, b, s, h, w, md, st) in CASES.items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
