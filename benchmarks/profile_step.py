#!/usr/bin/env python
"""Where does a streaming step's time go?  torch.profiler tables of StreamSession steps.

Profiles (full model, random weights, 392x518, batch 1, bf16 by default):

* causal frame 1 (the first frame of a stream) and frame ``--frames`` (default 200), each once
  with the default CUDA graphs (wall time vs GPU busy time = launch gaps) and once eagerly
  (kernels attributed to components through ``record_function`` labels);
* window(5) at frame 20, likewise.

For each it writes a text file with: the wall time of the step, the summed kernel time, the
per-component CUDA time (DINOv2 backbone, frame blocks, global blocks, cached attention, camera
head, depth head, point head) and the kernel table sorted by CUDA time.

    python benchmarks/profile_step.py --out benchmarks/results/profile_h100
    python benchmarks/profile_step.py --tiny --out /tmp/prof     # CPU, tiny model (script check)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TAG = [""]
COMPONENTS = ("backbone_dinov2", "frame_blocks", "global_blocks", "cached_attention", "camera_head",
              "depth_head", "point_head")


def label_modules(model):
    """record_function ranges around the model's parts (pre/post forward hooks) and the cached attention."""
    import torch

    import stream3r.session as sess_mod

    stack = []

    def pre(name):
        def hook(mod, args, kwargs=None):
            rf = torch.autograd.profiler.record_function("## " + name)
            rf.__enter__()
            stack.append(rf)
        return hook

    def post(mod, args, out):
        stack.pop().__exit__(None, None, None)

    agg = model.aggregator
    parts = [(agg.patch_embed, "backbone_dinov2"), (model.camera_head, "camera_head"),
             (model.depth_head, "depth_head"), (model.point_head, "point_head")]
    parts += [(b, "frame_blocks") for b in agg.frame_blocks] + [(b, "global_blocks") for b in agg.global_blocks]
    for mod, name in parts:
        mod.register_forward_pre_hook(pre(name))
        mod.register_forward_hook(post)
    real = sess_mod.attention

    def labelled(*a, **k):
        with torch.autograd.profiler.record_function("## cached_attention"):
            return real(*a, **k)

    sess_mod.attention = labelled


def profile_step(session, frame, title, out_dir: Path, eager: bool, cuda: bool):
    import torch
    from torch.profiler import ProfilerActivity, profile

    old = session.cuda_graphs
    if eager:
        session.cuda_graphs = False
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        session.forward_stream(frame)
        sync()
        wall = time.perf_counter() - t0
    session.cuda_graphs = old
    ka = prof.key_averages()
    dev_attr = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
    from torch.autograd import DeviceType

    events = prof.events()
    # GPU busy time: device-side events (kernels, memcpy, memset), not the GPU copies of user ranges
    busy_us = sum(e.self_device_time_total for e in events
                  if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    # per component: kernels launched inside the CPU-side range (eager steps; under CUDA graphs only
    # the eager attention calls are attributed)
    comp = {}
    for e in events:
        if e.name.startswith("## ") and e.device_type == DeviceType.CPU:
            t, n = comp.get(e.name[3:], (0.0, 0))
            comp[e.name[3:]] = (t + e.device_time_total / 1e3, n + 1)
    lines = [f"# {title}", f"wall time of the step (profiler on): {wall * 1e3:.2f} ms",
             f"sum of kernel/memcpy time: {busy_us / 1e3:.2f} ms", "",
             "component CUDA time (ms, calls; cached_attention is inside global_blocks / camera_head):"]
    for c in COMPONENTS:
        if c in comp:
            lines.append(f"  {c:18s} {comp[c][0]:9.3f} ms  x{comp[c][1]}")
    lines += ["", ka.table(sort_by=dev_attr, row_limit=45, max_name_column_width=150),
              "", "CPU side (self CPU time):", ka.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=90)]
    text = "\n".join(lines)
    name = title.replace(" ", "_") + TAG[0].replace("(", "").replace(")", "").replace(",", "") + ".txt"
    (out_dir / name).write_text(text + "\n")
    print("\n".join(lines[:14]), flush=True)
    return wall, busy_us / 1e3, comp


def time_steps(session, frames, cuda):
    import torch

    ts = []
    for f in frames:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        session.forward_stream(f)
        if cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return ts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"],
                    help="fp16: the app's default recipe (stream3r.precision.prepare, mixed float16)")
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (checks the script)")
    ap.add_argument("--heads", nargs="+", choices=["camera", "depth", "point"])
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--cache-frames", type=int, default=0,
                    help="also profile keyframe mode (every 5th kept) at this KV-cache budget, cache full")
    args = ap.parse_args(argv)
    TAG[0] = args.tag
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    from stream3r import STream3R, StreamSession

    cuda = not args.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype, torch.float32) if cuda else torch.float32
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.tiny:
        from benchmarks.stream_bench import TINY

        model = STream3R(**TINY)
        H, W = 28, 42
    else:
        with torch.device(dev):
            model = STream3R()
        H, W = 392, 518
    if dtype == torch.float16:
        from stream3r.precision import prepare

        model = prepare(model, dev, dtype)
    else:
        model.to_inference(dev, dtype=dtype, heads_dtype=dtype)
    label_modules(model)
    gen = torch.Generator(device=dev).manual_seed(1)

    def frame():
        return torch.rand(1, 3, H, W, device=dev, generator=gen)

    summary = []
    # ---------------- causal
    s = StreamSession(model, mode="causal", check_values=False, cuda_graphs=cuda, grow_frames=8,
                      heads=args.heads)
    for _ in range(4):
        s.forward_stream(frame())
    s.clear()
    w, b, c = profile_step(s, frame(), f"causal frame 1 graphs {args.dtype}", args.out, eager=False, cuda=cuda)
    summary.append(("causal f1 graphs", w, b))
    s.clear()
    w, b, c = profile_step(s, frame(), f"causal frame 1 eager {args.dtype}", args.out, eager=True, cuda=cuda)
    summary.append(("causal f1 eager", w, b))
    ts = time_steps(s, [frame() for _ in range(args.frames - 2)], cuda)  # frames 2 .. n-1
    print(f"causal frames 2..{args.frames - 1}: first {ts[0] * 1e3:.1f} ms, last5 median "
          f"{statistics.median(ts[-5:]) * 1e3:.1f} ms", flush=True)
    w, b, c = profile_step(s, frame(), f"causal frame {args.frames} graphs {args.dtype}", args.out, eager=False, cuda=cuda)
    summary.append((f"causal f{args.frames} graphs", w, b))
    s.drop_last(1)
    w, b, c = profile_step(s, frame(), f"causal frame {args.frames} eager {args.dtype}", args.out, eager=True, cuda=cuda)
    summary.append((f"causal f{args.frames} eager", w, b))
    s.clear()
    del s
    if cuda:
        torch.cuda.empty_cache()
    # ---------------- window
    s = StreamSession(model, mode="window", window_size=5, check_values=False, cuda_graphs=cuda,
                      heads=args.heads)
    time_steps(s, [frame() for _ in range(19)], cuda)
    w, b, c = profile_step(s, frame(), f"window5 frame 20 graphs {args.dtype}", args.out, eager=False, cuda=cuda)
    summary.append(("window f20 graphs", w, b))
    s.drop_last(1)
    w, b, c = profile_step(s, frame(), f"window5 frame 20 eager {args.dtype}", args.out, eager=True, cuda=cuda)
    summary.append(("window f20 eager", w, b))
    s.clear()
    del s
    if args.cache_frames:
        # ---------------- keyframe mode at its budget: every 5th frame kept, the cache full
        s = StreamSession(model, mode="causal", check_values=False, cuda_graphs=cuda, grow_frames=8,
                          heads=args.heads, cache_frames=args.cache_frames)
        for i in range(5 * args.cache_frames + 3):
            s.forward_stream(frame())
            if i % 5:
                s.drop_last(1)
        K = args.cache_frames
        w, b, c = profile_step(s, frame(), f"keyframe budget{K} graphs {args.dtype}", args.out, eager=False, cuda=cuda)
        summary.append((f"keyframe budget {K} graphs (full cache)", w, b))
        s.drop_last(1)
        ts = time_steps(s, [frame() for _ in range(1)], cuda)
        s.drop_last(1)
        w, b, c = profile_step(s, frame(), f"keyframe budget{K} eager {args.dtype}", args.out, eager=True, cuda=cuda)
        summary.append((f"keyframe budget {K} eager", w, b))
    lines = [f"{args.dtype}, heads {args.heads or 'all'}", "| step | wall ms (profiler on) | kernel ms |", "|---|---|---|"]
    lines += [f"| {n} | {w * 1e3:.2f} | {b:.2f} |" for n, w, b in summary]
    if cuda:
        lines.append(f"\ndevice {torch.cuda.get_device_name()}, torch {torch.__version__}, "
                     f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    (args.out / f"summary{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
