#!/usr/bin/env bash
# The whole test suite N times in a row while another process keeps every core busy (issue 14):
#   bash benchmarks/loaded_suite.sh            # N=5, stress-ng (or busy Python loops without it)
# Writes one line per run (result, seconds, load average) to $LOG, headed by the date, the commit,
# the machine and the load command; exits non-zero if any run failed.
set -u
cd "$(dirname "$0")/.."
N="${N:-5}"
LOG="${LOG:-benchmarks/results/loaded_suite_$(date +%Y%m%d).txt}"
CORES="$(nproc)"
# the README's test command (set-up, command 2), without the cache
TEST_CMD=(.venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile -p no:cacheprovider)
if command -v stress-ng >/dev/null 2>&1; then
  LOAD_CMD="stress-ng --cpu $CORES --cpu-method matrixprod --timeout 0 --quiet"
else
  LOAD_CMD="python3 -c 'while True: pass' (x $CORES)"
fi
{
  echo "# test suite x$N under load, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
  echo "# machine: $CORES CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GB"
  echo "# load: $LOAD_CMD, started before the first run and kept running until the last one ended"
  echo "# command: ${TEST_CMD[*]}"
} > "$LOG"
PIDS=()
if command -v stress-ng >/dev/null 2>&1; then
  stress-ng --cpu "$CORES" --cpu-method matrixprod --timeout 0 --quiet & PIDS+=($!)
else
  for _ in $(seq "$CORES"); do python3 -c 'while True: pass' & PIDS+=($!); done
fi
trap 'kill "${PIDS[@]}" 2>/dev/null' EXIT
FAILED=0
for i in $(seq "$N"); do
  start=$(date +%s)
  out="$("${TEST_CMD[@]}" 2>&1)"
  rc=$?
  end=$(date +%s)
  summary="$(printf '%s\n' "$out" | tail -1)"
  echo "run $i: exit $rc, $((end - start)) s, load average $(cut -d' ' -f1-3 /proc/loadavg): $summary" >> "$LOG"
  if [ "$rc" -ne 0 ]; then
    FAILED=1
    printf '%s\n' "$out" | grep -E '^(FAILED|ERROR)' >> "$LOG"
    printf '%s\n' "$out" > "${LOG%.txt}_run$i.log"  # the whole output of a failed run
  fi
done
exit "$FAILED"
