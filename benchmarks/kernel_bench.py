#!/usr/bin/env python
"""Micro-benchmarks behind benchmarks/NOTES.md (CUDA only): machine ceilings, the cached-attention
kernels at streaming shapes, and the heads' precision / layout variants.

Sections (``--sections``):

* ``ceil``: bf16 and TF32 matmul rates (8192^3) and device-to-device copy bandwidth;
* ``attn``: one streaming attention call (q = one frame, 1041 tokens, 16 heads x 64; keys = n
  frames) with every kernel we have: SDPA (flash / cuDNN / mem-efficient), split-KV over them,
  the Triton split-KV kernel (bf16, and float32 in TF32), a chunked-matmul float32 version;
  time (median, ``triton.testing.do_bench``), TFLOP/s (4 * Nq * Nk * h * d) and the error
  against a float64 reference;
* ``heads``: DPT and camera heads of the full model on one frame's features, in the session's
  current precision (bf16 weights, fp32 autocast) and in bf16, channels_last, cudnn.benchmark;
  GPU time by CUDA-graph replay, error against float32 weights with TF32 off.

    python benchmarks/kernel_bench.py --out /tmp/kb
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = {}


def log(*a):
    print(*a, flush=True)


def bench(fn, warmup=25, rep=100):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def graph_time(fn, iters=20):
    """GPU time of fn by CUDA-graph replay (ms, median of iters)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def rel_fro(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------------ ceilings
def sec_ceil():
    import torch

    n = 8192
    for name, dt, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", dtype=dt)
        b = torch.randn(n, n, device="cuda", dtype=dt)
        ms = bench(lambda a=a, b=b: a @ b)
        RESULTS[f"ceil_matmul_{name}_tflops"] = 2 * n**3 / ms / 1e9
        log(f"matmul {name} 8192^3: {ms:.3f} ms = {2 * n**3 / ms / 1e9:.0f} TFLOP/s")
        del a, b
    torch.backends.cuda.matmul.allow_tf32 = True
    x = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    y = torch.empty_like(x)
    ms = bench(lambda x=x, y=y: y.copy_(x))
    RESULTS["ceil_copy_tbs"] = 2 * x.numel() * 2 / ms / 1e9
    log(f"d2d copy: {2 * x.numel() * 2 / ms / 1e9:.2f} TB/s (read+write)")
    del x, y
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ attention
def ref64(q, k, v):
    """float64 reference, one head at a time (bounded memory)."""
    import torch

    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    scale = q.shape[-1] ** -0.5
    for h in range(q.shape[2]):
        qh, kh, vh = q[0, :, h].double(), k[0, :, h].double(), v[0, :, h].double()
        p = torch.softmax((qh @ kh.T) * scale, dim=-1)
        out[0, :, h] = p @ vh
    return out


def chunked_tf32(q, k, v, chunk=16384):
    """float32 attention by chunks of keys with TF32 matmuls, merged by log-sum-exp (torch ops only)."""
    import torch

    qb = q[0].transpose(0, 1)  # [h, nq, d]
    scale = q.shape[-1] ** -0.5
    outs, lses = [], []
    for a in range(0, k.shape[1], chunk):
        kb = k[0, a:a + chunk].transpose(0, 1)
        vb = v[0, a:a + chunk].transpose(0, 1)
        s = torch.bmm(qb, kb.transpose(1, 2)).mul_(scale)
        lse = torch.logsumexp(s, dim=-1)
        s.sub_(lse[..., None]).exp_()
        outs.append(torch.bmm(s, vb))
        lses.append(lse)
    o, lse = torch.stack(outs), torch.stack(lses)
    w = torch.softmax(lse, dim=0)
    return (o * w[..., None]).sum(0).transpose(0, 1)[None]


def ptx_info():
    from stream3r.layers import triton_attention as ta

    k = getattr(ta._launch, "last", None)
    if k is None:
        return ""
    try:
        ptx = k.asm["ptx"]
    except Exception:  # noqa: BLE001 - triton internals vary by version: the table shows "?"
        return "?"
    return f"wgmma={ptx.count('wgmma.mma_async')} mma.sync={ptx.count('mma.sync')}"


def sec_attn(frames_list):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from stream3r.layers import triton_attention as ta
    from stream3r.layers.attention import attention, sdpa_attention, split_kv_attention

    torch.backends.cuda.matmul.allow_tf32 = True
    nq, h, d, P = 1041, 16, 64, 1041
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []

    def candidates(q, k, v, dt, nf):
        """The kernels to time on one (q, k, v): name -> a call (closures over this call's tensors)."""
        cands = {"attention() dispatch (new default)": lambda: attention(q, k, v)}
        if dt == torch.bfloat16:
            def sd(backend):
                def f():
                    with sdpa_kernel([backend]):
                        return sdpa_attention(q, k, v)
                return f
            cands["sdpa flash"] = sd(SDPBackend.FLASH_ATTENTION)
            cands["sdpa cudnn"] = sd(SDPBackend.CUDNN_ATTENTION)
            cands["split flash auto (old default)"] = lambda: split_kv_attention(q, k, v, 0, "flash")
            for sp in ((0, 4, 6, 8, 10, 12) if nf >= 100 else (0, 4)):
                cands[f"split cudnn {sp or 'auto'}"] = (lambda sp=sp: split_kv_attention(q, k, v, sp, "cudnn"))
        else:
            def eff():
                with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                    return sdpa_attention(q, k, v)
            cands["sdpa efficient (old, no split)"] = eff
            cands["split efficient auto (old default)"] = lambda: split_kv_attention(q, k, v, 0, "efficient")
            cfgs = ((128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 4, 3), (128, 32, 8, 3), (64, 64, 4, 4),
                    (128, 128, 8, 2))
            for cfg in cfgs:
                for sp in ((0, 2, 8, 16) if nf >= 100 else (0,)):
                    def tr(cfg=cfg, sp=sp):
                        ta.configure_triton_attention(4, *cfg)
                        return ta.triton_attention(q, k, v, sp)
                    cands[f"triton tf32 {cfg} splits {sp or 'auto'}"] = tr
            if 1 < nf <= 40:
                cands["chunked matmul tf32 (torch)"] = lambda: chunked_tf32(q, k, v)
        return cands

    for nf in frames_list:
        nk = nf * P
        flops = 4 * nq * nk * h * d
        for dt_name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            q = torch.randn(1, nq, h, d, device="cuda", dtype=dt, generator=g)
            k = torch.randn(1, nk, h, d, device="cuda", dtype=dt, generator=g)
            v = torch.randn(1, nk, h, d, device="cuda", dtype=dt, generator=g)
            # reference: float64 for small nk, else fp32 mem-efficient SDPA (exact fp32 maths)
            ref = ref64(q, k, v) if nf <= 40 else sdpa_attention(q.float(), k.float(), v.float())
            cands = candidates(q, k, v, dt, nf)
            for name, fn in cands.items():
                try:
                    out = fn()
                    torch.cuda.synchronize()
                    err = rel_fro(out, ref)
                    info = ptx_info() if "triton" in name else ""
                    ms = bench(fn, warmup=10, rep=60)
                except Exception as e:  # noqa: BLE001 - a kernel that fails is a row of the table, not the end
                    log(f"  {nf:4d} frames {dt_name} {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
                    rows.append(dict(frames=nf, dtype=dt_name, kernel=name, error=str(e)[:300]))
                    continue
                finally:
                    ta.configure_triton_attention(4, 128, 32, 8, 3)
                tfl = flops / ms / 1e9
                rows.append(dict(frames=nf, dtype=dt_name, kernel=name, ms=ms, tflops=tfl, rel_err=err, ptx=info))
                log(f"  {nf:4d} frames {dt_name} {name:44s} {ms:8.3f} ms {tfl:6.0f} TFLOP/s  rel err {err:.2e} {info}")
            del q, k, v, ref, cands
            torch.cuda.empty_cache()
    RESULTS["attn"] = rows


# ------------------------------------------------------------------------------------ heads
def sec_heads():
    import torch

    from stream3r import STream3R

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = STream3R()
    model.to_inference("cuda", dtype=torch.bfloat16, heads_dtype=torch.bfloat16)
    x = torch.rand(1, 1, 3, 392, 518, device="cuda")
    cfg = model.config
    with torch.inference_mode():
        feats = model.aggregator(x, starts_stream=True)
    keep = list(cfg.dpt_intermediate_layers)
    psi = model.aggregator.patch_start_idx
    cam_in = feats[cfg.depth - 1][:, :, 0]
    dense16 = {i: feats[i] for i in keep}
    dense32 = {i: feats[i].float() for i in keep}
    ref_depth = copy.deepcopy(model.depth_head).float()
    ref_point = copy.deepcopy(model.point_head).float()
    ref_cam = copy.deepcopy(model.camera_head).float()
    rows = []

    def run_variant(name, fn, ref_out):
        with torch.inference_mode():
            out = fn()
            ms = graph_time(fn)
        outs = out if isinstance(out, tuple) else (out,)
        refs = ref_out if isinstance(ref_out, tuple) else (ref_out,)
        errs = [rel(o, r) for o, r in zip(outs, refs)]
        errs_f = [rel_fro(o, r) for o, r in zip(outs, refs)]
        rows.append(dict(variant=name, ms=ms, rel_max=errs, rel_fro=errs_f))
        log(f"  {name:48s} {ms:7.3f} ms  rel max {['%.1e' % e for e in errs]}  rel fro {['%.1e' % e for e in errs_f]}")

    # float32 reference with TF32 off
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        rd = ref_depth(dense32, psi, 392, 518)
        rp = ref_point(dense32, psi, 392, 518)
        rc = ref_cam(cam_in.float())
        ms = graph_time(lambda: ref_depth(dense32, psi, 392, 518))
    log(f"  depth head fp32 weights, TF32 off: {ms:.3f} ms")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    run_variant("depth fp32 weights TF32 (upstream-like)", lambda: ref_depth(dense32, psi, 392, 518), rd)
    ac = lambda: torch.autocast("cuda", dtype=torch.float32, cache_enabled=False)  # noqa: E731

    def cur_depth():
        with ac():
            return model.depth_head(dense32, psi, 392, 518)
    run_variant("depth bf16 weights fp32 autocast (current)", cur_depth, rd)
    run_variant("depth bf16", lambda: model.depth_head(dense16, psi, 392, 518), rd)
    run_variant("point bf16", lambda: model.point_head(dense16, psi, 392, 518), rp)
    torch.backends.cudnn.benchmark = True
    run_variant("depth bf16 cudnn.benchmark", lambda: model.depth_head(dense16, psi, 392, 518), rd)
    cl = copy.deepcopy(model.depth_head).to(memory_format=torch.channels_last)
    run_variant("depth bf16 channels_last cudnn.benchmark", lambda: cl(dense16, psi, 392, 518), rd)
    torch.backends.cudnn.benchmark = False
    run_variant("depth bf16 channels_last", lambda: cl(dense16, psi, 392, 518), rd)

    def cur_cam():
        with ac():
            return model.camera_head(cam_in.float())
    run_variant("camera fp32 weights TF32", lambda: ref_cam(cam_in.float()), rc)
    run_variant("camera bf16 weights fp32 autocast (current)", cur_cam, rc)
    run_variant("camera bf16", lambda: model.camera_head(cam_in), rc)
    RESULTS["heads"] = rows
    # the aggregator alone (one frame, full attention = no cache), for scale
    with torch.inference_mode():
        ms = graph_time(lambda: model.aggregator(x, starts_stream=True, keep_layers=keep + [cfg.depth - 1]))
    RESULTS["aggregator_frame1_ms"] = ms
    log(f"  aggregator alone, one frame (graph replay): {ms:.3f} ms")
    with torch.inference_mode():
        ms = graph_time(lambda: model.aggregator.patch_embed(x[0]))
    RESULTS["dinov2_ms"] = ms
    log(f"  DINOv2 alone (graph replay): {ms:.3f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sections", nargs="+", default=["ceil", "attn", "heads"])
    ap.add_argument("--attn-frames", nargs="+", type=int, default=[1, 6, 20, 200])
    args = ap.parse_args(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    RESULTS["device"] = torch.cuda.get_device_name()
    RESULTS["torch"] = torch.__version__
    RESULTS["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for sec in args.sections:
        log(f"== {sec}")
        t0 = time.time()
        try:
            {"ceil": sec_ceil, "attn": lambda: sec_attn(args.attn_frames), "heads": sec_heads}[sec]()
        except Exception as e:  # noqa: BLE001 - a section that fails must not lose the others
            import traceback

            traceback.print_exc()
            RESULTS[f"{sec}_error"] = repr(e)
        log(f"   ({time.time() - t0:.0f} s)")
        (args.out / "kernel_bench.json").write_text(json.dumps(RESULTS, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
