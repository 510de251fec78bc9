#!/usr/bin/env python
"""Error of each precision path against float32, on the full-size model (issue 13's table).

Seeded synthetic weights in the official key layout (:mod:`stream3r.synthetic`, tame
initialisation), a synthetic video (``--frames`` 24 at ``--height`` x ``--width`` 392x518),
streamed through a causal session by each path:

* ``upstream float32`` / ``upstream bf16 autocast``: the upstream code (``--upstream PATH``, run
  in a separate process with ``PYTHONPATH=PATH``: both packages are called ``stream3r``), its
  ``StreamSession`` under ``torch.autocast("cuda", torch.bfloat16)`` as its demo runs it;
* ours: float32; the float32 weights under bf16 autocast (upstream's recipe on our code); the
  app's default (``model.dtype: auto``: mixed float16), the same with float32 DPT heads; mixed
  bfloat16; and the two earlier bf16 paths (whole aggregator in bf16, heads bf16 or float32).

Reference: upstream float32 when ``--upstream`` is given (the issue's table), else ours.  Float32
references run with TF32 off (matmuls and cuDNN); the other paths with torch's defaults (cuDNN
TF32 on, matmul TF32 off), as the app and upstream's demo run.  Metrics
(:mod:`stream3r.precision`): relative error ``max|out - ref| / max|ref|`` per output over all
frames, camera rotation error mean / max in degrees.  Prints a Markdown table; ``--json``
writes it with provenance (device, torch, date, git commit, arguments, flags).

    python benchmarks/precision_bench.py --upstream /path/to/STream3R --json out.json
    python benchmarks/precision_bench.py --device cpu --height 56 --width 84 --frames 12   # no GPU
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

from _provenance import git_commit  # benchmarks/_provenance.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

UPSTREAM_WORKER = r"""
import importlib.util, json, sys, time, torch
args = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location("slam3r_synthetic", args["synthetic_py"])
syn = importlib.util.module_from_spec(spec); spec.loader.exec_module(syn)
import stream3r
assert stream3r.__file__.startswith(args["path"]), ("not the upstream package", stream3r.__file__)
from stream3r.models.stream3r import STream3R
from stream3r.stream_session import StreamSession
dev = torch.device(args["device"])
t0 = time.time()
with torch.device(dev):
    model = STream3R()
model = model.to(dev).eval()
sd = model.state_dict()
with torch.no_grad():
    for name, t in sd.items():
        t.copy_(syn.synthetic_tensor(name, tuple(t.shape), args["seed"]))
# the non-persistent normalisation buffers (not in the checkpoint) keep their constructor values
print("upstream model ready", round(time.time() - t0, 1), "s", flush=True)
frames = syn.synthetic_frames(args["frames"], args["height"], args["width"], seed=args["seed"])
out = {}
for name, amp in (("fp32", False), ("bf16_autocast", True)):
    exact = name == "fp32"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = not exact   # torch's default is True: the demo's setting
    session = StreamSession(model, mode="causal")
    preds = []
    t0 = time.time()
    for i in range(frames.shape[0]):
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            session.forward_stream(frames[i:i + 1].to(dev))
        last = session.get_last_prediction()
        preds.append({k: v.float().cpu() for k, v in last.items() if k != "images"})
    session.clear()
    print("upstream", name, round(time.time() - t0, 1), "s", flush=True)
    out[name] = {k: torch.cat([p[k] for p in preds], 1) for k in preds[0]}
torch.save(out, args["out"])
print("RESULT ok", flush=True)
"""


def run_upstream(args, tmp: Path) -> Optional[Dict[str, Dict[str, Any]]]:
    path = str(Path(args.upstream).resolve())
    payload = {"path": path, "device": args.device, "frames": args.frames, "height": args.height,
               "width": args.width, "seed": args.seed, "out": str(tmp / "upstream.pt"),
               "synthetic_py": str(REPO / "stream3r" / "synthetic.py")}
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-c", UPSTREAM_WORKER, json.dumps(payload)], env=env, capture_output=True,
                          text=True, cwd="/")
    print(proc.stdout.strip())
    if proc.returncode or "RESULT ok" not in proc.stdout:
        print(f"upstream run failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
        return None
    import torch

    return torch.load(payload["out"])


def ours(args, state: Dict[str, Any], frames, recipe: str):
    """Stream ``frames`` through our model prepared by ``recipe``; returns the outputs."""
    import torch

    from stream3r import STream3R
    from stream3r.precision import default_dtype, prepare, stream

    with torch.device("meta"):
        model = STream3R()
    model.load_state_dict(state, strict=True, assign=True)
    model.aggregator.reset_buffers(device="cpu")
    dev = args.device
    exact = recipe in ("fp32",)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = not exact
    autocast = None
    if recipe in ("fp32", "fp32_autocast"):
        model.to_inference(dev, torch.float32, heads_dtype=torch.float32)
        autocast = torch.bfloat16 if recipe == "fp32_autocast" else None
    elif recipe == "default":
        prepare(model, dev, default_dtype("cuda"))
    elif recipe == "default_fp32_dpt":
        model.to_inference(dev, torch.float16, heads_dtype={"camera": torch.float16})
    elif recipe == "mixed_bf16":
        prepare(model, dev, torch.bfloat16)
    elif recipe == "legacy":  # the earlier app default: bf16 trunk and heads, float32 output layers
        model.to_inference(dev, torch.bfloat16, heads_dtype=torch.bfloat16, mixed=False)
    elif recipe == "legacy_fp32_heads":
        model.to_inference(dev, torch.bfloat16, heads_dtype=torch.float32, mixed=False)
    else:
        raise ValueError(recipe)
    t0 = time.time()
    out = stream(model, frames, autocast=autocast)
    print(f"ours {recipe} ({model.precision}): {time.time() - t0:.1f} s", flush=True)
    del model
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


LABELS = {
    "upstream_bf16_autocast": "upstream, bf16 autocast (its own half-precision recipe)",
    "upstream_fp32": "upstream, float32",
    "fp32": "ours, float32",
    "fp32_autocast": "ours, float32 weights under bf16 autocast (upstream's recipe)",
    "default": "ours, app default (model.dtype auto: mixed float16)",
    "default_fp32_dpt": "ours, mixed float16 with float32 DPT heads",
    "mixed_bf16": "ours, model.dtype bfloat16 (mixed bfloat16, float32 DPT heads)",
    "legacy": "ours, previous default (bf16 trunk + bf16 heads, float32 output layers)",
    "legacy_fp32_heads": "ours, previous bf16 trunk + float32 heads",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--upstream", metavar="PATH", help="upstream STream3R checkout (its code runs in a subprocess)")
    ap.add_argument("--recipes", nargs="+", default=list(k for k in LABELS if not k.startswith("upstream")),
                    choices=[k for k in LABELS if not k.startswith("upstream")])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)

    import torch

    from stream3r.precision import format_table, prediction_errors
    from stream3r.synthetic import synthetic_frames, synthetic_state_dict

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available (use --device cpu)", file=sys.stderr)
        return 2
    t0 = time.time()
    state = synthetic_state_dict(seed=args.seed)
    frames = synthetic_frames(args.frames, args.height, args.width, seed=args.seed)
    print(f"synthetic weights and frames: {time.time() - t0:.1f} s", flush=True)
    outputs: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.upstream:
            up = run_upstream(args, Path(tmp))
            if up is not None:
                outputs["upstream_fp32"] = up["fp32"]
                outputs["upstream_bf16_autocast"] = up["bf16_autocast"]
    for recipe in args.recipes:
        outputs[recipe] = ours(args, state, frames, recipe)
    ref_name = "upstream_fp32" if "upstream_fp32" in outputs else "fp32"
    ref = outputs[ref_name]
    errors = {name: prediction_errors(out, ref) for name, out in outputs.items() if name != ref_name}
    order = ["upstream_bf16_autocast", "upstream_fp32", "fp32", "fp32_autocast", "default", "default_fp32_dpt",
             "mixed_bf16", "legacy",
             "legacy_fp32_heads"]
    rows = {LABELS[k]: errors[k] for k in order if k in errors}
    table = format_table(rows, keys=("pose_enc", "depth", "world_points"))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\nerror against {LABELS[ref_name]} (same weights, same {args.frames} frames at {args.height}x{args.width}, "
          f"causal streaming), {device}, torch {torch.__version__}:\n")
    print(table)
    if "default" in errors and "upstream_bf16_autocast" in errors:
        d, u = errors["default"], errors["upstream_bf16_autocast"]
        ok = d["pose_enc"] <= u["pose_enc"] and d["depth"] <= u["depth"]
        print(f"\ndefault path <= upstream autocast (pose_enc, depth): {ok} "
              f"(ratios {d['pose_enc'] / u['pose_enc']:.3f}, {d['depth'] / u['depth']:.3f})")
    if args.json:
        report = {
            "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "reference": ref_name, "labels": LABELS, "errors": errors, "table": table,
            "tf32": "float32 references: matmul and cuDNN TF32 off; other paths: matmul TF32 off, cuDNN TF32 on "
                    "(torch's defaults)",
            "note": args.note,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
