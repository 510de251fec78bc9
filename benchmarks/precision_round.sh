#!/bin/bash
# One GPU round for issue 13: GPU tests, the precision table against the upstream code, and the
# stream benchmark of the default recipe (mixed float16), mixed bfloat16 and the previous default
# (whole aggregator and heads in bf16), all in one process tree on one machine.
#
#   bash benchmarks/precision_round.sh OUT_DIR [UPSTREAM_CHECKOUT]
#
# Writes OUT_DIR/{env.txt, gpu_tests.txt, precision.json, precision.txt, stream_fp16_bf16.json,
# stream_previous.json, stream.txt}.  Results: benchmarks/NOTES.md, "Precision (issue 13)".
set -u
OUT=${1:?usage: precision_round.sh OUT_DIR [UPSTREAM]}
UP=${2:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  date -u; echo "commit ${STREAM_BENCH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"; } > "$OUT/env.txt"
cat "$OUT/env.txt"
echo "=== GPU tests"
$PY -m pytest -q -p no:cacheprovider tests/test_stream3r_gpu.py -s > "$OUT/gpu_tests.txt" 2>&1; tail -3 "$OUT/gpu_tests.txt"
echo "=== precision"
$PY benchmarks/precision_bench.py ${UP:+--upstream "$UP"} --json "$OUT/precision.json" > "$OUT/precision.txt" 2>&1
tail -16 "$OUT/precision.txt"
echo "=== stream benchmark"
{ $PY benchmarks/stream_bench.py --modes causal window --dtypes fp16 bf16 --json "$OUT/stream_fp16_bf16.json" \
    --note "issue 13: mixed recipe (default fp16, and bf16)"
  $PY benchmarks/stream_bench.py --modes causal window --dtypes bf16 --unmixed --heads-dtype same \
    --json "$OUT/stream_previous.json" --note "issue 13: the previous default (bf16 aggregator and heads)"
} > "$OUT/stream.txt" 2>&1
grep -A8 "Run Time" "$OUT/stream.txt"; grep -A8 "peak allocated" "$OUT/stream.txt"
