#!/bin/bash
# Issue 19, points 3-5 (recovery, loop closure on real noise, keyframe culling): every development-suite
# run behind the closing note's tables, one after the other; raw JSON lands in benchmarks/results/.
#   cd benchmarks && bash recover_runs.sh            # about 1-2 h on 2 idle cores
# Sequences that are not found (realdata_suite.yaml's roots) are skipped and said so.
set -u
cd "$(dirname "$0")"
PY=${PY:-../.venv/bin/python}
NOGEO=(--set loop_closure.geometric=false --set rgbd.geometric_init=false)
# point 3: kidnaps (a gap in the stream, the camera comes back to a mapped place) and wide baselines
$PY realdata_bench.py --seq fr3_nst_kidnap --seq fr1_rpy_kidnap --seq bonn_crowd_kidnap --modes lc,nolc,o3d --label recover_kidnap
$PY realdata_bench.py --seq fr3_nst_kidnap --seq fr1_rpy_kidnap --seq bonn_crowd_kidnap --modes lc --label recover_kidnap_nogeo "${NOGEO[@]}"
$PY realdata_bench.py --seq fr1_rpy_100 --strides 6,8 --modes lc,o3d --label recover_wide
$PY realdata_bench.py --seq fr1_rpy_100 --strides 6,8 --modes lc --label recover_wide_nogeo "${NOGEO[@]}"
# points 4 and 5: whole recordings with many revisits, loop closure on / off, culling on / off
$PY realdata_bench.py --seq fr1_rpy_full --seq bonn_crowd_full --modes lc,nolc --label recover_full
$PY realdata_bench.py --seq fr1_rpy_full --seq bonn_crowd_full --modes lc --label recover_full_nocull --set loop_closure.cull=false
# point 4: the gates' statistics on real recordings; the synthetic scenes (no regression, 0 false loops); live
$PY loop_calibration.py --undistort
$PY loop_closure_bench.py --only loop --json "results/loop_closure_recover_$(date +%Y%m%d)_loop.json"
$PY loop_closure_bench.py --only aliasing --json "results/loop_closure_recover_$(date +%Y%m%d)_aliasing.json"
$PY loop_closure_bench.py --only live --fps 5 --json "results/loop_closure_recover_$(date +%Y%m%d)_live.json"
