#!/bin/bash
# Issue 23's GPU round, in stages that fit the device tool's calls (see benchmarks/NOTES.md, "Issue 23").
#
#   bash benchmarks/gpu_round23.sh setup       # carried wheels / tarballs -> /tmp/site, slam3r made importable
#   bash benchmarks/gpu_round23.sh model       # GPU tests of the cache budget; model step now vs BASE; profiles
#   bash benchmarks/gpu_round23.sh deps2       # gtsam, evo, viser, libGL (second carry)
#   bash benchmarks/gpu_round23.sh app [N] [viewer]   # 640x480 loop input rendered here, the whole app over N frames
#
# Run from the repository root (or a copy of it); OUT (the device tool's output folder) gets every raw
# file. BASE: a folder holding the previous commit's stream3r/ and benchmarks/ (model-step baseline).
set -u
STAGE=${1:?stage}
OUT=${OUT:-/tmp/out}
SITE=${SITE:-/tmp/site}
CARRY=${CARRY:-..}
mkdir -p "$OUT" "$SITE"
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export NCCL_NVLS_ENABLE=0
PY=${PY:-python3}

env_info() {
  { date -u; echo "commit: $(cat COMMIT 2>/dev/null)"; nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
    nproc; free -g | head -2; cat /proc/loadavg; $PY -m pip list 2>/dev/null | grep -i -E "open3d|gtsam|evo|viser|pydantic|pluggy|numpy|opencv"; } 2>&1
}

shim() {  # slam3r importable without a build: entry points + the two renamed packages
  $PY - "$SITE" "$PWD" <<'EOF'
import os, sys, tomllib, pathlib
site, repo = map(pathlib.Path, sys.argv[1:3])
pp = tomllib.loads((repo / "pyproject.toml").read_text())
d = site / "slam3r-0.1.0.dist-info"; d.mkdir(exist_ok=True)
(d / "METADATA").write_text("Metadata-Version: 2.1\nName: slam3r\nVersion: 0.1.0\n")
eps = pp["project"]["entry-points"]["slam3r.plugins"]
(d / "entry_points.txt").write_text("[slam3r.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
for name, src in (("slam3r_plugins", "plugins"), ("slam3r_datasets", "datasets")):
    link = site / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(repo / src)
print("slam3r shim in", site)
EOF
}

case "$STAGE" in
setup)
  ls "$CARRY"/.whl/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/.whl/*.whl
  [ -f "$CARRY/.o3d/o3d.tar.xz" ] && tar xJf "$CARRY/.o3d/o3d.tar.xz" -C "$SITE"
  shim
  $PY -c "import open3d, pydantic, pluggy; print('open3d', open3d.__version__, 'pydantic', pydantic.__version__)" 2>&1 | tail -3
  env_info > "$OUT/env.txt"; cat "$OUT/env.txt"
  ;;
model)
  $PY -m pytest -q -p no:cacheprovider tests/test_stream3r_gpu.py -k "budget or graph_steps or streaming_equals" 2>&1 | tee "$OUT/gpu_tests.txt" | tail -3
  BASE=${BASE:-$CARRY/.base}
  N=${FRAMES:-200}
  # previous code (BASE) and this code, one after the other on the same GPU
  (cd "$BASE" && PYTHONPATH=$PWD $PY benchmarks/stream_bench.py --modes causal window --dtypes fp16 \
     --frames "$N" --heads camera depth --note "baseline $(cat COMMIT 2>/dev/null)" --json "$OUT/stream_base.json") 2>&1 | tail -8
  $PY benchmarks/stream_bench.py --modes causal window --dtypes fp16 --frames "$N" --heads camera depth \
     --note "now $(cat COMMIT 2>/dev/null)" --json "$OUT/stream_now.json" 2>&1 | tail -8
  $PY benchmarks/stream_bench.py --modes keyframe --dtypes fp16 --frames "$N" --heads camera depth --cache-frames 32 \
     --note "now, budget 32 $(cat COMMIT 2>/dev/null)" --json "$OUT/stream_now_kf_budget32.json" 2>&1 | tail -4
  $PY benchmarks/profile_step.py --dtype fp16 --heads camera depth --frames "$N" --cache-frames 32 --out "$OUT/profile" \
     2>&1 | tail -14
  (cd "$OUT" && tar czf profile.tgz profile && rm -rf profile)
  ;;
model_short)  # when device time is short: the new code only, no baseline, no profile
  $PY -m pytest -q -p no:cacheprovider tests/test_stream3r_gpu.py -k "budget or graph_steps" 2>&1 | tee "$OUT/gpu_tests.txt" | tail -3
  N=${FRAMES:-200}
  $PY benchmarks/stream_bench.py --modes causal window --dtypes fp16 --frames "$N" --heads camera depth \
     --note "now $(cat COMMIT 2>/dev/null)" --json "$OUT/stream_now.json" 2>&1 | tail -8
  $PY benchmarks/stream_bench.py --modes keyframe --dtypes fp16 --frames "$N" --heads camera depth --cache-frames 32 \
     --note "now, budget 32 $(cat COMMIT 2>/dev/null)" --json "$OUT/stream_now_kf_budget32.json" 2>&1 | tail -4
  ;;
deps2)
  [ -f "$CARRY/.gtsam/gtsam.tar.xz" ] && tar xJf "$CARRY/.gtsam/gtsam.tar.xz" -C "$SITE"
  ls "$CARRY"/.whl2/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/.whl2/*.whl
  ls "$CARRY"/.whl3/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/.whl3/*.whl
  if [ -d "$CARRY/.gl" ]; then for f in "$CARRY"/.gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
  if [ -d "$CARRY/.whl7" ]; then for f in "$CARRY"/.whl7/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
  ls "$CARRY"/.whl6/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/.whl6/*.whl
  $PY -c "import gtsam, evo, open3d; print('gtsam', gtsam.__version__ if hasattr(gtsam, '__version__') else '?', 'evo ok')" 2>&1 | tail -2
  env_info > "$OUT/env2.txt"
  ;;
app)
  N=${2:-10000}
  VIEW=${3:-}
  IN=/tmp/loop640
  [ -f $IN/loop_input.json ] || $PY benchmarks/make_loop_input.py $IN --frames 10000 --width 640 --height 480 --workers "$(nproc)" 2>&1 | tail -2
  timeout ${APP_TIMEOUT:-540} $PY benchmarks/app_gpu_bench.py --input $IN --frames "$N" --json "$OUT/app_${N}${VIEW:+_viewer}.json" \
     --output /tmp/run_app_${N}${VIEW:+_viewer} ${VIEW:+--viewer} "${@:4}" 2>&1 | tee "$OUT/app_${N}${VIEW:+_viewer}.log" | tail -12
  cp /tmp/run_app_${N}${VIEW:+_viewer}/summary.json "$OUT/summary_${N}${VIEW:+_viewer}.json" 2>/dev/null
  grep -E "KV-cache|ERROR|WARNING" /tmp/run_app_${N}${VIEW:+_viewer}/run.log | head -20 > "$OUT/runlog_${N}${VIEW:+_viewer}.txt"
  ;;
esac
