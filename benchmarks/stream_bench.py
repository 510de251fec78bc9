#!/usr/bin/env python
"""Per-frame time and GPU memory of StreamSession, in the layout of the upstream README tables.

Streams N frames (default 200) of random 392x518 images through a STream3R with random weights
(the full model by default) for every mode and dtype asked for, one frame per call, and prints
seconds per frame and peak GB allocated at frames 1, 20, 40, 80, 100, 120, 140, 180, 200
(median over the frames n-2 .. n+2 around each point; frame 1 alone).  A JSON file gets the
device, torch version, date, git commit, arguments and every per-frame time and memory figure.

Modes: ``causal``, ``window`` (``--window-size``, default 5) and ``keyframe`` (causal where only
every ``--keyframe-every``-th frame stays in the cache: the others are dropped with
``drop_last`` right after their step, as a keyframe policy does).

Timing: each frame is generated on the GPU just before its step (not timed); each step is timed from the call to the
end of a ``torch.cuda.synchronize()`` (wall clock; CUDA events give the same within noise), after
a warm-up stream of ``--warmup`` frames.  Memory: ``torch.cuda.max_memory_allocated()`` with the
peak reset before each frame.

``--upstream PATH`` also benchmarks the upstream StreamSession (causal / window, fp32 or bf16
autocast as the upstream README does) in a separate process with ``PYTHONPATH=PATH`` (both
packages are called ``stream3r``, so they never share a process).

Examples::

    python benchmarks/stream_bench.py --modes causal window keyframe --dtypes fp16 bf16 fp32
    python benchmarks/stream_bench.py --modes causal --dtypes bf16 --upstream /path/to/STream3R
    python benchmarks/stream_bench.py --cpu-smoke          # tiny model on CPU, a few seconds (CI)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from _provenance import git_commit  # benchmarks/_provenance.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
POINTS = (1, 20, 40, 80, 100, 120, 140, 180, 200)
TINY = dict(img_size=28, embed_dim=32, depth=2, num_heads=2, patch_embed="conv", camera_trunk_depth=1,
            camera_num_heads=2, dpt_features=16, dpt_out_channels=(8, 16, 32, 32), dpt_intermediate_layers=(0, 1, 0, 1))


# ------------------------------------------------------------------------------------ helpers
def points_for(n: int) -> List[int]:
    pts = [p for p in POINTS if p <= n]
    return pts if pts and pts[-1] == n else pts + [n]


def summarise(values: List[float], n_points: List[int]) -> Dict[str, float]:
    """Median of values[n-3 .. n+1] (frames n-2 .. n+2, 1-based) per point; frame 1 alone."""
    out = {}
    for p in n_points:
        if p == 1:
            out[str(p)] = values[0]
        else:
            lo, hi = max(1, p - 2), min(len(values), p + 2)
            out[str(p)] = statistics.median(values[lo - 1: hi])
    return out


def parse_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


# ------------------------------------------------------------------------------------ ours
def bench_ours(args, mode: str, dtype_name: str) -> Dict[str, Any]:
    import torch

    sys.path.insert(0, str(REPO))
    from stream3r import STream3R, StreamSession, set_compile
    from stream3r.layers.attention import configure_fast_paths, configure_split_kv

    set_compile(args.compile)
    configure_split_kv(enabled=not args.no_split_kv)
    configure_fast_paths(norm_rope=not args.no_triton, tf32_attention=not args.no_triton)

    cuda = not args.cpu_smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = parse_dtype(dtype_name)
    torch.manual_seed(0)
    cfg = TINY if args.cpu_smoke else {}
    with torch.device(device):
        model = STream3R(**cfg)
    heads_dtype = {"fp32": torch.float32, "same": dtype, "auto": "auto"}[args.heads_dtype]
    model.to_inference(device, dtype=dtype, heads_dtype=heads_dtype, mixed=not args.unmixed)
    H, W = (28, 42) if args.cpu_smoke else (args.height, args.width)
    n = args.frames
    gen = torch.Generator(device=device).manual_seed(1)

    def next_frame():  # made on the device just before its step (not timed, not kept)
        return torch.rand(1, 3, H, W, device=device, generator=gen)
    sess_mode = "causal" if mode == "keyframe" else mode
    kept = (n + args.keyframe_every - 1) // args.keyframe_every if mode == "keyframe" else n
    max_frames = kept if (args.preallocate and sess_mode == "causal") else None
    session = StreamSession(model, mode=sess_mode, window_size=args.window_size, max_frames=max_frames,
                            grow_frames=args.grow_frames, check_values=False, heads=args.heads,
                            cuda_graphs=not args.no_graphs and not args.cpu_smoke,
                            cache_frames=args.cache_frames if sess_mode == "causal" else None)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # warm-up (kernels, cuDNN autotuning, allocator)
    for _ in range(min(args.warmup, n)):
        session.forward_stream(next_frame())
    sync()
    session.clear()
    if cuda:
        torch.cuda.empty_cache()
    times, peaks, reserved, cache = [], [], [], []
    for i in range(n):
        frame = next_frame()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        out = session.forward_stream(frame)
        if args.to_host:
            out = {k: v.to("cpu", non_blocking=False) for k, v in out.items()}
        sync()
        times.append(time.perf_counter() - t0)
        if mode == "keyframe" and i % args.keyframe_every:
            session.drop_last(1)
        peaks.append(torch.cuda.max_memory_allocated() if cuda else 0)
        reserved.append(torch.cuda.max_memory_reserved() if cuda else 0)
        cache.append(session.cache_bytes)
        del out
    tag = (dtype_name + (f"-compile:{args.compile}" if args.compile else "") + ("-eager" if args.no_graphs else "")
           + ("-nosplit" if args.no_split_kv else "") + ("-cudnnbench" if args.cudnn_benchmark else "")
           + ("-fp32heads" if args.heads_dtype == "fp32" and dtype_name != "fp32" else "")
           + ("-halfheads" if args.heads_dtype == "same" and dtype_name != "fp32" else "")
           + ("-unmixed" if args.unmixed and dtype_name != "fp32" else "")
           + ("-notriton" if args.no_triton else "")
           + (f"-cache{args.cache_frames}" if args.cache_frames and sess_mode == "causal" else "")
           + ("" if args.heads is None or tuple(args.heads) == ("camera", "depth", "point") else "-" + "+".join(args.heads)))
    return {"impl": "ours", "mode": mode, "dtype": tag, "frame_time_s": times, "peak_mem_bytes": peaks,
            "peak_reserved_bytes": reserved,
            "cache_bytes": cache, "cached_frames_end": session.num_cached_frames}


# ------------------------------------------------------------------------------------ upstream
UPSTREAM_WORKER = r"""
import json, sys, time, torch
args = json.loads(sys.argv[1])
import stream3r
assert stream3r.__file__.startswith(args["path"]), ("not the upstream package", stream3r.__file__)
from stream3r.models.stream3r import STream3R
from stream3r.stream_session import StreamSession
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
dev = torch.device("cuda")
torch.manual_seed(0)
model = STream3R().to(dev).eval()  # (its buffers ignore a device context)
n = args["frames"]
gen = torch.Generator(device=dev).manual_seed(1)
amp = args["dtype"] == "bf16"
def run(k, record):
    sess = StreamSession(model, mode=args["mode"])
    times, peaks, reserved = [], [], []
    for i in range(k):
        frame = torch.rand(1, 3, args["height"], args["width"], device=dev, generator=gen)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            sess.forward_stream(frame)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        peaks.append(torch.cuda.max_memory_allocated())
        reserved.append(torch.cuda.max_memory_reserved())
    sess.clear()
    del sess
    torch.cuda.empty_cache()
    return times, peaks, reserved
run(min(args["warmup"], n), False)
times, peaks, reserved = run(n, True)
print("RESULT " + json.dumps({"frame_time_s": times, "peak_mem_bytes": peaks, "peak_reserved_bytes": reserved}))
"""


def bench_upstream(args, mode: str, dtype_name: str) -> Optional[Dict[str, Any]]:
    if mode == "keyframe":
        print("  (upstream has no way to drop frames from its cache: keyframe mode skipped)")
        return None
    path = str(Path(args.upstream).resolve())
    env = dict(os.environ, PYTHONPATH=path)
    payload = json.dumps({"path": path, "frames": args.frames, "height": args.height, "width": args.width,
                          "mode": mode, "dtype": dtype_name, "warmup": args.warmup})
    proc = subprocess.run([sys.executable, "-c", UPSTREAM_WORKER, payload], env=env, capture_output=True, text=True,
                          cwd="/")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(f"  upstream {mode}/{dtype_name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        return {"impl": "upstream", "mode": mode, "dtype": dtype_name, "error": proc.stderr[-3000:]}
    res = json.loads(line[len("RESULT "):])
    res.update(impl="upstream", mode=mode, dtype=dtype_name + ("-autocast" if dtype_name == "bf16" else ""))
    return res


# ------------------------------------------------------------------------------------ report
def print_tables(results: List[Dict[str, Any]], n: int) -> None:
    pts = points_for(n)
    head = "| Num of Frames | " + " | ".join(str(p) for p in pts) + " |"
    sep = "|---|" + "---|" * len(pts)
    for title, key, fmt, scale in (("Run Time (s)", "frame_time_s", "{:.4f}", 1.0),
                                   ("VRAM (GB, peak allocated)", "peak_mem_bytes", "{:.2f}", 1e-9),
                                   ("VRAM (GB, peak reserved by the caching allocator, CUDA-graph pools included)",
                                    "peak_reserved_bytes", "{:.2f}", 1e-9)):
        print(f"\n*{title}.*\n{head}\n{sep}")
        for r in results:
            if "error" in r or key not in r:
                continue
            s = summarise([v * scale for v in r[key]], pts)
            label = f"{r['impl']} {r['mode']} {r['dtype']}"
            print(f"| {label} | " + " | ".join(fmt.format(s[str(p)]) for p in pts) + " |")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["causal", "window"], choices=["causal", "window", "keyframe"])
    ap.add_argument("--dtypes", nargs="+", default=["fp16"], choices=["bf16", "fp32", "fp16"],
                    help="fp16 (default): the app's mixed-precision recipe; bf16: the same recipe in bfloat16; fp32")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--window-size", type=int, default=5)
    ap.add_argument("--keyframe-every", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--heads-dtype", choices=["auto", "fp32", "same"], default="auto",
                    help="auto (default, the app's): camera head in the model dtype (mixed), DPT heads float32; "
                    "same: all heads in the model dtype (float32 output layers); fp32: all heads float32")
    ap.add_argument("--unmixed", action="store_true",
                    help="to_inference(mixed=False): the whole aggregator in the half dtype (the earlier fast "
                    "path: half residual stream and norms)")
    ap.add_argument("--heads", nargs="+", choices=["camera", "depth", "point"],
                    help="heads to run (default all three, as upstream)")
    ap.add_argument("--no-triton", action="store_true",
                    help="no Triton fast paths (fused QK-norm + RoPE, TF32 float32 attention)")
    ap.add_argument("--preallocate", action="store_true", help="size the causal cache from --frames up front")
    ap.add_argument("--grow-frames", type=int, default=8, help="causal cache growth step (frames)")
    ap.add_argument("--cache-frames", type=int, default=None,
                    help="causal / keyframe: KV-cache budget (StreamSession(cache_frames=N)); default: no bound")
    ap.add_argument("--compile", metavar="MODE", help="torch.compile the static parts (stream3r.set_compile(MODE), "
                    "e.g. default or max-autotune-no-cudagraphs); compilation happens in the warm-up")
    ap.add_argument("--alloc-conf", default=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
                    help="PYTORCH_CUDA_ALLOC_CONF for this run (default expandable_segments:True; '' for torch's default)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--no-graphs", action="store_true", help="StreamSession(cuda_graphs=False): eager steps "
                    "(the default replays piecewise CUDA graphs)")
    ap.add_argument("--no-split-kv", action="store_true", help="plain SDPA for the cached attention (no split-KV)")
    ap.add_argument("--to-host", action="store_true", help="copy each frame's predictions to the CPU inside the timing")
    ap.add_argument("--upstream", metavar="PATH", help="also benchmark the upstream StreamSession found at PATH")
    ap.add_argument("--no-ours", action="store_true", help="only the upstream run")
    ap.add_argument("--json", type=Path, help="output JSON (default benchmarks/results/stream_bench_<device>_<date>.json)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU, 12 frames (CI)")
    ap.add_argument("--note", default="", help="free text stored in the JSON")
    args = ap.parse_args(argv)

    # growing per-layer caches fragment the default caching allocator (reserved >> allocated);
    # expandable segments keep reserved memory close to allocated.  Must be set before CUDA starts.
    if args.alloc_conf:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf
    import torch

    if args.cpu_smoke:
        args.frames = min(args.frames, 12)
        args.dtypes = ["fp32"]
        args.warmup = 2
        args.upstream = None
        device_name = "cpu"
    else:
        if not torch.cuda.is_available():
            print("CUDA is not available: use --cpu-smoke for the CPU smoke run", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        device_name = torch.cuda.get_device_name()
    results: List[Dict[str, Any]] = []
    for dt in args.dtypes:
        for mode in args.modes:
            if not args.no_ours:
                print(f"ours {mode} {dt} ...", flush=True)
                results.append(bench_ours(args, mode, dt))
                if not args.cpu_smoke:
                    torch.cuda.empty_cache()
            if args.upstream and dt in ("fp32", "bf16"):
                print(f"upstream {mode} {dt} ...", flush=True)
                r = bench_upstream(args, mode, dt)
                if r is not None:
                    results.append(r)
    print_tables(results, args.frames)
    stamp = _dt.datetime.now(_dt.timezone.utc)
    report = {
        "device": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": stamp.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "note": args.note,
        "points": points_for(args.frames),
        "results": results,
        "summary": {f"{r['impl']} {r['mode']} {r['dtype']}": {
            "s_per_frame": summarise(r["frame_time_s"], points_for(args.frames)),
            "peak_gb": summarise([v / 1e9 for v in r["peak_mem_bytes"]], points_for(args.frames)),
            "peak_reserved_gb": summarise([v / 1e9 for v in r.get("peak_reserved_bytes", r["peak_mem_bytes"])],
                                          points_for(args.frames))}
            for r in results if "error" not in r},
    }
    path = args.json
    if path is None:
        tag = "cpu-smoke" if args.cpu_smoke else device_name.replace(" ", "_")
        path = REPO / "benchmarks" / "results" / f"stream_bench_{tag}_{stamp.strftime('%Y%m%dT%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
