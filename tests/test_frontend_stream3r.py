"""The STream3R frontend end to end on CPU with a tiny random-weight model.

Checks the frontend's geometry against independent math (scipy quaternions, the
preprocessing's analytic scale), the KV-cache control by keyframes, the checkpoint
error message, and that a whole run writes every output file.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slam3r_app.config import load_config
from slam3r_app.errors import FrontendError
from slam3r_app.frame_loop import run
from slam3r_app.pipeline import Pipeline
from slam3r_app.types import Frame

TINY_ARCH = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_embed": "conv", "camera_trunk_depth": 1,
             "camera_num_heads": 2, "dpt_features": 8, "dpt_out_channels": [8, 8, 16, 16],
             "dpt_intermediate_layers": [0, 1, 1, 1]}


def tiny_model_cfg(**kw):
    data = {"random_weights": True, "device": "cpu", "image_size": 70, "arch": TINY_ARCH, **kw}
    return load_config(data={"model": data}).run.model


def test_estimate_geometry_matches_independent_math():
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend

    fe = Stream3rFrontend(tiny_model_cfg())
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    captured = {}
    real = fe.session.forward_stream

    def spy(x):
        captured["x"] = x.clone()
        captured["pred"] = out = real(x)
        return out

    fe.session.forward_stream = spy
    est = fe.track(Frame(index=0, timestamp=1.5, rgb=rgb))
    x = captured["x"]
    # preprocessing: width 70, height round(60*70/80/14)*14 = 56, values in [0, 1]
    assert tuple(x.shape) == (1, 3, 56, 70) and float(x.min()) >= 0 and float(x.max()) <= 1
    pe = captured["pred"]["pose_enc"][0, -1].double().numpy()
    # pose: camera-to-world = inverse of the predicted world-to-camera [R|t] (quaternion x y z w)
    R = Rotation.from_quat(pe[3:7]).as_matrix()
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, pe[:3]
    np.testing.assert_allclose(est.pose, np.linalg.inv(w2c), atol=1e-6)
    # intrinsics: fx_model = (W/2)/tan(fov_w/2) at 70x56, mapped back by the resize factors 80/70, 60/56
    fy_m, fx_m = (56 / 2) / np.tan(pe[7] / 2), (70 / 2) / np.tan(pe[8] / 2)
    np.testing.assert_allclose(est.intrinsics[0, 0], fx_m * 80 / 70, rtol=1e-5)
    np.testing.assert_allclose(est.intrinsics[1, 1], fy_m * 60 / 56, rtol=1e-5)
    np.testing.assert_allclose(est.intrinsics[:2, 2], [40 - 0.5 * 80 / 70 + 0.5, 30 - 0.5 * 60 / 56 + 0.5], atol=0.6)
    assert est.depth.shape == (60, 80) and est.confidence.shape == (60, 80) and est.points.shape == (60, 80, 3)
    assert est.depth.dtype == np.float32 and not est.depth_is_metric
    assert (est.depth > 0).all() and (est.confidence >= 1).all()  # exp / 1+exp activations


def test_forget_last_drops_the_frame_from_the_kv_cache():
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend

    fe = Stream3rFrontend(tiny_model_cfg())
    rgb = np.full((42, 56, 3), 128, np.uint8)
    for i in range(3):
        fe.track(Frame(index=i, timestamp=float(i), rgb=rgb))
    assert fe.stats()["cache_frames"] == 3
    fe.forget_last()
    assert fe.stats()["cache_frames"] == 2
    fe.reset()
    assert fe.stats()["cache_frames"] == 0


def test_missing_checkpoint_says_what_to_do(tmp_path, monkeypatch):
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend

    cfg = load_config(data={"model": {"checkpoint": str(tmp_path / "nope.safetensors"), "device": "cpu"}}).run.model
    with pytest.raises(FrontendError) as e:
        Stream3rFrontend(cfg)
    msg = str(e.value)
    assert "nope.safetensors" in msg and "--set model.checkpoint=" in msg and "frontend=rgbd" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(data={"model": {"checkpoint": "yslan/STream3R", "device": "cpu"}}).run.model
    with pytest.raises(FrontendError, match="offline"):
        Stream3rFrontend(cfg)


def test_whole_run_with_tiny_model_writes_every_output(tmp_path):
    cfg = load_config("base", overrides=[
        "source.type=synthetic", "source.synthetic_frames=6", "source.width=96", "source.height=72",
        "frontend=stream3r", "progress=false", "keyframes.mode=all",
        f"model={json.dumps(tiny_model_cfg().model_dump(mode='json'))}",
    ])
    pipe = Pipeline(cfg, output=str(tmp_path / "run"))
    result = run(cfg, pipeline=pipe)
    assert result.ended_by == "end" and result.frames_seen == 6, result.stop_reason
    out = tmp_path / "run"
    for name in ("config.yaml", "run.log", "summary.json", "metrics.json", "trajectory.txt",
                 "trajectory_keyframes.txt", "keyframes.txt", "mesh.ply", "points.ply", "pointcloud.ply",
                 "trajectory.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"ate", "rpe_trans", "rpe_rot", "metric_scale"} <= set(metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frontend"] == "stream3r" and summary["frames"] == 6


def test_world_points_are_depth_unprojected_with_the_predicted_camera():
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend

    fe = Stream3rFrontend(tiny_model_cfg())
    assert fe.session.heads == ("camera", "depth")  # the point-map head is skipped
    rng = np.random.default_rng(1)
    H, W = 6, 8
    quat = Rotation.from_euler("xyz", [0.1, -0.2, 0.3]).as_quat()  # xyzw
    pose_enc = torch.tensor([[[0.5, -0.1, 0.2, *quat, 0.9, 1.1]]], dtype=torch.float32)
    depth = torch.from_numpy(rng.uniform(1, 3, (1, 1, H, W, 1)).astype(np.float32))
    conf = torch.ones(1, 1, H, W)
    pred = fe._with_world_points({"pose_enc": pose_enc, "depth": depth, "depth_conf": conf})
    pts = pred["world_points"][0, 0].double().numpy()
    fy, fx = (H / 2) / np.tan(0.9 / 2), (W / 2) / np.tan(1.1 / 2)
    v, u = np.mgrid[0:H, 0:W]
    z = depth[0, 0, ..., 0].double().numpy()
    cam = np.stack([(u - W / 2) * z / fx, (v - H / 2) * z / fy, z], -1)
    R, t = Rotation.from_quat(quat).as_matrix(), np.array([0.5, -0.1, 0.2])
    np.testing.assert_allclose(pts, (cam - t) @ R, rtol=1e-5, atol=1e-5)  # X_w = R^T (X_c - t)
    assert pred["world_points_conf"] is conf


def test_float16_outputs_that_are_not_finite_stop_the_run():
    """float16 ends at 65504: a non-finite pose or depth never reaches the backends."""
    import numpy as np

    from slam3r_app.errors import FrontendError
    from slam3r_app.types import Frame
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend

    frame = Frame(index=3, timestamp=0.1, rgb=np.zeros((4, 4, 3), np.uint8), name="f3")
    ok_pose, depth = np.zeros(9, np.float32), np.ones((4, 4), np.float32)
    Stream3rFrontend._check_finite(frame, ok_pose, depth)  # finite: nothing happens
    for pose, d in ((np.full(9, np.nan, np.float32), depth), (ok_pose, np.full((4, 4), np.inf, np.float32))):
        with pytest.raises(FrontendError, match="model.dtype=bfloat16"):
            Stream3rFrontend._check_finite(frame, pose, d)
