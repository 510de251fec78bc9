#!/usr/bin/env bash
# Set up slam3r in a virtual environment (default ./.venv; override with VENV=path).
#
# * keeps a torch that is already installed in that environment;
# * otherwise installs torch: on machines without an NVIDIA GPU it first tries the
#   CPU-only wheels (much smaller), then falls back to the default PyPI build;
# * installs slam3r with the evaluation (evo), viewer (viser), export (pycolmap, trimesh),
#   ros (rosbags) and test extras;
# * installs the system library libusb-1.0 that open3d needs, when it is missing
#   and apt-get is available (root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip >/dev/null 2>&1 || true

if "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') already installed"
else
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing torch from PyPI"
    "${PIP[@]}" install torch
  else
    echo "[setup] no NVIDIA GPU: trying the CPU-only torch wheels"
    "${PIP[@]}" install --timeout 15 --retries 0 torch --index-url https://download.pytorch.org/whl/cpu \
      || { echo "[setup] CPU wheel index unreachable: installing torch from PyPI"; "${PIP[@]}" install torch; }
  fi
fi

if ! ldconfig -p 2>/dev/null | grep -q "libusb-1.0.so.0"; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    echo "[setup] installing libusb-1.0-0 (needed by open3d)"
    $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null; } \
      || echo "[setup] WARNING: could not install libusb-1.0-0; open3d will not import until it is installed"
  else
    echo "[setup] WARNING: libusb-1.0 not found; install it with your package manager (open3d needs it)"
  fi
fi

# Headless Chromium for the viewer's browser test (tests/test_viewer_browser.py; skipped without it).
# Set-up installs it, never a test. SLAM3R_NO_CHROMIUM=1 skips this step.
if [ -z "${SLAM3R_NO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
   && ! command -v chromium-browser >/dev/null 2>&1 && ! command -v google-chrome >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    echo "[setup] installing chromium and chromium-driver (the viewer's browser test)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 \
           && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
      || echo "[setup] note: chromium could not be installed; the viewer's browser test will be skipped"
  else
    echo "[setup] note: no chromium; the viewer's browser test will be skipped (install chromium to run it)"
  fi
fi

echo "[setup] installing slam3r (editable) with extras eval, viewer, export, ros, test"
"${PIP[@]}" install -q -e ".[eval,viewer,export,ros,test]"
"$VENV/bin/python" -c "import open3d, torch, slam3r_app; print('[setup] ok: torch', torch.__version__, '| open3d', open3d.__version__)"
