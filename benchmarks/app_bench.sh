#!/bin/bash
# The whole app on a GPU: run_slam.py with the STream3R frontend (random weights: speed does not
# depend on them) on the shipped TUM sample repeated 3 times (225 frames of 640x480 JPEG), and print
# each run's per-stage timing line (summary.json "timing").
#
#   bash benchmarks/app_bench.sh [OUT_DIR]        # on a CUDA machine with slam3r installed
#
# Runs: window(5); window(5) without prefetch; causal to 200 frames; causal preallocated to 200;
# keyframes every 5th frame (non-keyframes dropped from the cache). Fusion, point cloud and
# evaluation are off (they do not use the model; fusion alone is CPU-bound). A short first run
# compiles the Triton kernels, so the others start warm. Results: benchmarks/NOTES.md, "The app".
set -u
OUT=${1:-runs/app_bench}
PY=${PYTHON:-python}
mkdir -p "$OUT/frames"
n=0
for r in 1 2 3; do
  for f in datasets/samples/tum_fr1_rpy/rgb/*.jpg; do
    cp "$f" "$OUT/frames/$(printf %05d $n).jpg"; n=$((n + 1))
  done
done
COMMON=(--config folder.yaml --set "source.path=$OUT/frames" --set model.random_weights=true
        --set "disable=[fusion,pointcloud,evaluation]" --quiet)
run() {
  local name=$1; shift
  echo "=== $name: $*"
  $PY run_slam.py "${COMMON[@]}" --output "$OUT/$name" "$@" 2>&1 | grep -E "^(frames|per frame|error)"
  $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print('frontend_stats', d['frontend_stats'])" \
    "$OUT/$name/summary.json"
}
run warmup --set model.mode=window --set keyframes.enabled=false --set source.max_frames=20
run window --set model.mode=window --set keyframes.enabled=false
run window_no_prefetch --set model.mode=window --set keyframes.enabled=false --set source.prefetch=0
run causal200 --set keyframes.enabled=false --set source.max_frames=200
run causal200_preallocated --set keyframes.enabled=false --set source.max_frames=200 --set model.max_frames=200
run keyframe_every_5th --set keyframes.mode=motion --set keyframes.min_translation=1e9 \
  --set keyframes.min_rotation_deg=180 --set keyframes.max_interval=5
