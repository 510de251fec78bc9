#!/usr/bin/env bash
# CI stage (issue 20): do the lower bounds pyproject.toml declares hold?
#
# Installs the LOWEST version each optional extra declares (eval, viewer, export, ros; and gtsam, the
# core dependency whose old releases break under numpy 2) into a virtual environment of its own,
# .venv-lowest, layered over .venv: everything else (torch -- the CPU wheel .ci/run installed, never
# replaced: it is pinned as a constraint --, open3d, numpy, ...) comes from .venv, so that only the
# packages under test change. Then it runs the tests of the parts each of them serves:
#   viser -> tests/test_viewer.py, tests/test_viewer_remote.py
#   gtsam -> tests/test_loop_closure.py, tests/test_bundle_adjustment.py (and the loop closure inside the viewer tests)
#   pycolmap, trimesh -> tests/test_exports.py
#   evo -> tests/test_evaluation.py
#   rosbags -> tests/test_rosbag.py
# The pins come from scripts/lowest_deps.py (each ">=X" of pyproject.toml as "==X").
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN="${MAIN_VENV:-.venv}"
LOW="${LOWEST_VENV:-.venv-lowest}"
start=$(date +%s)
rm -rf "$LOW"
"$MAIN/bin/python" -m venv "$LOW"
purelib() { "$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
MAIN_SP="$(cd "$(purelib "$MAIN")" && pwd)"
echo "import site; site.addsitedir('$MAIN_SP')" > "$(purelib "$LOW")/zz_slam3r_main_venv.pth"
"$MAIN/bin/python" scripts/lowest_deps.py eval viewer export ros gtsam > "$LOW/lowest.txt"
echo "torch==$("$MAIN/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')" > "$LOW/constraints.txt"
echo "[lowest] installing: $(tr '\n' ' ' < "$LOW/lowest.txt")(torch kept: $(cat "$LOW/constraints.txt"))"
"$LOW/bin/python" -m pip install -q --disable-pip-version-check -r "$LOW/lowest.txt" -c "$LOW/constraints.txt"
"$LOW/bin/python" - <<'PY'
import importlib.metadata as md
import torch
print("[lowest] installed:", ", ".join(f"{p} {md.version(p)}" for p in
      ("evo", "viser", "pycolmap", "trimesh", "rosbags", "gtsam", "numpy")), "| torch", torch.__version__)
PY
installed=$(date +%s)
"$LOW/bin/python" -m pytest -q -n auto --maxprocesses 4 --dist loadfile -p no:cacheprovider tests/test_viewer.py tests/test_viewer_remote.py \
  tests/test_loop_closure.py tests/test_bundle_adjustment.py tests/test_exports.py tests/test_evaluation.py \
  tests/test_rosbag.py
end=$(date +%s)
echo "[lowest] install $((installed - start)) s, tests $((end - installed)) s (load $(cut -d' ' -f1-3 /proc/loadavg))"
