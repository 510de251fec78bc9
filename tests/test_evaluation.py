"""Evaluation: known answers, agreement with evo's own command line, clear errors for bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slam3r_app.cli import main as cli_main
from slam3r_app.errors import EvaluationError, SourceError
from slam3r_app.frame_loop import run
from slam3r_app.trajectory import write_tum
from slam3r_plugins.evaluation import evaluate_files, evaluate_trajectories
from tests.test_fusion_scene import ScenePlugin, get_scene, make_pipeline

pytest.importorskip("evo", reason="evaluation needs the [eval] extra")


def helix(n=300, seed=0, rot_noise=0.0):
    """A non-degenerate ground-truth path: helix with turning orientation."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 4 * np.pi, n)
    P = np.tile(np.eye(4), (n, 1, 1))
    P[:, 0, 3], P[:, 1, 3], P[:, 2, 3] = 2 * np.cos(t), 2 * np.sin(t), 0.3 * t
    R = Rotation.from_euler("zyx", np.stack([t, 0.3 * np.sin(t), 0.1 * np.cos(3 * t)], 1))
    if rot_noise:
        R = R * Rotation.from_rotvec(rng.normal(0, rot_noise, (n, 3)))
    P[:, :3, :3] = R.as_matrix()
    return 1000.0 + t / 10, P


def similarity(P, s, R, t):
    out = P.copy()
    out[:, :3, :3] = R @ P[:, :3, :3]
    out[:, :3, 3] = s * (P[:, :3, 3] @ R.T) + t
    return out


# ----------------------------------------------------------------------------- known answers
def test_similarity_transformed_trajectory_has_zero_error():
    ts, gt = helix()
    R = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    est = similarity(gt, 0.37, R, np.array([5.0, -2.0, 1.0]))
    ev = evaluate_trajectories(ts, gt, ts, est)
    m = ev.metrics
    assert m["ate"] < 1e-9 and m["rpe_trans"] < 1e-9 and m["rpe_rot"] < 1e-5
    assert m["scale"] == pytest.approx(1 / 0.37) and m["alignment"] == "sim3" and m["num_poses"] == len(ts)


def test_gaussian_noise_of_known_size_gives_expected_ate():
    """Isotropic noise sigma per axis -> ATE ~ sigma * sqrt(3), less the 7 DOF the alignment absorbs."""
    n, sigma = 3000, 0.02
    ts, gt = helix(n)
    rng = np.random.default_rng(7)
    est = gt.copy()
    est[:, :3, 3] += rng.normal(0, sigma, (n, 3))
    m = evaluate_trajectories(ts, gt, ts, est).metrics
    expected = sigma * np.sqrt((3 * n - 7) / n)
    assert m["ate"] == pytest.approx(expected, rel=0.03)
    # consecutive differences of independent noise: sigma * sqrt(2) per axis
    assert m["rpe_trans"] == pytest.approx(sigma * np.sqrt(6), rel=0.04)


def test_constructed_offsets_give_exact_ate_and_rpe():
    """Regular 2M-gon of radius r in the xy plane, identity rotations, offsets +-a along z alternately.

    The offsets are orthogonal to every translation and rotation of the fit; the Sim(3)
    fit only shrinks: c = r^2 / (r^2 + a^2). Then ATE = a r / sqrt(r^2 + a^2) exactly, and
    RPE trans = sqrt((1 - c)^2 |dx|^2 + (2 a c)^2) with |dx| = 2 r sin(pi / 2M), RPE rot = 0.
    """
    M, r, a = 50, 1.5, 0.2
    ang = np.pi * np.arange(2 * M) / M
    gt = np.tile(np.eye(4), (2 * M, 1, 1))
    gt[:, 0, 3], gt[:, 1, 3] = r * np.cos(ang), r * np.sin(ang)
    est = gt.copy()
    est[:, 2, 3] = a * (-1.0) ** np.arange(2 * M)
    ts = np.arange(2 * M) * 0.1
    m = evaluate_trajectories(ts, gt, ts, est).metrics
    c = r**2 / (r**2 + a**2)
    dx = 2 * r * np.sin(np.pi / (2 * M))
    assert m["ate"] == pytest.approx(a * r / np.sqrt(r**2 + a**2), rel=1e-9)
    assert m["scale"] == pytest.approx(c, rel=1e-9)
    assert m["rpe_trans"] == pytest.approx(np.sqrt((1 - c) ** 2 * dx**2 + (2 * a * c) ** 2), rel=1e-9)
    assert m["rpe_rot"] == pytest.approx(0.0, abs=1e-6)


def test_pairs_by_timestamp_like_evo():
    ts, gt = helix(200)
    est = gt[20:150].copy()
    ev = evaluate_trajectories(ts, gt, ts[20:150] + 0.004, est, max_diff=0.01)
    assert ev.metrics["num_poses"] == 130 and ev.metrics["ate"] < 1e-9
    with pytest.raises(EvaluationError, match="no common timestamps"):
        evaluate_trajectories(ts, gt, ts[20:150] + 0.004, est, max_diff=0.001)


# ----------------------------------------------------------------------------- evo's command line
def _evo_cli(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found:
        return [found]
    pytest.skip(f"{name} not found next to {sys.executable}")


def _rmse(cmd: list[str], env: dict) -> float:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    m = re.search(r"^\s*rmse\s+([-+0-9.eE]+)", out.stdout, re.M)
    assert m, out.stdout
    return float(m.group(1))


def test_eval_command_equals_evo_cli(tmp_path, capsys):
    """`run_slam.py eval` vs `evo_ape tum GT EST -as` / `evo_rpe ... --delta 1 --delta_unit f --all_pairs`."""
    ts, gt = helix(240, rot_noise=0.0)
    rng = np.random.default_rng(11)
    R = Rotation.from_euler("xyz", [10, 20, -35], degrees=True).as_matrix()
    est = similarity(gt, 0.6, R, np.array([1.0, 2.0, -0.5]))
    est[:, :3, 3] += rng.normal(0, 0.03, (len(ts), 3))
    est[:, :3, :3] = est[:, :3, :3] @ Rotation.from_rotvec(rng.normal(0, 0.02, (len(ts), 3))).as_matrix()
    gt_file, est_file = tmp_path / "gt.txt", tmp_path / "est.txt"
    write_tum(gt_file, ts, gt)
    # a subset, with a clock offset under evo's 0.01 s tolerance
    write_tum(est_file, ts[10:230] + 0.003, est[10:230])

    js = tmp_path / "m.json"
    plot = tmp_path / "p.png"
    assert cli_main(["eval", "--gt", str(gt_file), "--est", str(est_file), "--json", str(js), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "ATE:" in printed and "RPE trans:" in printed and "RPE rot:" in printed
    ours = json.loads(js.read_text())
    assert plot.stat().st_size > 1000

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg", "HOME": str(home), "EVO_CONFIG_DIR": str(home / ".evo")}
    ape = _rmse(_evo_cli("evo_ape") + ["tum", str(gt_file), str(est_file), "-as"], env)
    rpe_args = ["tum", str(gt_file), str(est_file), "-as", "--delta", "1", "--delta_unit", "f", "--all_pairs"]
    rpe_t = _rmse(_evo_cli("evo_rpe") + rpe_args, env)
    rpe_r = _rmse(_evo_cli("evo_rpe") + rpe_args + ["-r", "angle_deg"], env)
    # evo prints 6 decimals
    assert ours["ate"] == pytest.approx(ape, abs=1e-6)
    assert ours["rpe_trans"] == pytest.approx(rpe_t, abs=1e-6)
    assert ours["rpe_rot"] == pytest.approx(rpe_r, abs=1e-6)
    assert ours["num_poses"] == 220 and ours["ate"] > 0.01  # a non-trivial case


def _write_cam(path: Path, K: np.ndarray, c2w: np.ndarray) -> None:
    """Sintel .cam: float32 tag 202021.25, 9 float64 K, 12 float64 world-to-camera [R|t]."""
    w2c = np.linalg.inv(c2w)
    with open(path, "wb") as f:
        f.write(np.float32(202021.25).tobytes())
        f.write(K.astype("<f8").tobytes())
        f.write(w2c[:3, :4].astype("<f8").tobytes())


def test_eval_sintel_camdata_folder_as_ground_truth(tmp_path, capsys):
    ts, gt = helix(40)
    cam = tmp_path / "camdata_left" / "alley_2"
    cam.mkdir(parents=True)
    K = np.array([[500.0, 0, 511.5], [0, 500.0, 217.5], [0, 0, 1]])
    for i, P in enumerate(gt):
        _write_cam(cam / f"frame_{i + 1:04d}.cam", K, P)
    est_file = tmp_path / "est.txt"
    R = Rotation.from_euler("z", 70, degrees=True).as_matrix()
    write_tum(est_file, np.arange(40, dtype=float), similarity(gt, 3.0, R, np.zeros(3)))
    ev = evaluate_files(str(cam), str(est_file))  # matched by index
    assert ev.info["match"] == "index" and ev.metrics["num_poses"] == 40 and ev.metrics["ate"] < 1e-6
    # the one .cam reader (the dataset package's) reads what the test wrote
    from slam3r_datasets import read_cam, read_cam_trajectory

    K2, _ = read_cam(cam / "frame_0001.cam")
    np.testing.assert_allclose(K2, K)
    np.testing.assert_allclose(read_cam_trajectory(cam)[1], gt, atol=1e-9)
    # a Sintel folder of another length: a clear message
    write_tum(est_file, np.arange(30, dtype=float), gt[:30])
    assert cli_main(["eval", "--gt", str(cam), "--est", str(est_file)]) == 1
    err = capsys.readouterr().err
    assert "40 poses" in err and "30" in err and "same number" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_messages(tmp_path):
    ts, gt = helix(50)
    with pytest.raises(EvaluationError, match="no common timestamps"):
        evaluate_trajectories(ts, gt, ts + 100.0, gt)
    with pytest.raises(EvaluationError, match="at least 3"):
        evaluate_trajectories(ts[:2], gt[:2], ts[:2], gt[:2])
    with pytest.raises(EvaluationError, match="only 2 poses .* at least 3"):
        evaluate_trajectories(ts, gt, np.r_[ts[:2], ts[2:] + 50], gt)
    bad = gt.copy()
    bad[7, 1, 3] = np.nan
    with pytest.raises(EvaluationError, match="pose 7 contains NaN"):
        evaluate_trajectories(ts, gt, ts, bad)
    skew = gt.copy()
    skew[3, :3, :3] *= 1.5
    with pytest.raises(EvaluationError, match="pose 3 has a rotation that is not orthonormal"):
        evaluate_trajectories(ts, skew, ts, gt)
    with pytest.raises(EvaluationError, match="needs the same number of poses"):
        evaluate_trajectories(ts, gt, ts[:40], gt[:40], match="index")
    line = gt.copy()
    line[:, :3, 3] = np.outer(np.arange(50), [1.0, 0, 0])
    with pytest.raises(EvaluationError, match="collinear"):
        evaluate_trajectories(ts, line, ts, line)
    still = gt.copy()
    still[:, :3, 3] = 0
    with pytest.raises(EvaluationError, match="all 50 positions are the same"):
        evaluate_trajectories(ts, gt, ts, still)


def test_malformed_files_name_file_and_line(tmp_path, capsys):
    ts, gt = helix(10)
    good = tmp_path / "gt.txt"
    write_tum(good, ts, gt)
    broken = tmp_path / "est.txt"
    broken.write_text("# header\n1000.0 0 0 0 0 0 0 1\n1000.1 0 0 zero 0 0 0 1\n")
    with pytest.raises(SourceError, match=r"est.txt:3: not a number"):
        evaluate_files(str(good), str(broken))
    short = tmp_path / "short.txt"
    short.write_text("1000.0 0 0 0 0 0 1\n")
    assert cli_main(["eval", "--gt", str(good), "--est", str(short)]) == 1
    err = capsys.readouterr().err
    assert "short.txt:1: expected 8 values" in err and "Traceback" not in err
    assert cli_main(["eval", "--gt", str(tmp_path / "nope.txt"), "--est", str(good)]) == 1
    assert "not found" in capsys.readouterr().err


def test_missing_evo_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_evo(name, *a, **k):
        if name == "evo" or name.startswith("evo."):
            raise ImportError("No module named 'evo'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_evo)
    ts, gt = helix(10)
    with pytest.raises(EvaluationError, match=r"pip install 'slam3r\[eval\]'"):
        evaluate_trajectories(ts, gt, ts, gt)


# ----------------------------------------------------------------------------- in a run
def test_run_with_ground_truth_writes_metrics_and_plot(tmp_path):
    sc = get_scene()
    # an up-to-scale frontend with exact poses: Sim(3) alignment makes the ATE vanish
    pipe = make_pipeline(tmp_path / "run", {"scene": ScenePlugin(sc, scale=3.0)}, backends=["evaluation"])
    result = run(pipe.config, pipeline=pipe)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["ate"] < 1e-6 and metrics["rpe_trans"] < 1e-6 and metrics["rpe_rot"] < 1e-4
    assert metrics["num_poses"] == sc.frames and metrics["alignment"] == "sim3"
    assert metrics["scale"] == pytest.approx(3.0, rel=1e-6)
    assert (tmp_path / "run" / "trajectory.png").stat().st_size > 1000
    assert result.metrics["ate"] == metrics["ate"]


def test_run_with_noisy_poses_matches_the_file_evaluation(tmp_path):
    """The run's metrics equal `eval` on the run's own trajectory file and the GT written as TUM."""
    sc = get_scene()
    out = tmp_path / "run"
    pipe = make_pipeline(out, {"scene": ScenePlugin(sc, pose_noise=0.01, seed=5)},
                         backends=["trajectory", "evaluation"])
    result = run(pipe.config, pipeline=pipe)
    gt_file = tmp_path / "gt.txt"
    write_tum(gt_file, [sc.timestamp(i) for i in range(sc.frames)], np.stack([sc.pose(i) for i in range(sc.frames)]))
    ev = evaluate_files(str(gt_file), str(out / "trajectory.txt"))
    for k in ("ate", "rpe_trans", "rpe_rot"):
        assert result.metrics[k] == pytest.approx(ev.metrics[k], rel=1e-6, abs=1e-9)
    assert result.metrics["ate"] > 1e-3


def test_run_with_gt_file_option_and_broken_gt_is_reported(tmp_path):
    sc = get_scene()
    gt_file = tmp_path / "gt.txt"
    write_tum(gt_file, [sc.timestamp(i) for i in range(sc.frames)], np.stack([sc.pose(i) for i in range(sc.frames)]))
    pipe = make_pipeline(tmp_path / "a", {"scene": ScenePlugin(sc, scale=2.0)},
                         {"evaluation": {"gt": str(gt_file), "plot": False}}, backends=["evaluation"])
    result = run(pipe.config, pipeline=pipe)
    assert result.metrics["ate"] < 1e-6 and not (tmp_path / "a" / "trajectory.png").exists()
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    pipe = make_pipeline(tmp_path / "b", {"scene": ScenePlugin(sc)},
                         {"evaluation": {"gt": str(tmp_path / "bad.txt")}}, backends=["evaluation"])
    result = run(pipe.config, pipeline=pipe)
    assert "bad.txt:1: expected 8 values" in result.metrics["evaluation_error"]
    assert "ate" not in result.metrics


def test_run_against_a_sintel_folder_with_first_and_stride(tmp_path):
    """evaluation.gt = camdata_left folder: stream frame k is GT row first + k * stride."""
    sc = get_scene()
    cam = tmp_path / "camdata_left" / "scene"
    cam.mkdir(parents=True)
    for i in range(sc.frames):
        _write_cam(cam / f"frame_{i + 1:04d}.cam", sc.K, sc.pose(i))
    pipe = make_pipeline(tmp_path / "run", {"scene": ScenePlugin(sc, scale=0.5)},
                         {"evaluation": {"gt": str(cam), "plot": False}},
                         overrides=["source.first=2", "source.stride=2"], backends=["evaluation"])
    result = run(pipe.config, pipeline=pipe)
    assert result.metrics["num_poses"] == 5 and result.metrics["ate"] < 1e-6
    # a wrong mapping (GT shorter than the frames used) is reported, not a traceback
    pipe = make_pipeline(tmp_path / "run2", {"scene": ScenePlugin(sc)}, {"evaluation": {"gt": str(cam)}},
                         overrides=["source.first=2", "source.stride=2"], backends=["evaluation"])
    for f in sorted(cam.glob("*.cam"))[8:]:
        f.unlink()
    result = run(pipe.config, pipeline=pipe)
    assert "has 8 poses but the run used frame 10" in result.metrics["evaluation_error"]


def test_auto_pairs_by_index_when_timestamps_do_not_pair_and_lengths_match(tmp_path, capsys):
    """Upstream writes predictions with frame numbers as timestamps; equal lengths are paired by index."""
    ts, gt = helix(60)
    gt_file, est_file = tmp_path / "gt.txt", tmp_path / "est.txt"
    write_tum(gt_file, ts, gt)
    write_tum(est_file, np.arange(60, dtype=float), similarity(gt, 2.0, np.eye(3), np.ones(3)))
    assert cli_main(["eval", "--gt", str(gt_file), "--est", str(est_file)]) == 0
    out = capsys.readouterr().out
    assert "paired by index" in out and "note: timestamps did not pair" in out
    assert cli_main(["eval", "--gt", str(gt_file), "--est", str(est_file), "--match", "timestamp"]) == 1
    assert "no common timestamps" in capsys.readouterr().err
    write_tum(est_file, np.arange(50, dtype=float), gt[:50])  # other length: no guessing
    with pytest.raises(EvaluationError, match="no common timestamps"):
        evaluate_files(str(gt_file), str(est_file))


# ----------------------------------------------------------------------------- ATE SE(3) (no scale)
def _rms_about_centroid(P: np.ndarray) -> float:
    x = P[:, :3, 3]
    return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))


def _evaluate_twice_too_large(tmp_path, capsys):
    """The helix GT and an estimate scaled by 2 about it, rotated and moved, through ``run_slam.py eval``:
    ``(gt poses, gt file, estimate file, metrics.json, printed text, env for evo's CLI)``."""
    ts, gt = helix(200)
    R = Rotation.from_euler("xyz", [15, -40, 70], degrees=True).as_matrix()
    est = similarity(gt, 2.0, R, np.array([0.5, -1.0, 3.0]))
    gt_file, est_file = tmp_path / "gt.txt", tmp_path / "est.txt"
    write_tum(gt_file, ts, gt)
    write_tum(est_file, ts, est)
    js = tmp_path / "m.json"
    assert cli_main(["eval", "--gt", str(gt_file), "--est", str(est_file), "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg", "HOME": str(home), "EVO_CONFIG_DIR": str(home / ".evo")}
    return gt, gt_file, est_file, json.loads(js.read_text()), printed, env


def test_ate_se3_sees_a_wrong_scale_that_ate_aligns_away(tmp_path, capsys):
    """A trajectory scaled by 2 about the GT, rotated and moved: ATE (Sim(3)) is 0, ATE SE(3) is not.

    Known answer: for est = s * gt (+ a rigid motion) the best rigid fit is the identity on the
    centred positions, leaving |s - 1| x the GT's RMS distance to its centroid. And it equals
    evo's own command line without scale correction, `evo_ape tum GT EST -a`.
    """
    gt, gt_file, est_file, m, printed, env = _evaluate_twice_too_large(tmp_path, capsys)
    assert m["ate"] < 1e-6 and m["scale"] == pytest.approx(0.5, rel=1e-6)
    expected = _rms_about_centroid(gt)  # |2 - 1| x RMS radius
    assert expected > 1.0
    assert m["ate_se3"] == pytest.approx(expected, rel=1e-4)
    assert re.search(r"ATE SE\(3\):\s+%.6f m" % m["ate_se3"], printed), printed
    evo_se3 = _rmse(_evo_cli("evo_ape") + ["tum", str(gt_file), str(est_file), "-a"], env)
    evo_sim3 = _rmse(_evo_cli("evo_ape") + ["tum", str(gt_file), str(est_file), "-as"], env)
    assert m["ate_se3"] == pytest.approx(evo_se3, abs=1e-6)  # evo prints 6 decimals
    assert m["ate"] == pytest.approx(evo_sim3, abs=1e-6)


def test_rpe_se3_sees_a_wrong_scale_that_rpe_aligns_away(tmp_path, capsys):
    """A trajectory scaled by 2 about the GT, rotated and moved: RPE (Sim(3)) is 0, RPE SE(3) is not.

    Known answer: each estimated step is twice the true one in the camera frame (``2 d``), so the
    relative error's translation is the true step ``d``: RPE SE(3) is the RMS of the true steps. And it
    equals evo's own command line without alignment or scale, ``evo_rpe tum GT EST --delta 1
    --delta_unit f --all_pairs``.
    """
    gt, gt_file, est_file, m, printed, env = _evaluate_twice_too_large(tmp_path, capsys)
    steps = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
    assert m["rpe_trans"] < 1e-6
    assert m["rpe_trans_se3"] == pytest.approx(float(np.sqrt((steps ** 2).mean())), rel=1e-6) and steps.min() > 0.01
    assert re.search(r"RPE trans SE\(3\):\s+%.6f m" % m["rpe_trans_se3"], printed), printed
    evo = _rmse(_evo_cli("evo_rpe") + ["tum", str(gt_file), str(est_file), "--delta", "1", "--delta_unit", "f",
                                       "--all_pairs"], env)
    assert m["rpe_trans_se3"] == pytest.approx(evo, abs=1e-6)  # evo prints 6 decimals


def test_existing_metric_keys_are_unchanged_and_the_se3_figures_are_added():
    ts, gt = helix(120)
    rng = np.random.default_rng(3)
    est = gt.copy()
    est[:, :3, 3] += rng.normal(0, 0.01, (len(ts), 3))
    m = evaluate_trajectories(ts, gt, ts, est).metrics
    assert set(m) == {"ate", "rpe_trans", "rpe_rot", "num_poses", "alignment", "scale", "ate_mean", "ate_median",
                      "ate_max", "ate_se3", "rpe_trans_se3"}
    assert m["alignment"] == "sim3"
    # a correctly scaled estimate: the rigid fit is nearly as good as the similarity (it has one DOF less)
    assert m["ate"] <= m["ate_se3"] <= m["ate"] * 1.01
    assert m["rpe_trans_se3"] == pytest.approx(m["rpe_trans"], rel=0.01)


def test_run_reports_ate_se3_in_metrics_and_the_printed_summary(tmp_path):
    """A metric frontend off by 2x in scale: the run's ate is 0, ate_se3 the known answer."""
    from slam3r_app.frame_loop import format_summary

    sc = get_scene()
    pipe = make_pipeline(tmp_path / "run", {"scene": ScenePlugin(sc, scale=0.5)},
                         {"evaluation": {"plot": False}}, backends=["evaluation"])
    result = run(pipe.config, pipeline=pipe)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    gt = np.stack([sc.pose(i) for i in range(sc.frames)])
    assert metrics["ate"] < 1e-6
    assert metrics["ate_se3"] == pytest.approx(_rms_about_centroid(gt), rel=1e-4) and metrics["ate_se3"] > 0.05
    text = format_summary(result, str(tmp_path / "run"))
    assert f"ate_se3: {metrics['ate_se3']:.4f} m" in text and f"ate: {metrics['ate']:.4f} m" in text
