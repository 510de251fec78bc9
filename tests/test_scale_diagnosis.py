"""``benchmarks/scale_diagnosis.py``: lever arm, rotation slope and clock shift on made-up truth.

Truth: a camera turning in the hand (yaw up to +-40 deg, some pitch and roll) about a pivot 10 cm
behind it, as in TUM fr1_rpy; the "tracker" reports centres a known offset ``d`` (camera frame)
away from the true ones, in another world frame. The tool must find ``d`` and, once ``d`` is
removed, a Sim(3) scale of 1 and an ATE at the noise level, while the raw Sim(3) fit shrinks the
estimate. A tracker that turns 0.9 of the angle must read 0.9; a clock 30 ms late must show its
minimum at +30 ms.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from slam3r_app.trajectory import write_tum

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import scale_diagnosis  # noqa: E402


def _hand_held(t: np.ndarray) -> np.ndarray:
    """``[N, 4, 4]`` camera-to-world poses of a camera turning about a pivot 10 cm behind it."""
    angles = np.stack([8 * np.sin(2.1 * t), 40 * np.sin(1.3 * t), 6 * np.sin(3.0 * t + 1)], 1)
    R = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    P = np.stack([np.eye(4)] * len(t))
    P[:, :3, :3] = R
    P[:, :3, 3] = np.array([0.5, 1.2, 1.5]) + R @ np.array([0.0, 0.0, 0.10]) + 0.02 * np.sin(0.7 * t)[:, None]
    return P


def _to_other_world(P: np.ndarray, seed: int = 0) -> np.ndarray:
    W = np.eye(4)
    W[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    W[:3, 3] = [3.0, -1.0, 0.5]
    return W @ P


def test_a_lever_arm_is_found_and_explains_the_shrinking_scale():
    rng = np.random.default_rng(1)
    t = np.arange(150) / 30.0
    truth = _hand_held(t)
    d = np.array([0.01, -0.005, 0.04])
    est = truth.copy()
    est[:, :3, 3] += truth[:, :3, :3] @ d + rng.normal(0, 0.001, (len(t), 3))
    est = _to_other_world(est)
    r = scale_diagnosis.diagnose(t, est, t, truth)
    assert r.poses == len(t)
    assert np.linalg.norm(np.array(r.lever_arm) - d) < 0.002
    assert r.spread_est > r.spread_gt
    assert r.sim3_scale < 0.95  # the raw Sim(3) fit shrinks a path whose translation follows the rotation
    assert abs(r.sim3_scale_without_lever_arm - 1.0) < 0.02
    assert r.ate_se3_without_lever_arm < 0.0025 < r.ate_se3
    assert abs(r.rotation_slope - 1.0) < 1e-6


def test_an_under_rotating_tracker_reads_its_fraction():
    t = np.arange(150) / 30.0
    truth = _hand_held(t)
    est = truth.copy()
    rel = Rotation.from_matrix(np.einsum("ji,njk->nik", truth[0, :3, :3], truth[:, :3, :3])).as_rotvec()
    est[:, :3, :3] = truth[0, :3, :3] @ Rotation.from_rotvec(0.9 * rel).as_matrix()
    r = scale_diagnosis.diagnose(t, est, t, truth)
    assert abs(r.rotation_slope - 0.9) < 1e-6


def test_a_late_clock_shows_at_its_shift_and_bad_files_are_named(tmp_path):
    t_gt = np.arange(600) / 100.0  # motion capture at 100 Hz
    t = np.arange(3, 170) / 30.0
    est = _to_other_world(_hand_held(t + 0.03))  # each pose is 30 ms later than its stamp says
    write_tum(tmp_path / "est.txt", t, est)
    write_tum(tmp_path / "gt.txt", t_gt, _hand_held(t_gt))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale_diagnosis.py"), "--json",
                          str(tmp_path / "est.txt"), str(tmp_path / "gt.txt")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    import json

    r = json.loads(out.stdout)
    best = int(np.argmin(r["ate_se3_by_shift"]))
    assert r["clock_shifts_s"][best] == 0.03
    assert r["ate_se3_by_shift"][best] < 0.001 < r["ate_se3"]

    (tmp_path / "bad.txt").write_text("1.0 2.0 three\n")
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale_diagnosis.py"),
                          str(tmp_path / "bad.txt"), str(tmp_path / "gt.txt")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert "bad.txt" in bad.stderr and "Traceback" not in bad.stderr
