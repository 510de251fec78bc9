"""``benchmarks/gt_frame_check.py``: finds the body a ground truth follows, on a made-up rig.

Truth: a random smooth camera path and a known body-to-camera transform ``X``; the "dataset"
writes the body's poses ``C @ X^-1``. The tool run as a user runs it must say that the identity
does not fit, that ``X`` (given as a candidate) fits to the noise, and fit a rotation within a
degree of ``X``'s.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from slam3r_app.trajectory import write_tum

REPO = Path(__file__).resolve().parents[1]


def test_the_check_names_the_body_the_ground_truth_follows(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    stamps = 1000.0 + np.arange(n) / 30.0
    angles = np.cumsum(rng.normal(0, 1.5, (n, 3)), axis=0)  # degrees: a hand-held wander
    cams = np.stack([np.eye(4)] * n)
    cams[:, :3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    cams[:, :3, 3] = np.cumsum(rng.normal(0, 0.01, (n, 3)), axis=0)
    X = np.eye(4)
    X[:3, :3] = Rotation.from_euler("zyx", [170, 20, -35], degrees=True).as_matrix()
    X[:3, 3] = [0.01, -0.01, 0.012]
    body = cams @ np.linalg.inv(X)
    noisy = cams.copy()  # the "tracker": the camera's path with a little rotation noise
    noisy[:, :3, :3] = noisy[:, :3, :3] @ Rotation.from_rotvec(rng.normal(0, 0.002, (n, 3))).as_matrix()
    write_tum(tmp_path / "est.txt", stamps, noisy)
    write_tum(tmp_path / "gt.txt", stamps, body)
    np.save(tmp_path / "x.npy", X)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gt_frame_check.py"), str(tmp_path / "est.txt"),
                           str(tmp_path / "gt.txt"), "--candidate", f"rig={tmp_path / 'x.npy'}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): (float(m.group(2)), float(m.group(4)))
            for m in re.finditer(r"^(\w+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)$", proc.stdout, re.M)}
    assert rows["identity"][0] > 3.0  # the body's rotations are not the camera's
    assert rows["rig"][0] < 0.5  # the true rig transform fits to the tracker's noise
    assert rows["fitted"][0] < 0.5 and abs(rows["fitted"][1] - rows["rig"][1]) < 1.0


def test_a_bad_file_is_named_without_a_traceback(tmp_path):
    (tmp_path / "est.txt").write_text("1.0 0 0 0 0 0 0 1\n2.0 0 0 oops 0 0 0 1\n")
    (tmp_path / "gt.txt").write_text("1.0 0 0 0 0 0 0 1\n")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gt_frame_check.py"), str(tmp_path / "est.txt"),
                           str(tmp_path / "gt.txt")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "est.txt" in proc.stderr and "2" in proc.stderr  # the file and its bad line
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gt_frame_check.py"), str(tmp_path / "gt.txt"),
                           str(tmp_path / "gt.txt"), "--candidate", f"x={tmp_path / 'missing.npy'}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing.npy" in proc.stderr
