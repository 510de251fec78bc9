#!/bin/bash
# Builds, in a checkout's root, the ignored folders that issue 23's GPU round carries to the device
# (benchmarks/gpu_round23.sh; the device has torch, numpy, OpenCV, pluggy but not these):
#   .whl   pydantic + pydantic-core wheels                          (~3 MB)
#   .o3d   Open3D (CPU wheel) without its GUI resources / TF / torch ops, as tar.xz   (~38 MB)
#   .whl2  gtsam, evo and evo's missing dependencies                (~42 MB)
#   .whl3  viser and its missing dependencies (viewer-on runs)      (~5 MB)
#   .gl    libGL / GLX / EGL (Open3D's import needs libGL.so.1)     (~0.3 MB)
#   .whl6  what the device image lacked on 2026-12-07 (found one call at a time on an H100): pydantic's
#          typing-inspection / annotated-types, and the dash / plotly chain that `import open3d` pulls in
#          (~20 MB); .whl7: libusb-1.0 (Open3D's libusb-1.0.so.0)
# Keep SITE outside the repository (the default /tmp/site, or /root/site): the device replaces the
# working tree between calls and a SITE inside it is lost.
#   .base  the previous commit's stream3r/ + stream_bench.py (model-step baseline), BASE_COMMIT
# With the 64 MiB carry limit and a ~21 MB tree, .whl+.o3d go in one call and .whl2+.gl in the next one
# on the same warm machine (issue the second call within the 30 s the machine stays warm):
#   call 1 (carry .whl .o3d .base): export CARRY=. && bash benchmarks/gpu_round23.sh setup && bash benchmarks/gpu_round23.sh model
#   call 2 (carry .whl2 .gl .whl7):  export CARRY=. && bash benchmarks/gpu_round23.sh deps2
#   call 3 (carry .whl6 .whl7):      export CARRY=. && bash benchmarks/gpu_round23.sh deps2 && bash benchmarks/gpu_round23.sh app 10000 "" \
#        --set keyframes.mode=motion --set keyframes.min_translation=1e9 --set keyframes.min_rotation_deg=180 --set keyframes.max_interval=5
set -eu
BASE_COMMIT=${BASE_COMMIT:-6991ad4}
PIP=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux2014_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_35_x86_64
     --platform manylinux_2_24_x86_64 --platform manylinux1_x86_64 -q)
for d in .whl .o3d .whl2 .whl3 .gl .base .whl6 .whl7; do grep -qxF "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
mkdir -p .whl .o3d .whl2 .whl3 .gl .base
"${PIP[@]}" -d .whl pydantic==2.14.4 pydantic-core==2.50.5
"${PIP[@]}" -d .whl2 gtsam==4.3.0 evo==1.38.1 argcomplete natsort numexpr rosbags ruamel.yaml lz4 zstandard
"${PIP[@]}" -d .whl3 viser==1.1.1 msgspec trimesh websockets
tmp=$(mktemp -d)
"${PIP[@]}" -d "$tmp" open3d-cpu==0.20.0
(cd "$tmp" && unzip -q open3d_cpu-*.whl && rm -rf open3d/resources open3d/open3d_tf_ops.so open3d/open3d_torch_ops.so \
   open3d/_ml3d open3d_cpu-*.data && tar cf - open3d open3d_cpu-*.dist-info | xz -6 -T0 > o3d.tar.xz)
mv "$tmp/o3d.tar.xz" .o3d/ && rm -rf "$tmp"
(cd .gl && apt-get download libgl1 libglx0 libglvnd0 libopengl0 libegl1)
mkdir -p .whl6 .whl7
python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -q -d .whl6 dash addict configargparse pyquaternion
rm -f .whl6/numpy-* .whl6/setuptools-* .whl6/pydantic-* .whl6/pydantic_core-*  # the device's numpy; .whl has pydantic
(cd .whl7 && apt-get download libusb-1.0-0)
git archive "$BASE_COMMIT" stream3r benchmarks/stream_bench.py benchmarks/_provenance.py | tar x -C .base
echo "$BASE_COMMIT" > .base/COMMIT
du -sh .whl .o3d .whl2 .whl3 .gl .base
