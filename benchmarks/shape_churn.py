#!/usr/bin/env python
"""Cost of a new key length per call (a growing causal KV cache) for each cached-attention kernel.

cuDNN builds (and may runtime-compile) an execution plan per new shape; FA2, SDPA's memory-efficient
kernel and Triton do not.  For nf = 2 .. N frames (1041 tokens each, 16 heads x 64, bf16) this
times one call per kernel with a never-seen key length (wall clock, synchronised), then the same
call again (plan cached).  ``--child`` runs one variant (used with TORCH_CUDNN_SDPA_AVOID_RECOMPILE).

    python benchmarks/shape_churn.py --frames 40
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_variants(names, frames, P=1041):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from stream3r.layers.attention import attention, split_kv_attention

    torch.manual_seed(0)
    h, d = 16, 64
    q = torch.randn(1, P, h, d, device="cuda", dtype=torch.bfloat16)
    K = torch.randn(1, (frames + 1) * P, h, d, device="cuda", dtype=torch.bfloat16)
    V = torch.randn_like(K)
    qc = torch.randn(1, 1, 16, 128, device="cuda", dtype=torch.bfloat16)
    Kc = torch.randn(1, frames + 1, 16, 128, device="cuda", dtype=torch.bfloat16)
    Vc = torch.randn_like(Kc)

    def flash(q, k, v):
        return torch.ops.aten._scaled_dot_product_flash_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                  v.transpose(1, 2))[0]

    def cudnn(q, k, v):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                    v.transpose(1, 2))

    def default(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                v.transpose(1, 2))

    fns = {
        "flash": lambda n: flash(q, K[:, :n * P], V[:, :n * P]),
        "cudnn": lambda n: cudnn(q, K[:, :n * P], V[:, :n * P]),
        "sdpa_default": lambda n: default(q, K[:, :n * P], V[:, :n * P]),
        "attention()": lambda n: attention(q, K[:, :n * P], V[:, :n * P]),
        "split_cudnn_auto8": lambda n: split_kv_attention(q, K[:, :n * P], V[:, :n * P], 8 if n >= 8 else n, "cudnn"),
        "split_flash_auto": lambda n: split_kv_attention(q, K[:, :n * P], V[:, :n * P], 0, "flash"),
        "cam_flash": lambda n: flash(qc, Kc[:, :n], Vc[:, :n]),
        "cam_default": lambda n: default(qc, Kc[:, :n], Vc[:, :n]),
        "cam_attention()": lambda n: attention(qc, Kc[:, :n], Vc[:, :n]),
    }
    out = {}
    with torch.inference_mode():
        for name in names:
            fn = fns[name]
            fn(1)
            torch.cuda.synchronize()
            first, again = [], []
            for n in range(2, frames + 1):
                for lst in (first, again):
                    t0 = time.perf_counter()
                    fn(n)
                    torch.cuda.synchronize()
                    lst.append((time.perf_counter() - t0) * 1e3)
            out[name] = {"first_ms": first, "again_ms": again}
            print(f"{name:20s} new shape: median {sorted(first)[len(first) // 2]:8.2f} ms max {max(first):8.1f} ms"
                  f" | cached: median {sorted(again)[len(again) // 2]:7.3f} ms  first calls: "
                  + " ".join(f"{x:.0f}" for x in first[:40]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--child", nargs="*")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.child is not None:
        print("CHILD " + json.dumps(run_variants(args.child, args.frames)))
        return 0
    res = {"default_env": run_variants(["flash", "cudnn", "sdpa_default", "attention()", "split_cudnn_auto8",
                                        "split_flash_auto", "cam_flash", "cam_default", "cam_attention()"],
                                       args.frames)}
    env = dict(os.environ, TORCH_CUDNN_SDPA_AVOID_RECOMPILE="1")
    print("with TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1:", flush=True)
    p = subprocess.run([sys.executable, __file__, "--frames", str(args.frames), "--child", "cudnn",
                        "split_cudnn_auto8", "cam_default"], env=env, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("CHILD "):
            res["avoid_recompile_env"] = json.loads(line[6:])
        else:
            print(line)
    if p.returncode:
        print(p.stderr[-2000:])
    if args.json:
        args.json.write_text(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
