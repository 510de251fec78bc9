"""The README's first command, end to end: ``python run_slam.py --config demo.yaml``.

Offline, no weights: the classical RGB-D frontend on the shipped TUM fr1_rpy sample,
TSDF fusion, trajectory export and evaluation against the sample's motion-capture
ground truth. Run as a subprocess exactly as a user would (about 10-20 s on 2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.trajectory import associate, read_tum

REPO = Path(__file__).resolve().parents[1]


def _has_evo() -> bool:
    try:
        import evo  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "run_slam.py"), "--config", "demo.yaml", "--output", str(out),
                           "--set", "progress=false"],
                          cwd=str(out.parent), env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    return out, proc, seconds


def test_demo_config_is_offline_and_weightless():
    cfg = load_config("demo.yaml")
    assert cfg.run.frontend == "rgbd"
    assert cfg.run.source.type == "tum" and cfg.run.source.path == "sample:tum_fr1_rpy"


def test_demo_runs_and_writes_every_output(demo_run):
    out, proc, seconds = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"the demo took {seconds:.1f} s")  # timings: benchmarks/cpu_timings.py, not a test's margin
    for name in ("mesh.ply", "points.ply", "trajectory.txt", "trajectory_keyframes.txt", "keyframes.txt",
                 "summary.json", "config.yaml", "run.log"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 75 and not summary["stopped_early"]
    assert summary["frontend"] == "rgbd" and summary["frontend_stats"]["lost"] == 0
    ba = summary["info"]["bundle_adjustment"]
    # the adjustment ran, and matched pairs during the run, in the background (how many depends on how
    # busy the machine is: a worker that falls behind leaves pairs to the end)
    assert ba["applied"] is True and 0 < ba["pairs_matched_during_run"] <= ba["pairs"], ba
    stamps, poses = read_tum(out / "trajectory.txt")
    assert len(poses) == 75 and np.allclose(poses[0], np.eye(4), atol=1e-6)


def test_demo_trajectory_against_the_sample_ground_truth(demo_run):
    """Independent of the evaluation plugin: our own pairing and SE(3) alignment of the written files."""
    out, proc, _ = demo_run
    assert proc.returncode == 0
    stamps, est = read_tum(out / "trajectory.txt")
    gt_stamps, gt = read_tum(REPO / "datasets" / "samples" / "tum_fr1_rpy" / "groundtruth.txt")
    pairs = associate(stamps, gt_stamps, 0.01)
    assert len(pairs) == 75
    X = est[[i for i, _ in pairs], :3, 3]
    Y = gt[[j for _, j in pairs], :3, 3]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    U, D, Vt = np.linalg.svd(Yc.T @ Xc)
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    err = Yc - Xc @ (U @ S @ Vt).T
    # issue 19's bar for the demo: SE(3)-aligned ATE <= 2 cm (measured 1.35 cm with the end-of-run
    # bundle adjustment, 1.94 cm without) and a Sim(3) fit that needs no rescaling (Umeyama's scale
    # within 0.9-1.1; 0.985 with the adjustment, 0.71 without)
    assert np.sqrt((err ** 2).sum(1).mean()) <= 0.02
    scale = np.trace(np.diag(D) @ S) / (Xc ** 2).sum()
    assert 0.9 <= scale <= 1.1, scale


@pytest.mark.skipif(not _has_evo(), reason="evaluation needs evo (pip install 'slam3r[eval]')")
def test_demo_metrics_and_plot(demo_run):
    out, proc, _ = demo_run
    assert proc.returncode == 0
    assert (out / "trajectory.png").stat().st_size > 10_000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_poses"] == 75 and metrics["alignment"] == "sim3"
    assert 0 < metrics["ate"] <= 0.03 and metrics["rpe_trans"] > 0 and metrics["rpe_rot"] > 0
